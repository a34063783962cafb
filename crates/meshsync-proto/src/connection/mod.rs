//! The connection state machine: one per QUIC connection, driving its
//! control stream. Sans-IO, after `quinn-proto`: the driver feeds it what
//! arrived ([`Connection::handle_bytes`] or [`Connection::handle_frame`]),
//! gives it commands ([`Connection::open_folder`], …), and asks what to do
//! ([`Connection::poll_transmit`], [`Connection::poll_event`]).
//!
//! ```text
//!            new(): queue our Hello
//!                      │
//!               ┌──────▼───────┐  Close, or any error
//!               │AwaitingHello ├──────────────────────┐
//!               └──────┬───────┘                      │
//!          peer Hello, │ common version               │
//!               ┌──────▼───────┐                      │
//!               │  Negotiated  ├──────────────────┐   │
//!               └──────────────┘                  │   │
//!   per folder (inside Negotiated):               │   │
//!     (none) ─open_folder──▶ LocalOffered ─peer OpenFolder ok─▶ Open
//!     (none) ─peer OpenFolder ok─▶ PeerOffered ─open_folder──▶ Open
//!     (none|LocalOffered) ─peer OpenFolder bad─▶ Refused(Local)
//!     PeerOffered ─refuse_folder──▶ Refused(Local)
//!     LocalOffered ─peer FolderRefused──▶ Refused(Peer)
//!     Open: IndexBatch / IndexPatch / DownloadProgress / Peers / ChunksHeld both ways
//!                                                 ┌───▼───▼┐
//!                                                 │ Closed │
//!                                                 └────────┘
//! ```
//!
//! Rules it enforces (each has a test): nothing but Hello (or Close) before
//! negotiation; the highest common version is used, none closes with
//! [`CloseCode::IncompatibleVersion`]; folder messages only for folders open
//! both ways, opened with access proofs (and read proofs) bound to this
//! connection; a peer that names a folder this device lacks or proves wrongly
//! gets `FolderRefused` and nothing else; index batches from a read-write peer
//! must carry a valid signature; batches are contiguous per folder and
//! direction; entries are well-formed. Any violation is a [`ProtocolError`]:
//! the machine queues a Close with its code, reports [`Event::Closed`], and
//! ignores everything after. A rejected message changes no state.
//!
//! Time: the machine reads no clock. Timeouts (a Hello that never comes, a
//! ping never answered) are the driver's, with QUIC's idle timeout as the
//! backstop; the driver closes with [`CloseCode::Timeout`].
//!
//! This module must never panic on peer input, send anything about a folder
//! before the peer proved it holds its key, or deliver a batch it did not
//! fully check.

mod event;
mod folder;

use std::collections::{BTreeMap, VecDeque};

use meshsync_core::entry::{Content, FileEntry};
use meshsync_core::ids::{DeviceId, ShareId};
use meshsync_core::keys::{
    AccessProof, FolderKey, KeyError, KeyKind, ProofRole, ReadProof, sign_batch, verify_batch,
};
use meshsync_core::path::RelPath;
use serde::Serialize;

pub use event::{
    Event, FolderKeys, FolderOffer, FolderStatus, LocalInfo, PeerFolder, Phase, ReceivedBatch,
    RejectReason, Side,
};

use self::event::clean_text;
use self::folder::{FolderState, LocalFolder, OpenFolder};
use crate::batch::{BatchError, signed_payload};
use crate::error::{CloseCode, PeersProblem, ProtocolError, UsageError};
use crate::frame::{FrameDecoder, HEADER_LEN, seal_frame};
use crate::limits::{
    MAX_CLIENT_LEN, MAX_DEVICE_NAME_LEN, MAX_FOLDERS_PER_CONNECTION, MAX_FRAME_LEN,
    MAX_OUTSTANDING_PINGS, MAX_REASON_LEN, MAX_UNPROVEN_FRAME_LEN,
};
use crate::message::{self, Message, MessageType, PatchEntry, RefuseReason};
use crate::patch::{ChunkLists, ListOp};

/// The protocol state of one connection.
#[derive(Debug)]
pub struct Connection {
    role: ProofRole,
    local: LocalInfo,
    channel_binding: [u8; 32],
    peer: DeviceId,
    phase: Phase,
    folders: BTreeMap<ShareId, FolderState>,
    /// Folders in [`FolderState::Open`]: while none is, frames are held to
    /// [`MAX_UNPROVEN_FRAME_LEN`].
    open_folders: usize,
    /// Nonces of pings sent and not yet answered.
    pings: VecDeque<u64>,
    decoder: FrameDecoder,
    events: VecDeque<Event>,
    transmits: VecDeque<Vec<u8>>,
}

