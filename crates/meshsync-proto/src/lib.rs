//! meshsync's wire protocol, sans-IO: what two devices say to each other over
//! one QUIC connection, and the rules each side enforces on what it hears.
//!
//! `docs/protocol.md` is the byte-exact specification; this crate is its
//! reference implementation. Main pieces:
//!
//! - [`frame`]: `u32` big-endian length + payload, and a streaming
//!   [`frame::FrameDecoder`] that refuses oversized frames before buffering them.
//! - [`message`]: the control-stream [`message::Message`]s (postcard-encoded).
//! - [`delta`]: chunk deltas, a chunk fetched as an rsync delta against
//!   similar bytes the requester holds (stream kind `0x05`, version 5).
//! - [`patch`]: chunk-list patches, which send a changed big file's entry as
//!   a difference from the list last sent for its path (version 5).
//! - [`chunk`]: the fixed-size headers of chunk streams
//!   ([`chunk::ChunkRequest`], [`chunk::ChunkResponse`]) and a streaming
//!   [`chunk::ChunkVerifier`].
//! - [`connection`]: the [`Connection`] state machine: hello and version
//!   negotiation, folder open with access proofs, signed and sequenced index
//!   exchange, ping, close.
//! - [`error`]: [`ProtocolError`] (the peer broke a rule), [`UsageError`] (the
//!   caller did), and [`CloseCode`], the one mapping from errors to wire codes.
//! - [`limits`]: every size and count limit, in one place.
//! - [`lan`]: LAN announcements (UDP datagrams with per-folder keyed tags,
//!   never a share id), encoded and strictly decoded.
//! - [`tracker`]: what a device and a tracker say to each other (announce,
//!   peers, hole-punch timing, relay sessions) and the relay's datagram
//!   framing.
//! - [`sealed`]: sealed index streams, which carry encrypted, individually
//!   signed index entries on links with a storage-only peer.
//!
//! Goal: be paranoid about data integrity. Everything from the peer is hostile
//! until proven otherwise: sizes are checked before memory is committed,
//! folders are opened only after a proof bound to this connection, index
//! entries from a read-write peer are accepted only with a valid signature,
//! and any violation closes the connection with a code.
//!
//! This crate must never touch a socket, read a clock, spawn a thread, draw
//! random numbers, or panic on anything a peer sends. The caller (the daemon)
//! feeds it received bytes and asks what to send, as with `quinn-proto`.

pub mod chunk;
pub mod connection;
pub mod delta;
pub mod error;
pub mod frame;
pub mod lan;
pub mod limits;
pub mod message;
pub mod patch;
pub mod sealed;
pub mod tracker;

mod batch;

#[cfg(any(fuzzing, test))]
pub mod fuzzing;

pub use batch::{BatchError, EntryProblem};
pub use connection::{
    Connection, Event, FolderKeys, FolderOffer, FolderStatus, LocalInfo, PeerFolder, Phase,
    ReceivedBatch, RejectReason, Side,
};
pub use error::{CloseCode, PeersProblem, ProtocolError, UsageError};
pub use message::{PROTOCOL_VERSION, RefuseReason, SUPPORTED_VERSIONS, VersionRange};
