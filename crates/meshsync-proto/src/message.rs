//! The control-stream messages and their encoding.
//!
//! A frame's payload is the postcard encoding of one [`Message`]: a varint
//! message type (the variant index, pinned by [`MessageType`]) followed by the
//! message's fields in declaration order. `docs/protocol.md` gives the layout
//! of every message.
//!
//! Unknown message types: a peer may send only the types of the version both
//! sides negotiated, so a type this side does not know is a protocol violation
//! ([`DecodeError::UnknownType`], answered with
//! [`CloseCode::UnknownMessage`]), not
//! something to skip. New message types come with a new protocol version.
//! The types of [`Hello`] (0) and [`Close`] (1), and Hello's leading fields,
//! are frozen across versions, so two peers can always negotiate or say why
//! they hang up; Hello alone is decoded leniently (trailing bytes ignored) so
//! a later version can append fields to it. Every other message must use its
//! frame exactly: trailing bytes are an error.
//!
//! This module must never panic on any input, and never allocate by an
//! unchecked count (entry lists are bounded before they are decoded).

use std::fmt;
use std::net::SocketAddr;

use meshsync_core::entry::FileEntry;
use meshsync_core::ids::{DeviceId, Hash, ShareId};
use meshsync_core::keys::{BatchSignature, KeyKind};
use meshsync_core::path::RelPath;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

use crate::error::CloseCode;
use crate::frame::{FrameError, HEADER_LEN, seal_frame};
use crate::limits::{MAX_BATCH_ENTRIES, MAX_HELD_SPANS, MAX_PEX_ADDRESSES, MAX_PEX_PEERS};
use crate::patch::ListOp;

/// The newest protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 5;

/// The first version with peer exchange ([`Peers`]). Version 1 is version 2
/// without it; a connection that negotiated version 1 never carries it.
pub const PEX_VERSION: u16 = 2;

/// The first version in which a device tells which chunks of a file it is
/// still downloading it already holds ([`ChunksHeld`]). Version 2 is version
/// 3 without it.
pub const HELD_VERSION: u16 = 3;

/// The first version in which a chunk stream may ask for a run of chunks
/// ([`ChunkRunRequest`](crate::chunk::ChunkRunRequest), stream kind 0x04).
/// Version 3 is version 4 without it; no message changed.
pub const RUN_VERSION: u16 = 4;

/// The first version in which a big file's entry may travel as a patch of
/// the chunk list sent for its path before ([`IndexPatch`]). Version 4 is
/// version 5 without it.
pub const PATCH_VERSION: u16 = 5;

/// The first version in which a chunk stream may ask for a chunk as a delta
/// against bytes the requester has
/// ([`DeltaRequest`](crate::delta::DeltaRequest), stream kind 0x05). Comes
/// with [`PATCH_VERSION`].
pub const DELTA_VERSION: u16 = 5;

/// The versions this crate supports: 1 to 5.
pub const SUPPORTED_VERSIONS: VersionRange = VersionRange {
    min: 1,
    max: PROTOCOL_VERSION,
};

/// A non-empty range of protocol versions, `min..=max`, with `min >= 1`.
/// On the wire: two varint `u16`s, `min` then `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "(u16, u16)", try_from = "(u16, u16)")]
pub struct VersionRange {
    min: u16,
    max: u16,
}

impl VersionRange {
    /// `min..=max`, or `None` if it is empty or includes the reserved
    /// version 0.
    pub const fn new(min: u16, max: u16) -> Option<Self> {
        if min == 0 || min > max {
            None
        } else {
            Some(VersionRange { min, max })
        }
    }

    /// The lowest version in the range.
    pub fn min(&self) -> u16 {
        self.min
    }

    /// The highest version in the range.
    pub fn max(&self) -> u16 {
        self.max
    }

    /// The highest version in both ranges, `None` if they do not overlap.
    pub fn negotiate(&self, other: &VersionRange) -> Option<u16> {
        let high = self.max.min(other.max);
        (high >= self.min.max(other.min)).then_some(high)
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.min, self.max)
    }
}

impl From<VersionRange> for (u16, u16) {
    fn from(range: VersionRange) -> Self {
        (range.min, range.max)
    }
}

impl TryFrom<(u16, u16)> for VersionRange {
    type Error = String;

    fn try_from((min, max): (u16, u16)) -> Result<Self, Self::Error> {
        VersionRange::new(min, max).ok_or_else(|| format!("invalid version range {min}..={max}"))
    }
}

