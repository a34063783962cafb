//! What can go wrong, and the one mapping from errors to wire close codes.
//!
//! - [`ProtocolError`]: the peer broke a rule. Every one is fatal: the
//!   connection queues a Close with [`ProtocolError::close_code`] and stops.
//! - [`UsageError`]: the caller asked for something the protocol does not
//!   allow (a batch out of sequence, a command before the hello, …). Nothing
//!   is sent and the connection goes on.
//! - [`CloseCode`]: why a connection ended, on the wire (a `u16`, also the
//!   QUIC application close code).
//!
//! Error messages never contain key material or proofs.

use std::fmt;

use meshsync_core::ids::{DeviceId, ShareId};
use meshsync_core::keys::KeyError;
use serde::{Deserialize, Serialize};

use crate::batch::BatchError;
use crate::connection::Phase;
use crate::frame::FrameError;
use crate::message::{DecodeError, MessageType, VersionRange};

/// Why a connection was closed, as sent in a Close message and as the QUIC
/// application close code. Numbers are fixed forever; a number this version
/// does not know is kept as [`CloseCode::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u16", from = "u16")]
#[non_exhaustive]
pub enum CloseCode {
    /// 0: closed without an error (nothing left to do).
    Normal,
    /// 1: the device is shutting down or leaving.
    Shutdown,
    /// 2: a frame or message did not decode, or a field was malformed.
    Malformed,
    /// 3: a frame was longer than the limit in force.
    FrameTooLarge,
    /// 4: a message type this side does not know.
    UnknownMessage,
    /// 5: a message that is not allowed now (anything before Hello, a second
    /// Hello, a second offer of a folder, a refusal of a folder never
    /// offered, an unsolicited Pong).
    UnexpectedMessage,
    /// 6: the two sides share no protocol version.
    IncompatibleVersion,
    /// 7: a folder message for a folder that is not open on this connection.
    FolderNotOpen,
    /// 8: an index batch from a read-write peer without a valid signature, or
    /// with a signature that does not verify.
    BadSignature,
    /// 9: index batches out of sequence (gap, replay, entries out of range or
    /// order, a wrong `complete` flag).
    InvalidSequence,
    /// 10: an index entry that is malformed (internal path, non-canonical
    /// version vector, chunks that do not add up, …).
    InvalidEntry,
    /// 11: a limit of [`crate::limits`] was exceeded.
    LimitExceeded,
    /// 12: this side hit a bug.
    Internal,
    /// 13: the peer did not complete a step in time (set by the driver).
    Timeout,
    /// 14: another connection to the same device replaces this one (set by
    /// the driver).
    DuplicateConnection,
    /// A code this version does not know.
    Unknown(u16),
}

impl CloseCode {
    /// The wire number.
    pub fn to_u16(self) -> u16 {
        match self {
            CloseCode::Normal => 0,
            CloseCode::Shutdown => 1,
            CloseCode::Malformed => 2,
            CloseCode::FrameTooLarge => 3,
            CloseCode::UnknownMessage => 4,
            CloseCode::UnexpectedMessage => 5,
            CloseCode::IncompatibleVersion => 6,
            CloseCode::FolderNotOpen => 7,
            CloseCode::BadSignature => 8,
            CloseCode::InvalidSequence => 9,
            CloseCode::InvalidEntry => 10,
            CloseCode::LimitExceeded => 11,
            CloseCode::Internal => 12,
            CloseCode::Timeout => 13,
            CloseCode::DuplicateConnection => 14,
            CloseCode::Unknown(code) => code,
        }
    }

    /// The code with wire number `code`; never fails.
    pub fn from_u16(code: u16) -> Self {
        match code {
            0 => CloseCode::Normal,
            1 => CloseCode::Shutdown,
            2 => CloseCode::Malformed,
            3 => CloseCode::FrameTooLarge,
            4 => CloseCode::UnknownMessage,
            5 => CloseCode::UnexpectedMessage,
            6 => CloseCode::IncompatibleVersion,
            7 => CloseCode::FolderNotOpen,
            8 => CloseCode::BadSignature,
            9 => CloseCode::InvalidSequence,
            10 => CloseCode::InvalidEntry,
            11 => CloseCode::LimitExceeded,
            12 => CloseCode::Internal,
            13 => CloseCode::Timeout,
            14 => CloseCode::DuplicateConnection,
            other => CloseCode::Unknown(other),
        }
    }

