//! What the connection tells its driver ([`Event`]) and the plain data that
//! goes with it: who this device is ([`LocalInfo`]), what it offers
//! ([`FolderOffer`]), what the peer said ([`PeerFolder`]), and where its keys
//! are ([`FolderKeys`]).
//!
//! Nothing here may hold a peer's text unchecked: names and reasons reach an
//! event only after their length and characters were checked or cleaned.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::BuildHasher;

use meshsync_core::entry::FileEntry;
use meshsync_core::ids::{DeviceId, ShareId};
use meshsync_core::keys::{FolderKey, KeyKind};
use meshsync_core::path::RelPath;

use crate::error::CloseCode;
use crate::limits::{MAX_BATCH_ENTRIES, MAX_CLIENT_LEN, MAX_DEVICE_NAME_LEN};
use crate::message::{RefuseReason, SUPPORTED_VERSIONS, VersionRange};

/// Which end of the connection did something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// This device.
    Local,
    /// The peer.
    Peer,
}

/// Where the connection stands. Inputs arrive in any order, so the phase is
/// a value the machine checks on every message rather than a type parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Our Hello is sent; the peer's has not arrived. Only Hello and Close are
    /// accepted.
    AwaitingHello,
    /// Both Hellos are exchanged and a version agreed; folders may be opened.
    Negotiated {
        /// The version in use.
        version: u16,
    },
    /// Closed by either side; every later input is ignored.
    Closed,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::AwaitingHello => f.write_str("awaiting hello"),
            Phase::Negotiated { version } => write!(f, "negotiated (v{version})"),
            Phase::Closed => f.write_str("closed"),
        }
    }
}

/// Who this device is, as told to the peer in the Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalInfo {
    device: DeviceId,
    device_name: String,
    client: String,
    versions: VersionRange,
}

impl LocalInfo {
    /// This device: its id (the one its TLS certificate pins; index batches
    /// are signed as authored by it), its name, and its software
    /// (`name/version`). Control characters become U+FFFD and both strings
    /// are cut to their limits ([`MAX_DEVICE_NAME_LEN`], [`MAX_CLIENT_LEN`]),
    /// so the peer never refuses them. Speaks [`SUPPORTED_VERSIONS`].
    pub fn new(device: DeviceId, device_name: &str, client: &str) -> Self {
        LocalInfo {
            device,
            device_name: clean_text(device_name, MAX_DEVICE_NAME_LEN),
            client: clean_text(client, MAX_CLIENT_LEN),
            versions: SUPPORTED_VERSIONS,
        }
    }

    /// The same, speaking `versions` instead (for tests of negotiation).
    pub fn with_versions(mut self, versions: VersionRange) -> Self {
        self.versions = versions;
        self
    }

    /// This device's id.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// The device name sent.
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// The client string sent.
    pub fn client(&self) -> &str {
        &self.client
    }

    /// The versions offered.
    pub fn versions(&self) -> VersionRange {
        self.versions
    }
}

/// `text` with control characters replaced by U+FFFD, cut at a character
/// boundary to at most `max` bytes.
pub(crate) fn clean_text(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = if c.is_control() { '\u{fffd}' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// This side's index position for a folder it offers (the fields of its
/// OpenFolder besides the proofs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FolderOffer {
    /// The random id of this device's current index generation for the folder.
    pub index_id: u64,
    /// The last sequence number in this device's index (0 when empty).
    pub max_sequence: u64,
    /// The index generation of the peer's index this device holds a copy of
    /// (0 when it holds none).
    pub want_index_id: u64,
    /// The last sequence of that copy (0 when it holds none).
    pub want_since: u64,
}

impl FolderOffer {
    /// An offer from a device that holds nothing of the peer's index yet.
    pub fn fresh(index_id: u64, max_sequence: u64) -> Self {
        FolderOffer {
            index_id,
            max_sequence,
            want_index_id: 0,
            want_since: 0,
        }
    }
}

/// What the peer said about a folder in its OpenFolder, after its proofs
/// verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerFolder {
    /// The kind of key the peer says it holds. A reading kind (read-write or
    /// read-only) is proven by the read proof when `read_proven`; read-write
    /// is proven only batch by batch, by signatures.
    pub kind: KeyKind,
    /// Whether this side verified that the peer holds the folder's data key.
    /// Always false when this side is storage-only (it cannot check, and has
    /// no plaintext to give away). Send plaintext names and chunk hashes only
    /// to a peer with this set.
    pub read_proven: bool,
    /// The peer's index generation.
    pub index_id: u64,
    /// The last sequence in the peer's index when it offered.
    pub max_sequence: u64,
    /// The generation of our index the peer holds a copy of.
    pub want_index_id: u64,
    /// The last sequence of our index the peer holds.
    pub want_since: u64,
}