/// The numbers of the message types on the wire (the postcard variant index
/// of [`Message`]). Never renumber: a test pins them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageType {
    /// [`Hello`]: 0.
    Hello = 0,
    /// [`Close`]: 1.
    Close = 1,
    /// [`Ping`]: 2.
    Ping = 2,
    /// [`Pong`]: 3.
    Pong = 3,
    /// [`OpenFolder`]: 4.
    OpenFolder = 4,
    /// [`FolderRefused`]: 5.
    FolderRefused = 5,
    /// [`IndexBatch`]: 6.
    IndexBatch = 6,
    /// [`DownloadProgress`]: 7.
    DownloadProgress = 7,
    /// [`Peers`]: 8 (version 2 and later).
    Peers = 8,
    /// [`ChunksHeld`]: 9 (version 3 and later).
    ChunksHeld = 9,
    /// [`IndexPatch`]: 10 (version 5 and later).
    IndexPatch = 10,
}

impl MessageType {
    const ALL: [MessageType; 11] = [
        MessageType::Hello,
        MessageType::Close,
        MessageType::Ping,
        MessageType::Pong,
        MessageType::OpenFolder,
        MessageType::FolderRefused,
        MessageType::IndexBatch,
        MessageType::DownloadProgress,
        MessageType::Peers,
        MessageType::ChunksHeld,
        MessageType::IndexPatch,
    ];

    /// The type with wire number `number`, if this version has one.
    pub fn from_number(number: u32) -> Option<Self> {
        usize::try_from(number)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
    }

    /// The wire number.
    pub fn number(self) -> u32 {
        self as u32
    }

    /// The first protocol version that has this type.
    pub fn since_version(self) -> u16 {
        match self {
            MessageType::Peers => PEX_VERSION,
            MessageType::ChunksHeld => HELD_VERSION,
            MessageType::IndexPatch => PATCH_VERSION,
            _ => 1,
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One control-stream message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// The first message each side sends: who it is and what it speaks.
    Hello(Hello),
    /// The sender is closing the connection.
    Close(Close),
    /// Asks for a [`Pong`] with the same nonce.
    Ping(Ping),
    /// Answers a [`Ping`].
    Pong(Pong),
    /// Offers a folder, with proof of holding its key; also the answer that
    /// accepts the peer's offer.
    OpenFolder(OpenFolder),
    /// Refuses the peer's offer of a folder.
    FolderRefused(FolderRefused),
    /// Entries of the sender's index for an open folder.
    IndexBatch(IndexBatch),
    /// How far the sender is with downloading one file (for the peer's UI).
    DownloadProgress(DownloadProgress),
    /// Where other peers of an open folder can be reached (peer exchange,
    /// version 2 and later).
    Peers(Peers),
    /// Chunks of a file the sender is downloading that it holds already
    /// (version 3 and later).
    ChunksHeld(ChunksHeld),
    /// An index batch in which entries of big files may carry their chunk
    /// list as a patch (version 5 and later).
    IndexPatch(IndexPatch),
}

/// The first message on the control stream, from both sides, sent without
/// waiting for the peer's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol versions the sender speaks.
    pub versions: VersionRange,
    /// The sender's software, `name/version` (at most
    /// [`MAX_CLIENT_LEN`](crate::limits::MAX_CLIENT_LEN) bytes, no control
    /// characters). For logs and the UI only: never used to pick behaviour.
    pub client: String,
    /// The sender's human-readable device name (at most
    /// [`MAX_DEVICE_NAME_LEN`](crate::limits::MAX_DEVICE_NAME_LEN) bytes, no
    /// control characters). Identity is the TLS-pinned device id, never this.
    pub device_name: String,
}

/// The sender is closing the connection; it sends nothing after this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Close {
    /// Why, as a code (also used as the QUIC application close code).
    pub code: CloseCode,
    /// Why, in words for a log (at most
    /// [`MAX_REASON_LEN`](crate::limits::MAX_REASON_LEN) bytes).
    pub reason: String,
}

/// A liveness check; the peer answers with a [`Pong`] carrying the nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Chosen by the sender; echoed in the Pong.
    pub nonce: u64,
}

/// The answer to a [`Ping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The nonce of the Ping being answered.
    pub nonce: u64,
}