impl Connection {
    /// A connection in `role` (the QUIC client is the
    /// [`ProofRole::Initiator`]) to the TLS-authenticated device `peer`, whose
    /// TLS exporter secret (label `EXPORTER-meshsync-access-v1`, no context,
    /// 32 bytes) is `channel_binding`. Queues this side's Hello at once.
    pub fn new(
        role: ProofRole,
        local: LocalInfo,
        channel_binding: [u8; 32],
        peer: DeviceId,
    ) -> Self {
        let mut connection = Connection {
            role,
            local,
            channel_binding,
            peer,
            phase: Phase::AwaitingHello,
            folders: BTreeMap::new(),
            open_folders: 0,
            pings: VecDeque::new(),
            decoder: FrameDecoder::new(MAX_UNPROVEN_FRAME_LEN),
            events: VecDeque::new(),
            transmits: VecDeque::new(),
        };
        let hello = Message::Hello(message::Hello {
            versions: connection.local.versions(),
            client: connection.local.client().to_owned(),
            device_name: connection.local.device_name().to_owned(),
        });
        connection.queue(&hello);
        connection
    }

    /// This side's role.
    pub fn role(&self) -> ProofRole {
        self.role
    }

    /// The peer's device id (as the transport authenticated it).
    pub fn peer(&self) -> DeviceId {
        self.peer
    }