    /// Whether the code reports an error (anything but normal close and
    /// shutdown).
    pub fn is_error(self) -> bool {
        !matches!(self, CloseCode::Normal | CloseCode::Shutdown)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> Self {
        code.to_u16()
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        CloseCode::from_u16(code)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseCode::Unknown(code) => write!(f, "unknown close code {code}"),
            known => write!(f, "{known:?} ({})", known.to_u16()),
        }
    }
}

/// The peer broke a protocol rule. The connection has queued a Close with
/// [`ProtocolError::close_code`] and is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The byte stream did not split into frames.
    #[error("framing: {0}")]
    Frame(#[from] FrameError),
    /// A frame did not decode as a message.
    #[error("decoding: {0}")]
    Decode(#[from] DecodeError),
    /// A message that is not allowed in this phase of the connection.
    #[error("{message_type} message not allowed while {phase}")]
    UnexpectedMessage {
        /// The message received.
        message_type: MessageType,
        /// The phase the connection was in.
        phase: Phase,
    },
    /// The peer's versions and ours do not overlap.
    #[error("no common protocol version: we speak {local}, the peer {peer}")]
    IncompatibleVersion {
        /// Versions this side speaks.
        local: VersionRange,
        /// Versions the peer speaks.
        peer: VersionRange,
    },
    /// A text field is longer than its limit.
    #[error("{field} has {len} bytes; the limit is {max}")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A text field contains control characters.
    #[error("{field} contains control characters")]
    ControlCharacters {
        /// Which field.
        field: &'static str,
    },
    /// The peer offered more folders than one connection may track.
    #[error("more than {max} folders on one connection")]
    TooManyFolders {
        /// The limit.
        max: usize,
    },
    /// The peer offered a folder it had already offered.
    #[error("folder {share} offered twice")]
    DuplicateOffer {
        /// The folder.
        share: ShareId,
    },
    /// The peer refused a folder this side had not offered (or no longer
    /// could be refused).
    #[error("refusal of folder {share}, which was not waiting for an answer")]
    UnexpectedRefusal {
        /// The folder.
        share: ShareId,
    },
    /// A folder message for a folder that is not open on this connection.
    #[error("{message_type} for folder {share}, which is not open")]
    FolderNotOpen {
        /// The folder.
        share: ShareId,
        /// The message received.
        message_type: MessageType,
    },
    /// An index batch breaks the sequencing or entry rules.
    #[error("index batch for folder {share}: {error}")]
    Batch {
        /// The folder.
        share: ShareId,
        /// The rule broken.
        error: BatchError,
    },
    /// An index batch from a peer holding a read-write key came unsigned.
    #[error("unsigned index batch {first}..={last} for folder {share} from a read-write peer")]
    MissingSignature {
        /// The folder.
        share: ShareId,
        /// The batch's first sequence.
        first: u64,
        /// The batch's last sequence.
        last: u64,
    },
    /// An index batch's signature does not verify.
    #[error("index batch {first}..={last} for folder {share}: the signature does not verify")]
    BadSignature {
        /// The folder.
        share: ShareId,
        /// The batch's first sequence.
        first: u64,
        /// The batch's last sequence.
        last: u64,
    },
    /// Download progress with more chunks done than the file has.
    #[error("progress for {share}: {done} of {total} chunks")]
    BadProgress {
        /// The folder.
        share: ShareId,
        /// Chunks claimed done.
        done: u64,
        /// Chunks in the file.
        total: u64,
    },
    /// A Pong whose nonce matches no Ping this side sent.
    #[error("pong {nonce} answers no ping")]
    UnsolicitedPong {
        /// The nonce received.
        nonce: u64,
    },
    /// A peer-exchange list that breaks a rule.
    #[error("peers of folder {share}: {problem}")]
    BadPeers {
        /// The folder.
        share: ShareId,
        /// The rule broken.
        problem: PeersProblem,
    },
    /// Chunks held given as no runs, too many, or runs that are empty,
    /// out of order, overlapping or past 2^32.
    #[error("chunks held in folder {share}: bad runs of chunk numbers")]
    BadChunkSpans {
        /// The folder.
        share: ShareId,
    },
}

/// What is wrong with a peer-exchange list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeersProblem {
    /// More peers than the limit.
    #[error("too many peers")]
    TooMany,
    /// It lists the receiver itself.
    #[error("it lists the receiver")]
    Receiver,
    /// It lists a device twice.
    #[error("device {0} listed twice")]
    Duplicate(DeviceId),
    /// A device with no addresses, or more than the limit.
    #[error("device {0} has no addresses or too many")]
    AddressCount(DeviceId),
    /// An address nobody can dial (port 0, unspecified, multicast,
    /// broadcast, IPv6 link-local).
    #[error("unusable address {0}")]
    Address(std::net::SocketAddr),
}