/// Offers (or accepts) a folder: the sender holds a key of `share` and proves
/// it, bound to this connection. A folder is open once both sides have sent
/// one and each has verified the other's proofs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenFolder {
    /// The folder.
    pub share: ShareId,
    /// The access proof: `BLAKE3-keyed(access key, "meshsync v1 access
    /// proof\0" ‖ role ‖ channel binding)` for the sender's role (see
    /// `docs/keys.md`).
    pub access_proof: [u8; 32],
    /// Proof of holding the folder's data key, bound to this connection
    /// (`docs/protocol.md`, "Read proof"). Present exactly when `kind` is
    /// read-write or read-only: it keeps a storage-only peer from claiming to
    /// be a reader and being sent plaintext names.
    pub read_proof: Option<[u8; 32]>,
    /// The kind of key the sender holds. Read-write is proven batch by batch
    /// (its batches must be signed); reading by `read_proof`.
    #[serde(with = "key_kind_wire")]
    pub kind: KeyKind,
    /// A random id of the sender's index generation for this folder. A new
    /// one means the sender's index was reset and its sequence numbers
    /// started over.
    pub index_id: u64,
    /// The last sequence number in the sender's index (0 when empty).
    pub max_sequence: u64,
    /// The index generation of the peer's index that `want_since` refers to
    /// (0 with `want_since` 0 when the sender holds nothing of it).
    pub want_index_id: u64,
    /// The last sequence of the peer's index the sender already holds: the
    /// peer sends from `want_since + 1` if `want_index_id` is its current
    /// index id and `want_since <= max_sequence`, and from 1 otherwise.
    pub want_since: u64,
}

/// Refuses the peer's offer of a folder. Sent only in answer to an
/// [`OpenFolder`]: when its proofs fail (whether or not this side offered the
/// folder too), or, by a side that has not offered the folder, by choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderRefused {
    /// The folder refused.
    pub share: ShareId,
    /// Why.
    pub reason: RefuseReason,
}

/// Why a folder offer was refused. On the wire: one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
#[non_exhaustive]
pub enum RefuseReason {
    /// 0: the refusing side does not have this folder, or a proof did not
    /// verify. The two are deliberately the same code, so a stranger who knows
    /// a public share id learns nothing from offering it.
    Refused,
    /// 1: the proofs verified, but the refusing side does not share this
    /// folder with this device (an allowlist, or the user said no).
    NotAllowed,
    /// 2: the proofs verified, but the folder is stopped on the refusing side
    /// (paused, or its folder marker is missing).
    Unavailable,
}

impl From<RefuseReason> for u8 {
    fn from(reason: RefuseReason) -> Self {
        match reason {
            RefuseReason::Refused => 0,
            RefuseReason::NotAllowed => 1,
            RefuseReason::Unavailable => 2,
        }
    }
}

impl TryFrom<u8> for RefuseReason {
    type Error = String;

    fn try_from(byte: u8) -> Result<Self, Self::Error> {
        match byte {
            0 => Ok(RefuseReason::Refused),
            1 => Ok(RefuseReason::NotAllowed),
            2 => Ok(RefuseReason::Unavailable),
            other => Err(format!("unknown folder refusal reason {other}")),
        }
    }
}

/// Entries of the sender's index for one open folder, covering the sender's
/// sequence numbers `first_sequence..=last_sequence`.
///
/// Batches of one folder on one connection are contiguous: each starts right
/// after the previous one ended, the first at the start agreed at open (see
/// [`OpenFolder::want_since`]). Entries are sorted by their `sequence`
/// (strictly increasing), each within the batch's range; sequences in the
/// range with no entry were superseded by later changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexBatch {
    /// The folder.
    pub share: ShareId,
    /// The first sequence number this batch covers (at least 1).
    pub first_sequence: u64,
    /// The last sequence number this batch covers (`>= first_sequence`).
    pub last_sequence: u64,
    /// Set on the batch that ends the initial exchange: the first one whose
    /// `last_sequence` reaches the `max_sequence` the sender announced in its
    /// [`OpenFolder`]. Later batches are incremental updates.
    pub complete: bool,
    /// The entries (at most [`MAX_BATCH_ENTRIES`], checked before decoding).
    #[serde(deserialize_with = "bounded_entries")]
    pub entries: Vec<FileEntry>,
    /// Ed25519 signature by the folder's signing key over the batch (see
    /// `docs/protocol.md`, "Signed batches"). Required from a read-write peer;
    /// read-only and storage-only peers cannot sign and send none.
    #[serde(with = "signature_wire")]
    pub signature: Option<BatchSignature>,
}

