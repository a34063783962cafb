//! One folder's state on one connection: who offered it, what each side
//! said, and where each direction's batch stream stands.
//!
//! A folder leaves `Refused` never, and reaches `Open` only through a verified
//! offer from the peer and one sent by this side.

use meshsync_core::keys::FolderKey;

use super::event::{FolderOffer, FolderStatus, PeerFolder, Side};
use crate::batch::BatchCursor;
use crate::patch::ChunkLists;

/// This side's half of a folder: the key it offered with and what it said.
#[derive(Debug, Clone)]
pub(crate) struct LocalFolder {
    /// The key: signs batches if read-write, verifies the peer's.
    pub(crate) key: FolderKey,
    /// What this side announced.
    pub(crate) offer: FolderOffer,
}

/// A folder open both ways.
#[derive(Debug, Clone)]
pub(crate) struct OpenFolder {
    pub(crate) local: LocalFolder,
    pub(crate) peer: PeerFolder,
    /// Batches this side sends.
    pub(crate) send: BatchCursor,
    /// Batches the peer sends.
    pub(crate) receive: BatchCursor,
    /// Base chunk lists of what this side sent (version 5 and later).
    pub(crate) sent_lists: ChunkLists,
    /// Base chunk lists of what the peer sent and this side accepted.
    pub(crate) received_lists: ChunkLists,
}

impl OpenFolder {
    pub(crate) fn new(local: LocalFolder, peer: PeerFolder) -> Self {
        let send_from = start_sequence(
            peer.want_index_id,
            peer.want_since,
            local.offer.index_id,
            local.offer.max_sequence,
        );
        let receive_from = start_sequence(
            local.offer.want_index_id,
            local.offer.want_since,
            peer.index_id,
            peer.max_sequence,
        );
        OpenFolder {
            send: BatchCursor::new(send_from, local.offer.max_sequence),
            receive: BatchCursor::new(receive_from, peer.max_sequence),
            sent_lists: ChunkLists::default(),
            received_lists: ChunkLists::default(),
            local,
            peer,
        }
    }
}

/// Where a sender's first batch starts: right after what the receiver holds,
/// if it holds a copy of the sender's current index generation that is not
/// ahead of it; from 1 (the whole index) otherwise.
pub(crate) fn start_sequence(
    want_index_id: u64,
    want_since: u64,
    index_id: u64,
    max_sequence: u64,
) -> u64 {
    if want_index_id == index_id && want_since <= max_sequence {
        want_since.checked_add(1).unwrap_or(1)
    } else {
        1
    }
}

/// A folder's state on the connection.
#[derive(Debug, Clone)]
pub(crate) enum FolderState {
    /// This side sent OpenFolder; the peer has not answered.
    LocalOffered(Box<LocalFolder>),
    /// The peer sent OpenFolder and its proofs verified; the driver has not
    /// answered.
    PeerOffered(PeerFolder),
    /// Open both ways.
    Open(Box<OpenFolder>),
    /// Refused; any further message about it is a violation.
    Refused(Side),
}

impl FolderState {
    /// For errors: the state in words.
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            FolderState::LocalOffered(_) => "offered by this side",
            FolderState::PeerOffered(_) => "offered by the peer",
            FolderState::Open(_) => "open",
            FolderState::Refused(_) => "refused",
        }
    }

    pub(crate) fn status(&self) -> FolderStatus {
        match self {
            FolderState::LocalOffered(_) => FolderStatus::LocalOffered,
            FolderState::PeerOffered(_) => FolderStatus::PeerOffered,
            FolderState::Open(open) => FolderStatus::Open { peer: open.peer },
            FolderState::Refused(by) => FolderStatus::Refused { by: *by },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_is_incremental_only_for_the_same_generation() {
        // Holds 1..=40 of generation 7, which is now at 50: send 41 on.
        assert_eq!(start_sequence(7, 40, 7, 50), 41);
        // Holds all of it: nothing to send, next batch would be 51.
        assert_eq!(start_sequence(7, 50, 7, 50), 51);
        // Index reset (new generation 8): everything again.
        assert_eq!(start_sequence(7, 40, 8, 50), 1);
        // Claims more than exists (the sender lost changes): everything again.
        assert_eq!(start_sequence(7, 60, 7, 50), 1);
        // Holds nothing.
        assert_eq!(start_sequence(0, 0, 7, 50), 1);
        assert_eq!(start_sequence(0, 0, 0, 0), 1);
    }
}