    /// Where the connection stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The version in use, once negotiated.
    pub fn negotiated_version(&self) -> Option<u16> {
        match self.phase {
            Phase::Negotiated { version } => Some(version),
            _ => None,
        }
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Where `share` stands on this connection, `None` if neither side
    /// mentioned it.
    pub fn folder_status(&self, share: &ShareId) -> Option<FolderStatus> {
        self.folders.get(share).map(FolderState::status)
    }

    /// Whether any folder is open both ways: until one is, the peer has
    /// proved no key (a stranger, as far as this connection knows).
    pub fn has_open_folder(&self) -> bool {
        self.phase != Phase::Closed && self.open_folders > 0
    }

    /// Whether `share` is open both ways. Serve a chunk stream's request only
    /// if this holds for its share (answer [`ChunkStatus::Refused`]
    /// otherwise).
    ///
    /// [`ChunkStatus::Refused`]: crate::chunk::ChunkStatus::Refused
    pub fn is_open(&self, share: &ShareId) -> bool {
        self.phase != Phase::Closed && matches!(self.folders.get(share), Some(FolderState::Open(_)))
    }

    /// The largest frame payload accepted now: [`MAX_UNPROVEN_FRAME_LEN`]
    /// until a folder is open, then [`MAX_FRAME_LEN`]. For drivers that split
    /// frames themselves and call [`Connection::handle_frame`].
    pub fn max_frame_len(&self) -> u32 {
        if self.open_folders > 0 {
            MAX_FRAME_LEN
        } else {
            MAX_UNPROVEN_FRAME_LEN
        }
    }

    /// Feeds bytes received on the control stream, in pieces of any size.
    /// Frames are split off and handled in order. An error closes the
    /// connection (see [`Connection::handle_frame`]). Ignored once closed.
    pub fn handle_bytes<K: FolderKeys + ?Sized>(
        &mut self,
        bytes: &[u8],
        keys: &K,
    ) -> Result<(), ProtocolError> {
        if self.is_closed() {
            return Ok(());
        }
        self.decoder.set_max_len(self.max_frame_len());
        if let Err(err) = self.decoder.push(bytes) {
            return Err(self.fail(err.into()));
        }
        loop {
            if self.is_closed() {
                return Ok(());
            }
            // The limit may have risen: a folder opened in the last frame.
            self.decoder.set_max_len(self.max_frame_len());
            match self.decoder.next_frame() {
                Ok(Some(payload)) => self.handle_frame(&payload, keys)?,
                Ok(None) => return Ok(()),
                Err(err) => return Err(self.fail(err.into())),
            }
        }
    }

    /// Call when the peer finished its side of the control stream: an
    /// incomplete frame left over is an error. A stream that ends after a
    /// Close is not.
    pub fn handle_stream_end(&mut self) -> Result<(), ProtocolError> {
        if self.is_closed() {
            return Ok(());
        }
        match self.decoder.finish() {
            Ok(()) => Ok(()),
            Err(err) => Err(self.fail(err.into())),
        }
    }

    /// Handles one frame payload (without its length header). On a protocol
    /// violation the connection queues a Close with the error's code, reports
    /// [`Event::Closed`], and returns the error; nothing the offending message
    /// asked for takes effect. Frames after the close are ignored.
    pub fn handle_frame<K: FolderKeys + ?Sized>(
        &mut self,
        payload: &[u8],
        keys: &K,
    ) -> Result<(), ProtocolError> {
        if self.is_closed() {
            return Ok(());
        }
        if payload.len() > self.max_frame_len() as usize {
            let err = crate::frame::FrameError::TooLarge {
                len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
                max: self.max_frame_len(),
            };
            return Err(self.fail(err.into()));
        }
        let message = match Message::decode(payload) {
            Ok(message) => message,
            Err(err) => return Err(self.fail(err.into())),
        };
        match self.dispatch(message, keys) {
            Ok(()) => Ok(()),
            Err(err) => Err(self.fail(err)),
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next frame to write on the control stream (length header
    /// included), if any. After [`Event::Closed`], write what is left, then
    /// close the QUIC connection.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// Offers `key`'s folder to the peer, or accepts the peer's offer of it
    /// (after [`Event::FolderRequested`]). Sends the access proof (and, for a
    /// reading key, the read proof) for this connection. The folder opens
    /// once both sides have offered ([`Event::FolderOpened`]).
    pub fn open_folder(&mut self, key: &FolderKey, offer: FolderOffer) -> Result<(), UsageError> {
        self.check_negotiated()?;
        let share = key.share_id();
        let state = self.folders.get(&share);
        match state {
            None if self.folders.len() >= MAX_FOLDERS_PER_CONNECTION => {
                return Err(UsageError::TooManyFolders {
                    max: MAX_FOLDERS_PER_CONNECTION,
                });
            }
            None | Some(FolderState::PeerOffered(_)) => {}
            Some(other) => {
                return Err(UsageError::FolderState {
                    share,
                    state: other.describe(),
                    action: "offer it",
                });
            }
        }
        let access_proof = key
            .access_key()
            .prove(self.role, &self.channel_binding)?
            .to_bytes();
        let read_proof = key
            .data_key()
            .map(|data| data.prove_read(self.role, &self.channel_binding))
            .transpose()?
            .map(|proof| proof.to_bytes());
        let message = Message::OpenFolder(message::OpenFolder {
            share,
            access_proof,
            read_proof,
            kind: key.kind(),
            index_id: offer.index_id,
            max_sequence: offer.max_sequence,
            want_index_id: offer.want_index_id,
            want_since: offer.want_since,
        });
        let frame = message.to_frame().map_err(UsageError::TooLarge)?;
        self.transmits.push_back(frame);
        let local = LocalFolder {
            key: key.clone(),
            offer,
        };
        match self.folders.remove(&share) {
            Some(FolderState::PeerOffered(peer)) => self.open(share, local, peer),
            _ => {
                self.folders
                    .insert(share, FolderState::LocalOffered(Box::new(local)));
            }
        }
        Ok(())
    }

    /// Refuses the peer's offer of `share` (after [`Event::FolderRequested`]).
    pub fn refuse_folder(
        &mut self,
        share: ShareId,
        reason: RefuseReason,
    ) -> Result<(), UsageError> {
        self.check_negotiated()?;
        match self.folders.get(&share) {
            Some(FolderState::PeerOffered(_)) => {}
            other => {
                return Err(UsageError::FolderState {
                    share,
                    state: other.map_or("not offered", FolderState::describe),
                    action: "refuse it",
                });
            }
        }
        self.queue(&Message::FolderRefused(message::FolderRefused {
            share,
            reason,
        }));
        self.folders
            .insert(share, FolderState::Refused(Side::Local));
        Ok(())
    }

    /// Sends entries of this device's index for an open folder, covering
    /// sequences `first..=last`. `first` must be where the previous batch
    /// ended plus one (at first, [`Event::FolderOpened`]'s `send_from`);
    /// entries sorted by strictly increasing sequence within the range, one
    /// per path. Signed when this side holds the read-write key; `complete`
    /// is set by the machine on the batch that reaches the `max_sequence`
    /// this side announced. A batch that breaks a rule is refused here, so
    /// the peer never has to close for it.
    pub fn send_index_batch(
        &mut self,
        share: ShareId,
        first: u64,
        last: u64,
        entries: &[FileEntry],
    ) -> Result<(), UsageError> {
        self.check_negotiated()?;
        let patches = self.has_patches();
        let author = self.local.device();
        let open = self.open_folder_mut(share, "send an index batch")?;
        let complete = open.send.completes(last);
        open.send
            .check(first, last, complete, entries)
            .map_err(|error| UsageError::Batch { share, error })?;
        let signature = match &open.local.key {
            FolderKey::ReadWrite(key) => {
                let payload = signed_payload(
                    &author,
                    &share,
                    open.local.offer.index_id,
                    first,
                    last,
                    complete,
                    entries,
                );
                Some(sign_batch(key, last, &payload))
            }
            _ => None,
        };
        let signature = signature.map(|sig| SignatureRef(sig.to_bytes()));
        let patched: Vec<Option<(u64, Vec<ListOp>)>> = if patches {
            entries
                .iter()
                .map(|entry| open.sent_lists.patch_for(entry))
                .collect()
        } else {
            Vec::new()
        };
        let frame = if patched.iter().any(Option::is_some) {
            let stripped: Vec<Option<FileEntry>> = entries
                .iter()
                .zip(&patched)
                .map(|(entry, patch)| patch.as_ref().map(|_| without_chunks(entry)))
                .collect();
            let entries: Vec<PatchEntryRef<'_>> = entries
                .iter()
                .zip(&patched)
                .zip(&stripped)
                .map(|((entry, patch), stripped)| match (patch, stripped) {
                    (Some((base_sequence, ops)), Some(stripped)) => PatchEntryRef::Patched {
                        entry: stripped,
                        base_sequence: *base_sequence,
                        ops,
                    },
                    _ => PatchEntryRef::Whole(entry),
                })
                .collect();
            batch_frame(
                MessageType::IndexPatch,
                &IndexBatchRef {
                    share: &share,
                    first_sequence: first,
                    last_sequence: last,
                    complete,
                    entries: &entries,
                    signature,
                },
            )
        } else {
            batch_frame(
                MessageType::IndexBatch,
                &IndexBatchRef {
                    share: &share,
                    first_sequence: first,
                    last_sequence: last,
                    complete,
                    entries,
                    signature,
                },
            )
        }
        .map_err(UsageError::TooLarge)?;
        open.send.advance(last, complete);
        if patches {
            open.sent_lists.record(entries);
        }
        self.transmits.push_back(frame);
        Ok(())
    }

    /// Whether chunks may be asked for as deltas against bytes the requester
    /// has (stream kind 0x05, [`message::DELTA_VERSION`]).
    pub fn has_chunk_deltas(&self) -> bool {
        self.negotiated_version()
            .is_some_and(|v| v >= message::DELTA_VERSION)
    }

    /// Whether index entries of big files may travel as chunk-list patches
    /// (both sides speak [`message::PATCH_VERSION`]). The machine decides
    /// per entry in [`Connection::send_index_batch`]; the driver need not.
    pub fn has_patches(&self) -> bool {
        self.negotiated_version()
            .is_some_and(|v| v >= message::PATCH_VERSION)
    }

    /// Tells the peer how far this side is with downloading `path` of an open
    /// folder.
    pub fn send_progress(
        &mut self,
        share: ShareId,
        path: RelPath,
        chunks_done: u64,
        chunks_total: u64,
    ) -> Result<(), UsageError> {
        self.check_negotiated()?;
        self.open_folder_mut(share, "send progress")?;
        if chunks_done > chunks_total {
            return Err(UsageError::BadProgress {
                done: chunks_done,
                total: chunks_total,
            });
        }
        self.queue(&Message::DownloadProgress(message::DownloadProgress {
            share,
            path,
            chunks_done,
            chunks_total,
        }));
        Ok(())
    }

    /// Whether the negotiated version has peer exchange
    /// ([`Connection::send_peers`], [`Event::PeersReceived`]).
    pub fn has_peer_exchange(&self) -> bool {
        self.negotiated_version()
            .is_some_and(|v| v >= message::PEX_VERSION)
    }

    /// Tells the peer where other peers of the open folder `share` can be
    /// reached (peer exchange). Needs a negotiated version with it
    /// ([`Connection::has_peer_exchange`]); at most
    /// [`MAX_PEX_PEERS`](crate::limits::MAX_PEX_PEERS) peers of 1 to
    /// [`MAX_PEX_ADDRESSES`](crate::limits::MAX_PEX_ADDRESSES) usable
    /// addresses each, every device once, never the peer itself: a list the
    /// peer would close the connection for is refused here.
    pub fn send_peers(
        &mut self,
        share: ShareId,
        peers: Vec<message::PeerAddresses>,
    ) -> Result<(), UsageError> {
        self.check_negotiated()?;
        if !self.has_peer_exchange() {
            return Err(UsageError::NotInVersion {
                message_type: MessageType::Peers,
                negotiated: self.negotiated_version().unwrap_or(0),
            });
        }
        self.open_folder_mut(share, "send peers")?;
        check_peers(&peers, &self.peer)
            .map_err(|problem| UsageError::BadPeers { share, problem })?;
        self.queue(&Message::Peers(message::Peers { share, peers }));
        Ok(())
    }

    /// Whether the negotiated version carries chunks of partial files
    /// ([`Connection::send_chunks_held`], [`Event::ChunksHeld`]).
    pub fn has_held_chunks(&self) -> bool {
        self.negotiated_version()
            .is_some_and(|v| v >= message::HELD_VERSION)
    }

    /// Whether the negotiated version lets chunk streams carry runs of
    /// chunks ([`ChunkRunRequest`](crate::chunk::ChunkRunRequest)).
    pub fn has_chunk_runs(&self) -> bool {
        self.negotiated_version()
            .is_some_and(|v| v >= message::RUN_VERSION)
    }

    /// Tells the peer that this side holds (verified) the chunks `spans` of
    /// the version `file` of `path` it is downloading in the open folder
    /// `share`, and serves them. Needs a negotiated version with it
    /// ([`Connection::has_held_chunks`]); `spans` must be 1 to
    /// [`MAX_HELD_SPANS`](crate::limits::MAX_HELD_SPANS) runs in increasing
    /// order, not overlapping ([`message::ChunkSpan::runs`] makes them).
    pub fn send_chunks_held(
        &mut self,
        share: ShareId,
        path: RelPath,
        file: meshsync_core::ids::Hash,
        spans: Vec<message::ChunkSpan>,
    ) -> Result<(), UsageError> {
        self.check_negotiated()?;
        if !self.has_held_chunks() {
            return Err(UsageError::NotInVersion {
                message_type: MessageType::ChunksHeld,
                negotiated: self.negotiated_version().unwrap_or(0),
            });
        }
        self.open_folder_mut(share, "send chunks held")?;
        if !spans_valid(&spans) {
            return Err(UsageError::BadChunkSpans { share });
        }
        self.queue(&Message::ChunksHeld(message::ChunksHeld {
            share,
            path,
            file,
            spans,
        }));
        Ok(())
    }

    /// Sends a ping; the peer's pong shows up as [`Event::PongReceived`].
    pub fn ping(&mut self, nonce: u64) -> Result<(), UsageError> {
        self.check_negotiated()?;
        if self.pings.len() >= MAX_OUTSTANDING_PINGS {
            return Err(UsageError::TooManyPings {
                max: MAX_OUTSTANDING_PINGS,
            });
        }
        self.pings.push_back(nonce);
        self.queue(&Message::Ping(message::Ping { nonce }));
        Ok(())
    }

    /// Closes the connection: queues a Close and reports [`Event::Closed`].
    /// `reason` is cut to [`MAX_REASON_LEN`]. Does nothing if already closed.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        if self.is_closed() {
            return;
        }
        let reason = clean_text(reason, MAX_REASON_LEN);
        self.queue(&Message::Close(message::Close {
            code,
            reason: reason.clone(),
        }));
        self.phase = Phase::Closed;
        self.events.push_back(Event::Closed {
            code,
            reason,
            by: Side::Local,
        });
    }

    /// Closes for a peer's violation and hands the error back.
    fn fail(&mut self, err: ProtocolError) -> ProtocolError {
        self.close(err.close_code(), &err.to_string());
        err
    }

    fn queue(&mut self, message: &Message) {
        match message.to_frame() {
            Ok(frame) => self.transmits.push_back(frame),
            // Only index batches can reach the frame limit, and they do not
            // come through here.
            Err(err) => debug_assert!(false, "control message over the frame limit: {err}"),
        }
    }

    fn check_negotiated(&self) -> Result<(), UsageError> {
        match self.phase {
            Phase::Negotiated { .. } => Ok(()),
            Phase::AwaitingHello => Err(UsageError::NotNegotiated),
            Phase::Closed => Err(UsageError::Closed),
        }
    }

    fn open_folder_mut(
        &mut self,
        share: ShareId,
        action: &'static str,
    ) -> Result<&mut OpenFolder, UsageError> {
        match self.folders.get_mut(&share) {
            Some(FolderState::Open(open)) => Ok(open),
            other => Err(UsageError::FolderState {
                share,
                state: other.map_or("not offered", |state| state.describe()),
                action,
            }),
        }
    }

    fn open(&mut self, share: ShareId, local: LocalFolder, peer: PeerFolder) {
        let open = OpenFolder::new(local, peer);
        self.events.push_back(Event::FolderOpened {
            share,
            peer,
            send_from: open.send.next(),
            receive_from: open.receive.next(),
            peer_index_complete: open.receive.initial_done(),
        });
        self.folders
            .insert(share, FolderState::Open(Box::new(open)));
        self.open_folders += 1;
    }

    fn dispatch<K: FolderKeys + ?Sized>(
        &mut self,
        message: Message,
        keys: &K,
    ) -> Result<(), ProtocolError> {
        let message_type = message.message_type();
        match (self.phase, message) {
            (_, Message::Close(close)) => {
                self.phase = Phase::Closed;
                self.events.push_back(Event::Closed {
                    code: close.code,
                    reason: clean_text(&close.reason, MAX_REASON_LEN),
                    by: Side::Peer,
                });
                Ok(())
            }
            (Phase::AwaitingHello, Message::Hello(hello)) => self.handle_hello(hello),
            (Phase::Negotiated { .. }, Message::Ping(ping)) => {
                self.queue(&Message::Pong(message::Pong { nonce: ping.nonce }));
                self.events
                    .push_back(Event::PingReceived { nonce: ping.nonce });
                Ok(())
            }
            (Phase::Negotiated { .. }, Message::Pong(pong)) => {
                let Some(at) = self.pings.iter().position(|&n| n == pong.nonce) else {
                    return Err(ProtocolError::UnsolicitedPong { nonce: pong.nonce });
                };
                self.pings.remove(at);
                self.events
                    .push_back(Event::PongReceived { nonce: pong.nonce });
                Ok(())
            }
            (Phase::Negotiated { .. }, Message::OpenFolder(offer)) => {
                self.handle_offer(offer, keys)
            }
            (Phase::Negotiated { .. }, Message::FolderRefused(refusal)) => {
                self.handle_refusal(refusal)
            }
            (Phase::Negotiated { .. }, Message::IndexBatch(batch)) => self.handle_batch(batch),
            (Phase::Negotiated { version }, Message::IndexPatch(batch)) => {
                self.handle_patch(version, batch)
            }
            (Phase::Negotiated { .. }, Message::DownloadProgress(progress)) => {
                self.handle_progress(progress)
            }
            (Phase::Negotiated { version }, Message::Peers(peers)) => {
                self.handle_peers(version, peers)
            }
            (Phase::Negotiated { version }, Message::ChunksHeld(held)) => {
                self.handle_held(version, held)
            }
            (phase, _) => Err(ProtocolError::UnexpectedMessage {
                message_type,
                phase,
            }),
        }
    }

    fn handle_hello(&mut self, hello: message::Hello) -> Result<(), ProtocolError> {
        check_text("client", &hello.client, MAX_CLIENT_LEN)?;
        check_text("device name", &hello.device_name, MAX_DEVICE_NAME_LEN)?;
        let local = self.local.versions();
        let Some(version) = local.negotiate(&hello.versions) else {
            return Err(ProtocolError::IncompatibleVersion {
                local,
                peer: hello.versions,
            });
        };
        self.phase = Phase::Negotiated { version };
        self.events.push_back(Event::HelloReceived {
            peer_versions: hello.versions,
            negotiated: version,
            client: hello.client,
            device_name: hello.device_name,
        });
        Ok(())
    }

    fn handle_offer<K: FolderKeys + ?Sized>(
        &mut self,
        offer: message::OpenFolder,
        keys: &K,
    ) -> Result<(), ProtocolError> {
        let share = offer.share;
        let local = match self.folders.get(&share) {
            None if self.folders.len() >= MAX_FOLDERS_PER_CONNECTION => {
                return Err(ProtocolError::TooManyFolders {
                    max: MAX_FOLDERS_PER_CONNECTION,
                });
            }
            None => None,
            Some(FolderState::LocalOffered(local)) => Some(local),
            Some(_) => return Err(ProtocolError::DuplicateOffer { share }),
        };
        let key = match local {
            Some(local) => Some(&local.key),
            None => keys.folder_key(&share),
        };
        let verdict = match key {
            None => Err(RejectReason::UnknownFolder),
            Some(key) => self.check_proofs(key, &offer),
        };
        match verdict {
            Err(reason) => {
                self.queue(&Message::FolderRefused(message::FolderRefused {
                    share,
                    reason: RefuseReason::Refused,
                }));
                self.folders
                    .insert(share, FolderState::Refused(Side::Local));
                self.events
                    .push_back(Event::FolderRejected { share, reason });
            }
            Ok(read_proven) => {
                let peer = PeerFolder {
                    kind: offer.kind,
                    read_proven,
                    index_id: offer.index_id,
                    max_sequence: offer.max_sequence,
                    want_index_id: offer.want_index_id,
                    want_since: offer.want_since,
                };
                match self.folders.remove(&share) {
                    Some(FolderState::LocalOffered(local)) => self.open(share, *local, peer),
                    _ => {
                        self.folders.insert(share, FolderState::PeerOffered(peer));
                        self.events
                            .push_back(Event::FolderRequested { share, peer });
                    }
                }
            }
        }
        Ok(())
    }

    /// Verifies an offer's proofs against this side's key: whether the
    /// peer's read claim was verified, or why the offer is refused.
    fn check_proofs(
        &self,
        key: &FolderKey,
        offer: &message::OpenFolder,
    ) -> Result<bool, RejectReason> {
        let peer_role = match self.role {
            ProofRole::Initiator => ProofRole::Responder,
            ProofRole::Responder => ProofRole::Initiator,
        };
        key.access_key()
            .verify_proof(
                peer_role,
                &self.channel_binding,
                &AccessProof::from_bytes(offer.access_proof),
            )
            .map_err(|_| RejectReason::BadAccessProof)?;
        match (offer.kind.can_read(), &offer.read_proof, key.data_key()) {
            (true, None, _) => Err(RejectReason::MissingReadProof),
            (true, Some(proof), Some(data)) => {
                data.verify_read_proof(
                    peer_role,
                    &self.channel_binding,
                    &ReadProof::from_bytes(*proof),
                )
                .map_err(|_| RejectReason::BadReadProof)?;
                Ok(true)
            }
            (true, Some(_), None) => Ok(false),
            (false, Some(_), _) => Err(RejectReason::UnexpectedReadProof),
            (false, None, _) => Ok(false),
        }
    }

    fn handle_refusal(&mut self, refusal: message::FolderRefused) -> Result<(), ProtocolError> {
        let share = refusal.share;
        if !matches!(self.folders.get(&share), Some(FolderState::LocalOffered(_))) {
            return Err(ProtocolError::UnexpectedRefusal { share });
        }
        self.folders.insert(share, FolderState::Refused(Side::Peer));
        self.events.push_back(Event::FolderRefused {
            share,
            reason: refusal.reason,
        });
        Ok(())
    }

    fn handle_batch(&mut self, batch: message::IndexBatch) -> Result<(), ProtocolError> {
        let message::IndexBatch {
            share,
            first_sequence,
            last_sequence,
            complete,
            entries,
            signature,
        } = batch;
        self.accept_batch(
            MessageType::IndexBatch,
            share,
            (first_sequence, last_sequence),
            complete,
            |_| Ok((entries, 0)),
            signature,
        )
    }

    fn handle_patch(
        &mut self,
        version: u16,
        batch: message::IndexPatch,
    ) -> Result<(), ProtocolError> {
        if version < message::PATCH_VERSION {
            // Not a type of the negotiated version: as unknown as type 99.
            return Err(ProtocolError::Decode(message::DecodeError::UnknownType {
                number: MessageType::IndexPatch.number(),
            }));
        }
        let message::IndexPatch {
            share,
            first_sequence,
            last_sequence,
            complete,
            entries,
            signature,
        } = batch;
        self.accept_batch(
            MessageType::IndexPatch,
            share,
            (first_sequence, last_sequence),
            complete,
            |lists| rebuild_entries(lists, entries),
            signature,
        )
    }

    /// Checks a batch from the peer (its entries rebuilt by `entries` from
    /// the bases recorded so far), verifies its signature, and delivers it.
    fn accept_batch(
        &mut self,
        message_type: MessageType,
        share: ShareId,
        (first, last): (u64, u64),
        complete: bool,
        entries: impl FnOnce(&ChunkLists) -> Result<(Vec<FileEntry>, usize), BatchError>,
        signature: Option<meshsync_core::keys::BatchSignature>,
    ) -> Result<(), ProtocolError> {
        let author = self.peer;
        let patches = self.has_patches();
        let Some(FolderState::Open(open)) = self.folders.get_mut(&share) else {
            return Err(ProtocolError::FolderNotOpen {
                share,
                message_type,
            });
        };
        let (entries, patched) =
            entries(&open.received_lists).map_err(|error| ProtocolError::Batch { share, error })?;
        open.receive
            .check(first, last, complete, &entries)
            .map_err(|error| ProtocolError::Batch { share, error })?;
        let signed = signature.is_some();
        if signed || open.peer.kind == KeyKind::ReadWrite {
            let payload = signed_payload(
                &author,
                &share,
                open.peer.index_id,
                first,
                last,
                complete,
                &entries,
            );
            verify_batch(
                open.local.key.verify_key(),
                last,
                &payload,
                signature.as_ref(),
            )
            .map_err(|err| match err {
                KeyError::MissingSignature => {
                    ProtocolError::MissingSignature { share, first, last }
                }
                _ => ProtocolError::BadSignature { share, first, last },
            })?;
        }
        open.receive.advance(last, complete);
        if patches {
            open.received_lists.record(&entries);
        }
        self.events.push_back(Event::IndexReceived {
            share,
            batch: ReceivedBatch {
                first_sequence: first,
                last_sequence: last,
                complete,
                entries,
                signed,
                patched,
            },
        });
        Ok(())
    }

    fn handle_peers(&mut self, version: u16, peers: message::Peers) -> Result<(), ProtocolError> {
        if version < message::PEX_VERSION {
            // Not a type of the negotiated version: as unknown as type 99.
            return Err(ProtocolError::Decode(message::DecodeError::UnknownType {
                number: MessageType::Peers.number(),
            }));
        }
        let share = peers.share;
        if !matches!(self.folders.get(&share), Some(FolderState::Open(_))) {
            return Err(ProtocolError::FolderNotOpen {
                share,
                message_type: MessageType::Peers,
            });
        }
        check_peers(&peers.peers, &self.local.device())
            .map_err(|problem| ProtocolError::BadPeers { share, problem })?;
        self.events.push_back(Event::PeersReceived {
            share,
            peers: peers.peers,
        });
        Ok(())
    }

    fn handle_held(
        &mut self,
        version: u16,
        held: message::ChunksHeld,
    ) -> Result<(), ProtocolError> {
        if version < message::HELD_VERSION {
            // Not a type of the negotiated version: as unknown as type 99.
            return Err(ProtocolError::Decode(message::DecodeError::UnknownType {
                number: MessageType::ChunksHeld.number(),
            }));
        }
        let share = held.share;
        if !matches!(self.folders.get(&share), Some(FolderState::Open(_))) {
            return Err(ProtocolError::FolderNotOpen {
                share,
                message_type: MessageType::ChunksHeld,
            });
        }
        if !spans_valid(&held.spans) {
            return Err(ProtocolError::BadChunkSpans { share });
        }
        self.events.push_back(Event::ChunksHeld {
            share,
            path: held.path,
            file: held.file,
            spans: held.spans,
        });
        Ok(())
    }

    fn handle_progress(
        &mut self,
        progress: message::DownloadProgress,
    ) -> Result<(), ProtocolError> {
        let share = progress.share;
        if !matches!(self.folders.get(&share), Some(FolderState::Open(_))) {
            return Err(ProtocolError::FolderNotOpen {
                share,
                message_type: MessageType::DownloadProgress,
            });
        }
        if progress.chunks_done > progress.chunks_total {
            return Err(ProtocolError::BadProgress {
                share,
                done: progress.chunks_done,
                total: progress.chunks_total,
            });
        }
        self.events.push_back(Event::Progress {
            share,
            path: progress.path,
            chunks_done: progress.chunks_done,
            chunks_total: progress.chunks_total,
        });
        Ok(())
    }
}

/// Whether `spans` are 1 to [`MAX_HELD_SPANS`](crate::limits::MAX_HELD_SPANS)
/// non-empty runs of chunk numbers, in increasing order, not overlapping,
/// none past 2^32 (the upper count was checked while decoding).
fn spans_valid(spans: &[message::ChunkSpan]) -> bool {
    let mut next = 0u64;
    !spans.is_empty()
        && spans.len() <= crate::limits::MAX_HELD_SPANS
        && spans.iter().all(|s| {
            let ok = s.count > 0 && u64::from(s.first) >= next;
            next = s.numbers().end;
            ok && next <= 1 << 32
        })
}

/// Checks a peer-exchange list: no device twice, not `receiver`, each with 1
/// to [`MAX_PEX_ADDRESSES`](crate::limits::MAX_PEX_ADDRESSES) addresses that
/// can be dialled (port not 0; not unspecified, multicast or broadcast; no
/// IPv6 link-local, which needs a scope the wire does not carry). The counts'
/// upper bounds were checked while decoding.
fn check_peers(peers: &[message::PeerAddresses], receiver: &DeviceId) -> Result<(), PeersProblem> {
    use crate::limits::{MAX_PEX_ADDRESSES, MAX_PEX_PEERS};
    if peers.len() > MAX_PEX_PEERS {
        return Err(PeersProblem::TooMany);
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in peers {
        if p.device == *receiver {
            return Err(PeersProblem::Receiver);
        }
        if !seen.insert(p.device) {
            return Err(PeersProblem::Duplicate(p.device));
        }
        if p.addresses.is_empty() || p.addresses.len() > MAX_PEX_ADDRESSES {
            return Err(PeersProblem::AddressCount(p.device));
        }
        for a in &p.addresses {
            let link_local_v6 =
                matches!(a.ip(), std::net::IpAddr::V6(v6) if v6.is_unicast_link_local());
            if a.port() == 0 || !crate::lan::usable(a.ip()) || link_local_v6 {
                return Err(PeersProblem::Address(*a));
            }
        }
    }
    Ok(())
}

/// Refuses text over `max` bytes or with control characters.
fn check_text(field: &'static str, text: &str, max: usize) -> Result<(), ProtocolError> {
    if text.len() > max {
        return Err(ProtocolError::FieldTooLong {
            field,
            len: text.len(),
            max,
        });
    }
    if text.chars().any(char::is_control) {
        return Err(ProtocolError::ControlCharacters { field });
    }
    Ok(())
}

/// An [`message::IndexBatch`] (or, with `E` = [`PatchEntryRef`], an
/// [`message::IndexPatch`]) that borrows its entries, so sending a batch does
/// not copy them. Same fields, same order, same encoding (a test pins that).
#[derive(Serialize)]
struct IndexBatchRef<'a, E> {
    share: &'a ShareId,
    first_sequence: u64,
    last_sequence: u64,
    complete: bool,
    entries: &'a [E],
    signature: Option<SignatureRef>,
}

/// A [`message::PatchEntry`] that borrows its parts; encodes the same.
#[derive(Serialize)]
enum PatchEntryRef<'a> {
    Whole(&'a FileEntry),
    Patched {
        entry: &'a FileEntry,
        base_sequence: u64,
        ops: &'a [ListOp],
    },
}

/// 64 signature bytes encoded as `message::IndexBatch` encodes them.
struct SignatureRef([u8; 64]);

impl Serialize for SignatureRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut tuple = s.serialize_tuple(64)?;
        for byte in &self.0 {
            tuple.serialize_element(byte)?;
        }
        tuple.end()
    }
}