/// An [`IndexBatch`] in which an entry of a big file may carry its chunk list
/// as a patch of the list last sent for its path on this connection (see
/// [`crate::patch`]). Same fields and rules as an `IndexBatch`; the receiver
/// rebuilds every entry first, and the signature covers the rebuilt entries
/// exactly as it covers an `IndexBatch`'s. Sent only on a connection that
/// negotiated [`PATCH_VERSION`] or later, and only when at least one entry is
/// a patch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexPatch {
    /// The folder.
    pub share: ShareId,
    /// The first sequence number this batch covers (at least 1).
    pub first_sequence: u64,
    /// The last sequence number this batch covers (`>= first_sequence`).
    pub last_sequence: u64,
    /// As in [`IndexBatch::complete`].
    pub complete: bool,
    /// The entries (at most [`MAX_BATCH_ENTRIES`], checked before decoding).
    #[serde(deserialize_with = "bounded_patch_entries")]
    pub entries: Vec<PatchEntry>,
    /// As in [`IndexBatch::signature`], over the rebuilt entries.
    #[serde(with = "signature_wire")]
    pub signature: Option<BatchSignature>,
}

/// One entry of an [`IndexPatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PatchEntry {
    /// The entry as it is.
    Whole(FileEntry),
    /// A file entry whose content lists no chunks: they are the base list of
    /// its path, with sequence `base_sequence`, changed by `ops`.
    Patched {
        /// The entry, its chunk list left empty.
        entry: FileEntry,
        /// The sequence of the base the receiver must hold for the path.
        base_sequence: u64,
        /// How the base becomes the entry's chunk list.
        ops: Vec<ListOp>,
    },
}

/// How far the sender is with downloading one file of an open folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadProgress {
    /// The folder.
    pub share: ShareId,
    /// The file being downloaded.
    pub path: RelPath,
    /// Chunks of the file the sender has.
    pub chunks_done: u64,
    /// Chunks in the file (`chunks_done <= chunks_total`).
    pub chunks_total: u64,
}

/// Where other peers of an open folder can be reached: the devices the
/// sender is connected to with this folder open, and their addresses (peer
/// exchange). Sent only on a connection that negotiated [`PEX_VERSION`] or
/// later, only for a folder open both ways, never naming the receiver.
///
/// What it says is a hint, not a fact: the receiver dials the addresses
/// pinned to the listed device, so a wrong address costs a failed dial, and a
/// listed device still has to prove it holds the folder's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peers {
    /// The folder.
    pub share: ShareId,
    /// At most [`MAX_PEX_PEERS`] peers (checked before decoding them).
    #[serde(deserialize_with = "bounded_peers")]
    pub peers: Vec<PeerAddresses>,
}

/// One device and where it can be reached, in a [`Peers`] message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddresses {
    /// The device.
    pub device: DeviceId,
    /// 1 to [`MAX_PEX_ADDRESSES`] addresses (checked before decoding them).
    /// On the wire each is postcard's `SocketAddr`: variant 0 (IPv4, 4
    /// bytes) or 1 (IPv6, 16 bytes), then the port as a varint; no IPv6
    /// scope, so link-local IPv6 addresses are never sent.
    #[serde(deserialize_with = "bounded_addresses")]
    pub addresses: Vec<SocketAddr>,
}

/// Chunks of a file the sender is still downloading that it holds, each
/// verified against its hash, and serves on request like any other chunk.
/// Sent only on a connection that negotiated [`HELD_VERSION`] or later, only
/// for a folder open both ways. Each message adds to what earlier ones said
/// of the same file; none takes anything back.
///
/// Like an index from a peer that cannot sign, it is a hint of where to ask:
/// a chunk the sender no longer has (it finished the file, or gave it up) is
/// answered "not found", and every chunk received is checked against its
/// hash before it is used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunksHeld {
    /// The folder.
    pub share: ShareId,
    /// The file being downloaded.
    pub path: RelPath,
    /// The content hash of the version being downloaded (an entry's
    /// `content.hash`): the chunk numbers index that version's chunk list.
    pub file: Hash,
    /// 1 to [`MAX_HELD_SPANS`] runs of chunk numbers (checked before
    /// decoding them), in increasing order, not overlapping.
    #[serde(deserialize_with = "bounded_spans")]
    pub spans: Vec<ChunkSpan>,
}