/// Why this side refused a peer's folder offer on its own (the peer was told
/// only [`RefuseReason::Refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// This device has no key for the folder.
    UnknownFolder,
    /// The access proof did not verify.
    BadAccessProof,
    /// The peer claims a reading key but sent no read proof.
    MissingReadProof,
    /// The read proof did not verify: the peer claims to read but does not
    /// hold the data key.
    BadReadProof,
    /// The peer claims a storage-only key but sent a read proof.
    UnexpectedReadProof,
}

/// An index batch that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedBatch {
    /// The first sequence it covers.
    pub first_sequence: u64,
    /// The last sequence it covers.
    pub last_sequence: u64,
    /// Whether it ends the peer's initial exchange: after it, this side holds
    /// the peer's whole index (as of the peer's offer).
    pub complete: bool,
    /// The entries, sorted by sequence.
    pub entries: Vec<FileEntry>,
    /// Whether it carried a signature that verified: the entries were written
    /// by a holder of the read-write key and may change files. Unsigned
    /// batches (from read-only and storage-only peers) say what the peer has,
    /// for availability only.
    pub signed: bool,
    /// How many of the entries travelled as chunk-list patches and were
    /// rebuilt here (version 5; see [`crate::patch`]).
    pub patched: usize,
}

impl ReceivedBatch {
    /// Whether more of the same burst probably follows at once: the batch
    /// is as large as a batch may be and does not end the peer's initial
    /// exchange (a sender with more ready fills every batch it sends).
    pub fn more_follows(&self) -> bool {
        !self.complete && self.entries.len() >= MAX_BATCH_ENTRIES
    }
}

/// What happened, for the driver to act on (from [`Connection::poll_event`]).
///
/// [`Connection::poll_event`]: crate::Connection::poll_event
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The peer's Hello arrived and a version was agreed; folders may now be
    /// opened.
    HelloReceived {
        /// The versions the peer speaks.
        peer_versions: VersionRange,
        /// The version in use.
        negotiated: u16,
        /// The peer's software (for logs and the UI).
        client: String,
        /// The peer's device name (for the UI).
        device_name: String,
    },
    /// The peer offered a folder this device holds, and its proofs verified.
    /// Answer with `open_folder` (accept) or `refuse_folder`.
    FolderRequested {
        /// The folder.
        share: ShareId,
        /// What the peer said.
        peer: PeerFolder,
    },
    /// The folder is open: both sides offered it and each verified the
    /// other. Index batches may flow both ways.
    FolderOpened {
        /// The folder.
        share: ShareId,
        /// What the peer said.
        peer: PeerFolder,
        /// The sequence this side's first batch must start at: 1 when the peer
        /// needs the whole index, else the one after what it holds.
        send_from: u64,
        /// The sequence the peer's first batch will start at. When it is 1,
        /// the peer sends its whole index: drop the copy held of its old
        /// index (another generation) as it is replaced.
        receive_from: u64,
        /// Whether the peer has nothing to send in its initial exchange (this
        /// side already holds all of its index).
        peer_index_complete: bool,
    },
    /// This side refused the peer's offer on its own (unknown folder, bad
    /// proof). For logs; the peer was told only "refused".
    FolderRejected {
        /// The folder.
        share: ShareId,
        /// Why.
        reason: RejectReason,
    },
    /// The peer refused this side's offer.
    FolderRefused {
        /// The folder.
        share: ShareId,
        /// Why, as the peer said.
        reason: RefuseReason,
    },
    /// An index batch from the peer passed every check (sequence, entries,
    /// signature).
    IndexReceived {
        /// The folder.
        share: ShareId,
        /// The batch.
        batch: ReceivedBatch,
    },
    /// The peer's progress downloading a file.
    Progress {
        /// The folder.
        share: ShareId,
        /// The file.
        path: RelPath,
        /// Chunks the peer has.
        chunks_done: u64,
        /// Chunks in the file.
        chunks_total: u64,
    },
    /// The peer told where other peers of an open folder can be reached
    /// (peer exchange). The list passed the checks of `send_peers`; the
    /// addresses are still only hints.
    PeersReceived {
        /// The folder (open on this connection).
        share: ShareId,
        /// The peers and their addresses.
        peers: Vec<crate::message::PeerAddresses>,
    },
    /// The peer holds these chunks of a file it is still downloading, and
    /// serves them (version 3). The runs passed the checks of
    /// `send_chunks_held`; the claim is still only a hint of where to ask.
    ChunksHeld {
        /// The folder (open on this connection).
        share: ShareId,
        /// The file.
        path: RelPath,
        /// The content hash of the version the peer is downloading.
        file: meshsync_core::ids::Hash,
        /// Chunk numbers in that version's chunk list.
        spans: Vec<crate::message::ChunkSpan>,
    },
    /// The peer pinged; the pong is queued.
    PingReceived {
        /// The ping's nonce.
        nonce: u64,
    },
    /// The peer answered a ping of ours.
    PongReceived {
        /// The nonce.
        nonce: u64,
    },
    /// The connection is closed. Flush `poll_transmit`, then close the QUIC
    /// connection with `code` as the application error code.
    Closed {
        /// Why.
        code: CloseCode,
        /// Why, in words (cut to the limit, control characters replaced).
        reason: String,
        /// Who closed it.
        by: Side,
    },
}