/// The frame of a batch message of type `message_type`: the type, then the
/// batch's fields.
fn batch_frame<E: Serialize>(
    message_type: MessageType,
    batch: &IndexBatchRef<'_, E>,
) -> Result<Vec<u8>, crate::frame::FrameError> {
    let frame = postcard::to_extend(&message_type.number(), vec![0u8; HEADER_LEN])
        .and_then(|frame| postcard::to_extend(batch, frame))
        .expect("postcard cannot fail to encode index entries");
    seal_frame(frame)
}

/// `entry` with its chunk list left out, as a patched entry travels.
fn without_chunks(entry: &FileEntry) -> FileEntry {
    FileEntry {
        path: entry.path.clone(),
        kind: entry.kind,
        size: entry.size,
        mtime: entry.mtime,
        permissions: entry.permissions,
        symlink_target: entry.symlink_target.clone(),
        content: entry.content.as_ref().map(|content| Content {
            hash: content.hash,
            chunk_avg: content.chunk_avg,
            chunks: Vec::new(),
        }),
        version: entry.version.clone(),
        deleted: entry.deleted,
        sequence: entry.sequence,
    }
}

/// The whole entries of an [`message::IndexPatch`], patched ones rebuilt from
/// the bases in `lists`, and how many were patched.
fn rebuild_entries(
    lists: &ChunkLists,
    entries: Vec<PatchEntry>,
) -> Result<(Vec<FileEntry>, usize), BatchError> {
    let patched = entries
        .iter()
        .filter(|entry| matches!(entry, PatchEntry::Patched { .. }))
        .count();
    let entries = entries
        .into_iter()
        .map(|entry| match entry {
            PatchEntry::Whole(entry) => Ok(entry),
            PatchEntry::Patched {
                mut entry,
                base_sequence,
                ops,
            } => match lists.rebuild(&mut entry, base_sequence, &ops) {
                Ok(()) => Ok(entry),
                Err(problem) => Err(BatchError::BadPatch {
                    path: entry.path,
                    problem,
                }),
            },
        })
        .collect::<Result<_, _>>()?;
    Ok((entries, patched))
}

#[cfg(test)]
mod tests;

/// A signature as carried in a [`message::IndexBatch`], for tests that build
/// batches by hand.
#[cfg(test)]
pub(crate) fn sign_for_test(
    key: &meshsync_core::keys::ReadWriteKey,
    author: &DeviceId,
    index_id: u64,
    batch: &message::IndexBatch,
) -> meshsync_core::keys::BatchSignature {
    let payload = signed_payload(
        author,
        &batch.share,
        index_id,
        batch.first_sequence,
        batch.last_sequence,
        batch.complete,
        &batch.entries,
    );
    sign_batch(key, batch.last_sequence, &payload)
}