/// A run of chunk numbers of one file: `first`, `first + 1`, ...,
/// `first + count - 1` (0 is the file's first chunk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkSpan {
    /// The first chunk number.
    pub first: u32,
    /// How many (at least 1, ending at most at 2^32).
    pub count: u32,
}

impl ChunkSpan {
    /// The chunk numbers.
    pub fn numbers(&self) -> std::ops::Range<u64> {
        u64::from(self.first)..u64::from(self.first) + u64::from(self.count)
    }

    /// Runs covering `numbers` (in any order, repeats allowed), in
    /// increasing order.
    pub fn runs(numbers: impl IntoIterator<Item = u32>) -> Vec<ChunkSpan> {
        let mut sorted: Vec<u32> = numbers.into_iter().collect();
        sorted.sort_unstable();
        sorted.dedup();
        let mut spans: Vec<ChunkSpan> = Vec::new();
        for n in sorted {
            match spans.last_mut() {
                Some(last) if u64::from(last.first) + u64::from(last.count) == u64::from(n) => {
                    last.count += 1;
                }
                _ => spans.push(ChunkSpan { first: n, count: 1 }),
            }
        }
        spans
    }
}

/// Why a frame payload is not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload does not start with a message type.
    #[error("the message has no type")]
    NoType,
    /// A message type this version does not define.
    #[error("unknown message type {number}")]
    UnknownType {
        /// The type number received.
        number: u32,
    },
    /// The fields do not decode (bad varint, bad UTF-8, invalid path, invalid
    /// enum value, truncated, too many entries, …).
    #[error("malformed {message_type} message: {reason}")]
    Malformed {
        /// The message's type.
        message_type: MessageType,
        /// What the decoder said.
        reason: String,
    },
    /// The message decoded but bytes were left in the frame.
    #[error("{extra} trailing bytes after a {message_type} message")]
    TrailingBytes {
        /// The message's type.
        message_type: MessageType,
        /// Bytes left over.
        extra: usize,
    },
}

impl Message {
    /// The message's type.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Hello(_) => MessageType::Hello,
            Message::Close(_) => MessageType::Close,
            Message::Ping(_) => MessageType::Ping,
            Message::Pong(_) => MessageType::Pong,
            Message::OpenFolder(_) => MessageType::OpenFolder,
            Message::FolderRefused(_) => MessageType::FolderRefused,
            Message::IndexBatch(_) => MessageType::IndexBatch,
            Message::DownloadProgress(_) => MessageType::DownloadProgress,
            Message::Peers(_) => MessageType::Peers,
            Message::ChunksHeld(_) => MessageType::ChunksHeld,
            Message::IndexPatch(_) => MessageType::IndexPatch,
        }
    }

    /// The frame payload: the postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("postcard cannot fail to encode protocol messages")
    }

    /// The whole frame (length header and payload); a message over
    /// [`MAX_FRAME_LEN`](crate::limits::MAX_FRAME_LEN) is
    /// [`FrameError::TooLarge`].
    pub fn to_frame(&self) -> Result<Vec<u8>, FrameError> {
        let frame = postcard::to_extend(self, vec![0u8; HEADER_LEN])
            .expect("postcard cannot fail to encode protocol messages");
        seal_frame(frame)
    }

    /// Decodes a frame payload.
    pub fn decode(payload: &[u8]) -> Result<Message, DecodeError> {
        let (number, _) =
            postcard::take_from_bytes::<u32>(payload).map_err(|_| DecodeError::NoType)?;
        let message_type =
            MessageType::from_number(number).ok_or(DecodeError::UnknownType { number })?;
        let (message, rest) = postcard::take_from_bytes::<Message>(payload).map_err(|err| {
            DecodeError::Malformed {
                message_type,
                reason: err.to_string(),
            }
        })?;
        if !rest.is_empty() && message_type != MessageType::Hello {
            return Err(DecodeError::TrailingBytes {
                message_type,
                extra: rest.len(),
            });
        }
        Ok(message)
    }
}

