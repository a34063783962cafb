//! The rules an index batch must satisfy, and the bytes its signature covers.
//!
//! The same checks run on batches this side sends (a violation is the
//! caller's bug, reported as a [`UsageError`](crate::UsageError) before
//! anything is sent) and on batches it receives (a violation closes the
//! connection), so a conforming sender never trips the receiver.
//!
//! Rules, per folder and connection (details in `docs/protocol.md`):
//! - batches are contiguous: each starts at the sequence after the previous
//!   one's last (the first at the start agreed when the folder opened); a gap
//!   or an overlap (replay) is an error;
//! - entries are sorted by strictly increasing `sequence`, each inside the
//!   batch's range, one per path, at most
//!   [`MAX_BATCH_ENTRIES`](crate::limits::MAX_BATCH_ENTRIES);
//! - `complete` is set on exactly the batch that first reaches the sender's
//!   announced `max_sequence`;
//! - every entry is well-formed ([`EntryProblem`]): never a meshsync-internal
//!   path, a canonical version vector, chunks that add up to the size.
//!
//! This module must never panic on any entry, and never trust one.

use std::collections::HashSet;

use meshsync_core::entry::{FileEntry, FileKind};
use meshsync_core::ids::{DeviceId, ShareId};
use meshsync_core::path::RelPath;
use serde::Serialize;

use crate::limits::{
    MAX_BATCH_ENTRIES, MAX_CHUNK_LEN, MAX_SYMLINK_TARGET_LEN, MAX_VERSION_COUNTERS,
};

/// Why an index batch breaks the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The batch starts after the sequence expected: batches in between are
    /// missing.
    #[error("sequence gap: expected a batch starting at {expected}, got one starting at {first}")]
    Gap {
        /// The first sequence expected.
        expected: u64,
        /// The first sequence of the batch.
        first: u64,
    },
    /// The batch starts before the sequence expected: it repeats sequences
    /// already received.
    #[error(
        "sequence replay: expected a batch starting at {expected}, got one starting at {first}"
    )]
    Replay {
        /// The first sequence expected.
        expected: u64,
        /// The first sequence of the batch.
        first: u64,
    },
    /// `last_sequence` is before `first_sequence`.
    #[error("empty sequence range {first}..={last}")]
    EmptyRange {
        /// First sequence.
        first: u64,
        /// Last sequence.
        last: u64,
    },
    /// `last_sequence` is `u64::MAX`: no batch could follow.
    #[error("sequence numbers exhausted")]
    SequenceOverflow,
    /// More entries than [`MAX_BATCH_ENTRIES`].
    #[error("{count} entries in one batch; the limit is {max}")]
    TooManyEntries {
        /// Entries in the batch.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An entry's sequence is outside the batch's range.
    #[error("entry {path} has sequence {sequence}, outside the batch's {first}..={last}")]
    EntryOutOfRange {
        /// The entry's path.
        path: RelPath,
        /// Its sequence.
        sequence: u64,
        /// The batch's first sequence.
        first: u64,
        /// The batch's last sequence.
        last: u64,
    },
    /// An entry's sequence is not above the previous entry's.
    #[error("entry {path} has sequence {sequence}, not above the previous entry's {previous}")]
    OutOfOrder {
        /// The entry's path.
        path: RelPath,
        /// Its sequence.
        sequence: u64,
        /// The previous entry's sequence.
        previous: u64,
    },
    /// Two entries for one path in one batch.
    #[error("two entries for {path} in one batch")]
    DuplicatePath {
        /// The path.
        path: RelPath,
    },
    /// An entry is malformed.
    #[error("entry {path}: {problem}")]
    InvalidEntry {
        /// The entry's path.
        path: RelPath,
        /// What is wrong with it.
        problem: EntryProblem,
    },
    /// A patched entry's chunk list cannot be rebuilt (version 5).
    #[error("entry {path}: bad chunk-list patch: {problem}")]
    BadPatch {
        /// The entry's path.
        path: RelPath,
        /// Why.
        problem: crate::patch::PatchProblem,
    },
    /// `complete` is set on a batch that does not reach the announced
    /// `max_sequence`.
    #[error(
        "batch ending at {last} claims to complete the initial exchange, which ends at {announced_max}"
    )]
    CompleteTooEarly {
        /// The batch's last sequence.
        last: u64,
        /// The `max_sequence` the sender announced.
        announced_max: u64,
    },
    /// The batch reaches the announced `max_sequence` but does not say it
    /// completes the initial exchange.
    #[error(
        "batch ending at {last} reaches the announced {announced_max} but is not marked complete"
    )]
    CompleteMissing {
        /// The batch's last sequence.
        last: u64,
        /// The `max_sequence` the sender announced.
        announced_max: u64,
    },
    /// `complete` is set again after the initial exchange ended.
    #[error("the initial exchange was already complete")]
    CompleteAgain,
}