/// Where one folder stands on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FolderStatus {
    /// This side offered it and waits for the peer's answer.
    LocalOffered,
    /// The peer offered it (proofs verified); this side has not answered.
    PeerOffered,
    /// Open both ways.
    Open {
        /// What the peer said when it offered.
        peer: PeerFolder,
    },
    /// Refused (by `by`); nothing more may be said about it on this
    /// connection.
    Refused {
        /// Who refused.
        by: Side,
    },
}

/// The folder keys this device holds, looked up by share id when the peer
/// offers a folder.
///
/// Implemented for maps from [`ShareId`] to [`FolderKey`]; a daemon that keeps
/// its keys behind a lock passes the locked map.
pub trait FolderKeys {
    /// The key held for `share`, `None` if this device does not have the
    /// folder.
    fn folder_key(&self, share: &ShareId) -> Option<&FolderKey>;
}

impl<S: BuildHasher> FolderKeys for HashMap<ShareId, FolderKey, S> {
    fn folder_key(&self, share: &ShareId) -> Option<&FolderKey> {
        self.get(share)
    }
}

impl FolderKeys for BTreeMap<ShareId, FolderKey> {
    fn folder_key(&self, share: &ShareId) -> Option<&FolderKey> {
        self.get(share)
    }
}

impl FolderKeys for [FolderKey] {
    fn folder_key(&self, share: &ShareId) -> Option<&FolderKey> {
        self.iter().find(|key| key.share_id() == *share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshsync_core::entry::{FileKind, Timestamp};
    use meshsync_core::version::VersionVector;

    #[test]
    fn clean_text_replaces_controls_and_cuts_at_char_boundaries() {
        assert_eq!(clean_text("a\nb\u{1b}[31m", 100), "a\u{fffd}b\u{fffd}[31m");
        assert_eq!(clean_text("ééé", 5), "éé");
        assert_eq!(clean_text("abc", 0), "");
    }

    #[test]
    fn only_a_full_batch_of_an_unfinished_exchange_says_more_follows() {
        let entry = FileEntry {
            path: RelPath::new("f").unwrap(),
            kind: FileKind::File,
            size: 0,
            mtime: Timestamp::default(),
            permissions: 0o644,
            symlink_target: None,
            content: None,
            version: VersionVector::new(),
            deleted: false,
            sequence: 1,
        };
        let batch = |n: usize, complete| ReceivedBatch {
            first_sequence: 1,
            last_sequence: n as u64,
            complete,
            entries: vec![entry.clone(); n],
            signed: true,
            patched: 0,
        };
        assert!(batch(MAX_BATCH_ENTRIES, false).more_follows());
        assert!(!batch(MAX_BATCH_ENTRIES, true).more_follows());
        assert!(!batch(MAX_BATCH_ENTRIES - 1, false).more_follows());
    }
}