impl ProtocolError {
    /// The close code this error is reported with: the only place where
    /// protocol errors map to wire codes.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::Frame(FrameError::TooLarge { .. }) => CloseCode::FrameTooLarge,
            ProtocolError::Frame(_) => CloseCode::Malformed,
            ProtocolError::Decode(DecodeError::UnknownType { .. }) => CloseCode::UnknownMessage,
            ProtocolError::Decode(_) => CloseCode::Malformed,
            ProtocolError::UnexpectedMessage { .. }
            | ProtocolError::DuplicateOffer { .. }
            | ProtocolError::UnexpectedRefusal { .. }
            | ProtocolError::UnsolicitedPong { .. } => CloseCode::UnexpectedMessage,
            ProtocolError::IncompatibleVersion { .. } => CloseCode::IncompatibleVersion,
            ProtocolError::FieldTooLong { .. } | ProtocolError::TooManyFolders { .. } => {
                CloseCode::LimitExceeded
            }
            ProtocolError::ControlCharacters { .. }
            | ProtocolError::BadProgress { .. }
            | ProtocolError::BadPeers { .. }
            | ProtocolError::BadChunkSpans { .. } => CloseCode::Malformed,
            ProtocolError::FolderNotOpen { .. } => CloseCode::FolderNotOpen,
            ProtocolError::Batch { error, .. } => match error {
                BatchError::TooManyEntries { .. } => CloseCode::LimitExceeded,
                BatchError::DuplicatePath { .. }
                | BatchError::InvalidEntry { .. }
                | BatchError::BadPatch { .. } => CloseCode::InvalidEntry,
                _ => CloseCode::InvalidSequence,
            },
            ProtocolError::MissingSignature { .. } | ProtocolError::BadSignature { .. } => {
                CloseCode::BadSignature
            }
        }
    }
}

/// The caller asked for something the protocol does not allow now. Nothing
/// was sent; the connection is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// The hello exchange has not finished: wait for
    /// [`Event::HelloReceived`](crate::Event::HelloReceived).
    #[error("the connection has not negotiated a version yet")]
    NotNegotiated,
    /// The connection is closed.
    #[error("the connection is closed")]
    Closed,
    /// The folder is not in a state that allows this.
    #[error("folder {share} is {state}: cannot {action}")]
    FolderState {
        /// The folder.
        share: ShareId,
        /// Its state ("not offered", "offered by us", "open", "refused", …).
        state: &'static str,
        /// What was asked.
        action: &'static str,
    },
    /// One connection may not track more folders.
    #[error("more than {max} folders on one connection")]
    TooManyFolders {
        /// The limit.
        max: usize,
    },
    /// The batch breaks a rule the peer would close the connection for.
    #[error("index batch for folder {share}: {error}")]
    Batch {
        /// The folder.
        share: ShareId,
        /// The rule broken.
        error: BatchError,
    },
    /// The message does not fit in a frame: send fewer entries per batch.
    #[error("message too large: {0}")]
    TooLarge(FrameError),
    /// Progress with more chunks done than the file has.
    #[error("progress of {done} of {total} chunks")]
    BadProgress {
        /// Chunks done.
        done: u64,
        /// Chunks in the file.
        total: u64,
    },
    /// Too many pings are waiting for their pong.
    #[error("{max} pings already wait for a pong")]
    TooManyPings {
        /// The limit.
        max: usize,
    },
    /// The negotiated version does not have this message.
    #[error("{message_type} is not in protocol version {negotiated}")]
    NotInVersion {
        /// The message.
        message_type: MessageType,
        /// The version in use.
        negotiated: u16,
    },
    /// A peer-exchange list the peer would refuse.
    #[error("peers of folder {share}: {problem}")]
    BadPeers {
        /// The folder.
        share: ShareId,
        /// The rule broken.
        problem: PeersProblem,
    },
    /// Runs of chunk numbers the peer would refuse.
    #[error("chunks held in folder {share}: bad runs of chunk numbers")]
    BadChunkSpans {
        /// The folder.
        share: ShareId,
    },
    /// A key could not make a proof.
    #[error("key: {0}")]
    Key(#[from] KeyError),
}