/// What is wrong with one entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryProblem {
    /// The path is meshsync's own metadata (`.meshsync/…` or a temporary
    /// file), which is never synced.
    #[error("the path is meshsync's own metadata")]
    InternalPath,
    /// The version vector is not sorted by device, repeats a device, or has a
    /// zero counter.
    #[error("the version vector is not canonical")]
    NonCanonicalVersion,
    /// The version vector has more counters than
    /// [`MAX_VERSION_COUNTERS`].
    #[error("the version vector has {count} counters; the limit is {MAX_VERSION_COUNTERS}")]
    TooManyVersionCounters {
        /// Counters in the vector.
        count: usize,
    },
    /// A version counter above [`meshsync_core::version::MAX_COUNTER`].
    #[error(
        "version counter {counter} is above the limit {}",
        meshsync_core::version::MAX_COUNTER
    )]
    CounterTooLarge {
        /// The counter.
        counter: u64,
    },
    /// The mtime's nanoseconds are not below one second.
    #[error("mtime nanoseconds {nanos} are not below 1e9")]
    BadNanos {
        /// The nanoseconds field.
        nanos: u32,
    },
    /// Content is given for something that is not a file.
    #[error("content on a {kind:?}")]
    ContentOnNonFile {
        /// The entry's kind.
        kind: FileKind,
    },
    /// The chunk lengths do not add up to the size.
    #[error("chunks add up to {sum} bytes, the size is {size}")]
    ChunksDoNotAddUp {
        /// The entry's size.
        size: u64,
        /// The sum of its chunk lengths.
        sum: u64,
    },
    /// A chunk is empty or longer than [`MAX_CHUNK_LEN`].
    #[error("a chunk of {len} bytes (chunks have 1 to {MAX_CHUNK_LEN})")]
    BadChunkLen {
        /// The chunk's length.
        len: u32,
    },
    /// A symlink target on something that is not a symlink.
    #[error("a symlink target on a {kind:?}")]
    TargetOnNonSymlink {
        /// The entry's kind.
        kind: FileKind,
    },
    /// The symlink target is too long, or contains NUL.
    #[error("the symlink target is longer than {MAX_SYMLINK_TARGET_LEN} bytes or contains NUL")]
    BadSymlinkTarget,
}

/// Where a folder's batch stream stands, in one direction of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchCursor {
    /// The first sequence of the next batch.
    next: u64,
    /// The `max_sequence` the sender announced when the folder opened.
    announced_max: u64,
    /// Whether the initial exchange is over.
    initial_done: bool,
}

impl BatchCursor {
    /// A stream whose first batch starts at `start`, from a sender that
    /// announced `announced_max`. With nothing to send, the initial exchange
    /// is over at once.
    pub(crate) fn new(start: u64, announced_max: u64) -> Self {
        BatchCursor {
            next: start,
            announced_max,
            initial_done: start > announced_max,
        }
    }

    /// The first sequence of the next batch.
    pub(crate) fn next(&self) -> u64 {
        self.next
    }

    /// Whether the initial exchange is over.
    pub(crate) fn initial_done(&self) -> bool {
        self.initial_done
    }

    /// The `complete` flag a batch ending at `last` must carry.
    pub(crate) fn completes(&self, last: u64) -> bool {
        !self.initial_done && last >= self.announced_max
    }