/// Decodes an entry list, refusing a count over [`MAX_BATCH_ENTRIES`] before
/// decoding any entry.
fn bounded_entries<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<FileEntry>, D::Error> {
    struct Entries;

    impl<'de> Visitor<'de> for Entries {
        type Value = Vec<FileEntry>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "at most {MAX_BATCH_ENTRIES} index entries")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let count = seq.size_hint().unwrap_or(0);
            if count > MAX_BATCH_ENTRIES {
                return Err(de::Error::custom(format_args!(
                    "{count} entries in one batch, the limit is {MAX_BATCH_ENTRIES}"
                )));
            }
            // Reserve by the announced count only within the limit; an
            // announced count larger than the frame can hold fails on the
            // first missing entry.
            let mut entries = Vec::with_capacity(count.min(64));
            while let Some(entry) = seq.next_element()? {
                if entries.len() == MAX_BATCH_ENTRIES {
                    return Err(de::Error::custom("too many entries in one batch"));
                }
                entries.push(entry);
            }
            Ok(entries)
        }
    }

    deserializer.deserialize_seq(Entries)
}

/// Decodes a list of at most `max` elements, refusing a longer count before
/// decoding any element.
fn bounded_seq<'de, D, T>(
    deserializer: D,
    max: usize,
    what: &'static str,
) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T> {
        max: usize,
        what: &'static str,
        _marker: std::marker::PhantomData<T>,
    }

    impl<'de, T: Deserialize<'de>> Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "at most {} {}", self.max, self.what)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let count = seq.size_hint().unwrap_or(0);
            if count > self.max {
                return Err(de::Error::custom(format_args!(
                    "{count} {}, the limit is {}",
                    self.what, self.max
                )));
            }
            // Reserve by the announced count only a little: a count larger
            // than the frame can hold fails on the first missing element.
            let mut out = Vec::with_capacity(count.min(64));
            while let Some(item) = seq.next_element()? {
                if out.len() == self.max {
                    return Err(de::Error::custom(format_args!("too many {}", self.what)));
                }
                out.push(item);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_seq(Bounded {
        max,
        what,
        _marker: std::marker::PhantomData,
    })
}

fn bounded_patch_entries<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PatchEntry>, D::Error> {
    bounded_seq(d, MAX_BATCH_ENTRIES, "index entries in one batch")
}

fn bounded_peers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PeerAddresses>, D::Error> {
    bounded_seq(d, MAX_PEX_PEERS, "peers")
}

fn bounded_addresses<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    bounded_seq(d, MAX_PEX_ADDRESSES, "addresses")
}

fn bounded_spans<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ChunkSpan>, D::Error> {
    bounded_seq(d, MAX_HELD_SPANS, "chunk spans")
}

/// [`KeyKind`] on the wire: one byte, 0 read-write, 1 read-only, 2 encrypted.
mod key_kind_wire {
    use super::*;

    pub(super) fn serialize<S: Serializer>(kind: &KeyKind, s: S) -> Result<S::Ok, S::Error> {
        let byte: u8 = match kind {
            KeyKind::ReadWrite => 0,
            KeyKind::ReadOnly => 1,
            KeyKind::Encrypted => 2,
        };
        s.serialize_u8(byte)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<KeyKind, D::Error> {
        match u8::deserialize(d)? {
            0 => Ok(KeyKind::ReadWrite),
            1 => Ok(KeyKind::ReadOnly),
            2 => Ok(KeyKind::Encrypted),
            other => Err(de::Error::custom(format_args!("unknown key kind {other}"))),
        }
    }
}

/// An optional [`BatchSignature`] on the wire: postcard's option tag, then
/// the 64 signature bytes as they are (no length prefix).
mod signature_wire {
    use super::*;

    struct Bytes64([u8; 64]);

    impl Serialize for Bytes64 {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut tuple = s.serialize_tuple(64)?;
            for byte in &self.0 {
                tuple.serialize_element(byte)?;
            }
            tuple.end()
        }
    }

    impl<'de> Deserialize<'de> for Bytes64 {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Bytes;

            impl<'de> Visitor<'de> for Bytes {
                type Value = Bytes64;

                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("64 signature bytes")
                }

                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes64, A::Error> {
                    let mut bytes = [0u8; 64];
                    for (i, byte) in bytes.iter_mut().enumerate() {
                        *byte = seq
                            .next_element()?
                            .ok_or_else(|| de::Error::invalid_length(i, &self))?;
                    }
                    Ok(Bytes64(bytes))
                }
            }

            d.deserialize_tuple(64, Bytes)
        }
    }

    pub(super) fn serialize<S: Serializer>(
        signature: &Option<BatchSignature>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        signature.map(|sig| Bytes64(sig.to_bytes())).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<BatchSignature>, D::Error> {
        Ok(Option::<Bytes64>::deserialize(d)?.map(|b| BatchSignature::from_bytes(b.0)))
    }
}