    /// Checks a batch against every rule.
    pub(crate) fn check(
        &self,
        first: u64,
        last: u64,
        complete: bool,
        entries: &[FileEntry],
    ) -> Result<(), BatchError> {
        if first > self.next {
            return Err(BatchError::Gap {
                expected: self.next,
                first,
            });
        }
        if first < self.next {
            return Err(BatchError::Replay {
                expected: self.next,
                first,
            });
        }
        if last < first {
            return Err(BatchError::EmptyRange { first, last });
        }
        if last == u64::MAX {
            return Err(BatchError::SequenceOverflow);
        }
        match (complete, self.completes(last)) {
            (true, true) | (false, false) => {}
            (true, false) if self.initial_done => return Err(BatchError::CompleteAgain),
            (true, false) => {
                return Err(BatchError::CompleteTooEarly {
                    last,
                    announced_max: self.announced_max,
                });
            }
            (false, true) => {
                return Err(BatchError::CompleteMissing {
                    last,
                    announced_max: self.announced_max,
                });
            }
        }
        check_entries(first, last, entries)
    }

    /// Moves past a batch that passed [`BatchCursor::check`].
    pub(crate) fn advance(&mut self, last: u64, complete: bool) {
        self.next = last + 1;
        self.initial_done |= complete;
    }
}

fn check_entries(first: u64, last: u64, entries: &[FileEntry]) -> Result<(), BatchError> {
    if entries.len() > MAX_BATCH_ENTRIES {
        return Err(BatchError::TooManyEntries {
            count: entries.len(),
            max: MAX_BATCH_ENTRIES,
        });
    }
    let mut previous: Option<u64> = None;
    let mut paths = HashSet::with_capacity(entries.len());
    for entry in entries {
        let sequence = entry.sequence;
        if !(first..=last).contains(&sequence) {
            return Err(BatchError::EntryOutOfRange {
                path: entry.path.clone(),
                sequence,
                first,
                last,
            });
        }
        if let Some(previous) = previous.filter(|&p| sequence <= p) {
            return Err(BatchError::OutOfOrder {
                path: entry.path.clone(),
                sequence,
                previous,
            });
        }
        previous = Some(sequence);
        if !paths.insert(entry.path.as_str()) {
            return Err(BatchError::DuplicatePath {
                path: entry.path.clone(),
            });
        }
        check_entry(entry).map_err(|problem| BatchError::InvalidEntry {
            path: entry.path.clone(),
            problem,
        })?;
    }
    Ok(())
}

/// Checks the invariants one entry must hold whoever sent it.
pub(crate) fn check_entry(entry: &FileEntry) -> Result<(), EntryProblem> {
    if entry.path.is_internal() {
        return Err(EntryProblem::InternalPath);
    }
    let counters = entry.version.counters();
    if counters.len() > MAX_VERSION_COUNTERS {
        return Err(EntryProblem::TooManyVersionCounters {
            count: counters.len(),
        });
    }
    if let Some(&(_, counter)) = counters
        .iter()
        .find(|&&(_, c)| c > meshsync_core::version::MAX_COUNTER)
    {
        return Err(EntryProblem::CounterTooLarge { counter });
    }
    let sorted = counters.windows(2).all(|pair| pair[0].0 < pair[1].0);
    if !sorted || counters.iter().any(|&(_, counter)| counter == 0) {
        return Err(EntryProblem::NonCanonicalVersion);
    }
    if entry.mtime.nanos >= 1_000_000_000 {
        return Err(EntryProblem::BadNanos {
            nanos: entry.mtime.nanos,
        });
    }
    if let Some(content) = &entry.content {
        if entry.kind != FileKind::File {
            return Err(EntryProblem::ContentOnNonFile { kind: entry.kind });
        }
        let mut sum: u64 = 0;
        for chunk in &content.chunks {
            if chunk.len == 0 || chunk.len > MAX_CHUNK_LEN {
                return Err(EntryProblem::BadChunkLen { len: chunk.len });
            }
            // Cannot overflow: at most a frame's worth of chunks of at most
            // 2^24 bytes each.
            sum = sum.saturating_add(u64::from(chunk.len));
        }
        if sum != entry.size {
            return Err(EntryProblem::ChunksDoNotAddUp {
                size: entry.size,
                sum,
            });
        }
    }
    if let Some(target) = &entry.symlink_target {
        if entry.kind != FileKind::Symlink {
            return Err(EntryProblem::TargetOnNonSymlink { kind: entry.kind });
        }
        if target.len() > MAX_SYMLINK_TARGET_LEN || target.contains('\0') {
            return Err(EntryProblem::BadSymlinkTarget);
        }
    }
    Ok(())
}

/// The label that opens every signed batch payload.
pub(crate) const SIGNED_BATCH_LABEL: &[u8; 32] = b"meshsync v1 index batch payload\0";

/// The fields of a batch that its signature covers, in wire order.
#[derive(Serialize)]
struct SignedFields<'a> {
    author: &'a DeviceId,
    share: &'a ShareId,
    index_id: u64,
    first_sequence: u64,
    last_sequence: u64,
    complete: bool,
    entries: &'a [FileEntry],
}

/// What `keys::sign_batch` signs for a batch (with `sequence =
/// last_sequence`): [`SIGNED_BATCH_LABEL`] ‖ postcard(author, share, index_id,
/// first, last, complete, entries). The author is the sending device, so a
/// batch cannot be passed off as another device's index; the index id ties it
/// to one index generation.
///
/// The receiver re-encodes what it decoded, so what it verifies is exactly
/// what it delivers: a batch that decoded from a non-canonical encoding fails
/// verification rather than passing with other meaning.
#[allow(clippy::too_many_arguments)]
pub(crate) fn signed_payload(
    author: &DeviceId,
    share: &ShareId,
    index_id: u64,
    first_sequence: u64,
    last_sequence: u64,
    complete: bool,
    entries: &[FileEntry],
) -> Vec<u8> {
    let fields = SignedFields {
        author,
        share,
        index_id,
        first_sequence,
        last_sequence,
        complete,
        entries,
    };
    postcard::to_extend(&fields, SIGNED_BATCH_LABEL.to_vec())
        .expect("postcard cannot fail to encode index entries")
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshsync_core::entry::{ChunkRef, Content, Timestamp};
    use meshsync_core::ids::{Hash, ShortId};
    use meshsync_core::version::VersionVector;

    fn file(path: &str, sequence: u64) -> FileEntry {
        let mut version = VersionVector::new();
        version.bump(ShortId(7));
        FileEntry {
            path: RelPath::new(path).unwrap(),
            kind: FileKind::File,
            size: 3,
            mtime: Timestamp { secs: 1, nanos: 2 },
            permissions: 0o644,
            symlink_target: None,
            content: Some(Content {
                hash: Hash::of(b"abc"),
                chunk_avg: 65536,
                chunks: vec![ChunkRef {
                    hash: Hash::of(b"abc"),
                    len: 3,
                }],
            }),
            version,
            deleted: false,
            sequence,
        }
    }

    #[test]
    fn counters_above_the_limit_are_refused() {
        use meshsync_core::version::MAX_COUNTER;
        let mut e = file("a", 1);
        e.version.bump_at(ShortId(9), MAX_COUNTER);
        check_entry(&e).unwrap();
        e.version.bump_at(ShortId(9), u64::MAX);
        assert!(matches!(
            check_entry(&e),
            Err(EntryProblem::CounterTooLarge { counter: u64::MAX })
        ));
    }

    #[test]
    fn contiguous_batches_pass_and_advance() {
        let mut cursor = BatchCursor::new(1, 5);
        assert!(!cursor.initial_done());
        let batch = [file("a", 1), file("b", 3)];
        cursor.check(1, 3, false, &batch).unwrap();
        cursor.advance(3, false);
        assert_eq!(cursor.next(), 4);
        assert!(cursor.completes(5));
        cursor.check(4, 6, true, &[file("c", 6)]).unwrap();
        cursor.advance(6, true);
        assert!(cursor.initial_done());
        cursor.check(7, 7, false, &[file("a", 7)]).unwrap();
    }

    #[test]
    fn gap_and_replay_are_refused() {
        let cursor = BatchCursor::new(4, 10);
        assert_eq!(
            cursor.check(5, 6, false, &[]),
            Err(BatchError::Gap {
                expected: 4,
                first: 5
            })
        );
        assert_eq!(
            cursor.check(3, 6, false, &[]),
            Err(BatchError::Replay {
                expected: 4,
                first: 3
            })
        );
        assert_eq!(
            cursor.check(4, 3, false, &[]),
            Err(BatchError::EmptyRange { first: 4, last: 3 })
        );
    }

    #[test]
    fn complete_flag_must_match_the_announced_end() {
        let cursor = BatchCursor::new(1, 5);
        assert_eq!(
            cursor.check(1, 4, true, &[]),
            Err(BatchError::CompleteTooEarly {
                last: 4,
                announced_max: 5
            })
        );
        assert_eq!(
            cursor.check(1, 5, false, &[]),
            Err(BatchError::CompleteMissing {
                last: 5,
                announced_max: 5
            })
        );
        let nothing_to_send = BatchCursor::new(6, 5);
        assert!(nothing_to_send.initial_done());
        assert_eq!(
            nothing_to_send.check(6, 6, true, &[]),
            Err(BatchError::CompleteAgain)
        );
    }

    #[test]
    fn entries_must_be_in_range_ordered_and_unique() {
        let cursor = BatchCursor::new(1, 100);
        assert!(matches!(
            cursor.check(1, 3, false, &[file("a", 4)]),
            Err(BatchError::EntryOutOfRange { sequence: 4, .. })
        ));
        assert!(matches!(
            cursor.check(1, 3, false, &[file("a", 2), file("b", 2)]),
            Err(BatchError::OutOfOrder {
                sequence: 2,
                previous: 2,
                ..
            })
        ));
        assert!(matches!(
            cursor.check(1, 3, false, &[file("a", 1), file("a", 2)]),
            Err(BatchError::DuplicatePath { .. })
        ));
        assert_eq!(
            cursor.check(1, u64::MAX, false, &[]),
            Err(BatchError::SequenceOverflow)
        );
    }

    #[test]
    fn malformed_entries_are_refused() {
        let mut internal = file(".meshsync/marker", 1);
        internal.content = None;
        assert_eq!(check_entry(&internal), Err(EntryProblem::InternalPath));

        let mut short = file("a", 1);
        short.size = 4;
        assert_eq!(
            check_entry(&short),
            Err(EntryProblem::ChunksDoNotAddUp { size: 4, sum: 3 })
        );

        let mut dir = file("d", 1);
        dir.kind = FileKind::Directory;
        assert_eq!(
            check_entry(&dir),
            Err(EntryProblem::ContentOnNonFile {
                kind: FileKind::Directory
            })
        );

        let mut nanos = file("a", 1);
        nanos.mtime.nanos = 1_000_000_000;
        assert!(matches!(
            check_entry(&nanos),
            Err(EntryProblem::BadNanos { .. })
        ));

        let mut empty_chunk = file("a", 1);
        empty_chunk.size = 0;
        empty_chunk.content.as_mut().unwrap().chunks[0].len = 0;
        assert_eq!(
            check_entry(&empty_chunk),
            Err(EntryProblem::BadChunkLen { len: 0 })
        );

        let mut target = file("a", 1);
        target.symlink_target = Some("b".into());
        assert!(matches!(
            check_entry(&target),
            Err(EntryProblem::TargetOnNonSymlink { .. })
        ));
    }

    #[test]
    fn non_canonical_version_vectors_are_refused() {
        // Built through serde, as a hostile peer would send them.
        let unsorted: VersionVector =
            postcard::from_bytes(&postcard::to_allocvec(&vec![(9u64, 1u64), (3, 1)]).unwrap())
                .unwrap();
        let zero: VersionVector =
            postcard::from_bytes(&postcard::to_allocvec(&vec![(3u64, 0u64)]).unwrap()).unwrap();
        for version in [unsorted, zero] {
            let mut entry = file("a", 1);
            entry.version = version;
            assert_eq!(check_entry(&entry), Err(EntryProblem::NonCanonicalVersion));
        }
    }

    #[test]
    fn signed_payload_binds_every_field() {
        let author = DeviceId::from_bytes([1; 32]);
        let share = ShareId::from_bytes([2; 32]);
        let entries = [file("a", 1)];
        let base = signed_payload(&author, &share, 9, 1, 1, true, &entries);
        assert!(base.starts_with(SIGNED_BATCH_LABEL));
        let variants = [
            signed_payload(
                &DeviceId::from_bytes([3; 32]),
                &share,
                9,
                1,
                1,
                true,
                &entries,
            ),
            signed_payload(
                &author,
                &ShareId::from_bytes([3; 32]),
                9,
                1,
                1,
                true,
                &entries,
            ),
            signed_payload(&author, &share, 8, 1, 1, true, &entries),
            signed_payload(&author, &share, 9, 0, 1, true, &entries),
            signed_payload(&author, &share, 9, 1, 2, true, &entries),
            signed_payload(&author, &share, 9, 1, 1, false, &entries),
            signed_payload(&author, &share, 9, 1, 1, true, &[]),
        ];
        for other in variants {
            assert_ne!(other, base);
        }
    }
}
