//! Chunk-list patches (protocol version 5): an index entry of a big file
//! whose chunk list travels as a difference from the list the same path had
//! in the last entry sent for it on the same connection.
//!
//! Why: an edit of a few MiB in a 512 MiB file changes a few dozen of its
//! 8,192 chunks, yet a whole entry lists all of them again (about 290 KB),
//! and the receiver, once it has the new content, announces the same list
//! back. A patch names the base by its sequence and says, chunk run by chunk
//! run, what to keep, what to skip and what is new ([`ListOp`]).
//!
//! Both sides keep the same record of the base lists ([`ChunkLists`]): the
//! sender of what it sent, the receiver of what it accepted, in the same
//! order and by the same rule, so the base a patch names is always there. It
//! lives and dies with the connection's folder: nothing is stored, and a new
//! connection starts with whole entries.
//!
//! A patch changes only how an entry travels. The receiver rebuilds the whole
//! entry before it checks it, and the batch signature covers the rebuilt
//! entries exactly as it covers an [`IndexBatch`](crate::message::IndexBatch).
//!
//! This module is pure. It must never panic on what a peer sends, and never
//! hold more than [`MAX_TRACKED_CHUNKS`] chunk references per folder and
//! direction.

use std::collections::{BTreeMap, HashMap};

use meshsync_core::entry::{ChunkRef, FileEntry, FileKind};
use meshsync_core::path::RelPath;
use serde::{Deserialize, Serialize};

/// The fewest chunks an entry must list to be recorded as a base (and so to
/// be patched later): below this, a whole list is at most a few KB.
pub const PATCH_MIN_CHUNKS: usize = 64;

/// The most chunk references recorded as bases per folder, per direction and
/// connection (about 2.4 MB): the oldest base goes first past this. An entry
/// with more chunks than this is never recorded.
pub const MAX_TRACKED_CHUNKS: usize = 65_536;

/// One step of a patch. A cursor starts at the base's first chunk; the
/// rebuilt list is what the steps emit, in order. Base chunks after the last
/// step are dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListOp {
    /// Emit the next `n` base chunks from the cursor, and move past them.
    Keep(u32),
    /// Move the cursor past `n` base chunks without emitting them.
    Skip(u32),
    /// Emit these chunks (at least one).
    Insert(Vec<ChunkRef>),
}

/// Why a patch cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatchProblem {
    /// No base list is recorded for the path.
    #[error("no base chunk list is recorded for the path")]
    NoBase,
    /// The recorded base has another sequence than the one the patch names.
    #[error("the patch names base sequence {named}; the recorded base is {recorded}")]
    WrongBase {
        /// The base sequence in the patch.
        named: u64,
        /// The sequence of the recorded base.
        recorded: u64,
    },
    /// A `Keep` or `Skip` goes past the base's last chunk.
    #[error("a step goes past the end of the base's {len} chunks")]
    PastEnd {
        /// Chunks in the base.
        len: usize,
    },
    /// A step of zero chunks (not canonical).
    #[error("a step of zero chunks")]
    EmptyStep,
    /// The patched entry is not a file with content and an empty chunk list.
    #[error("only a file entry with content and no chunks listed can carry a patch")]
    NotPatchable,
}

/// Rebuilds a chunk list from `base` and `ops`.
pub fn apply(base: &[ChunkRef], ops: &[ListOp]) -> Result<Vec<ChunkRef>, PatchProblem> {
    let mut out = Vec::with_capacity(base.len());
    let mut cursor = 0usize;
    for op in ops {
        match op {
            ListOp::Keep(n) | ListOp::Skip(n) => {
                let n = *n as usize;
                if n == 0 {
                    return Err(PatchProblem::EmptyStep);
                }
                let end = cursor
                    .checked_add(n)
                    .filter(|&end| end <= base.len())
                    .ok_or(PatchProblem::PastEnd { len: base.len() })?;
                if matches!(op, ListOp::Keep(_)) {
                    out.extend_from_slice(&base[cursor..end]);
                }
                cursor = end;
            }
            ListOp::Insert(chunks) => {
                if chunks.is_empty() {
                    return Err(PatchProblem::EmptyStep);
                }
                out.extend_from_slice(chunks);
            }
        }
    }
    Ok(out)
}

/// A patch that turns `base` into `new`: new chunks found in the base at or
/// after the cursor are taken from it (skipping what lies between), others
/// are inserted. Edits in place and insertions cost only the chunks they
/// touched; a chunk moved before the cursor is sent again.
pub fn diff(base: &[ChunkRef], new: &[ChunkRef]) -> Vec<ListOp> {
    let mut positions: HashMap<&ChunkRef, Vec<usize>> = HashMap::new();
    for (at, chunk) in base.iter().enumerate() {
        positions.entry(chunk).or_default().push(at);
    }
    let mut ops = Vec::new();
    let mut cursor = 0usize;
    for chunk in new {
        let found = if base.get(cursor) == Some(chunk) {
            Some(cursor)
        } else {
            positions.get(chunk).and_then(|at| {
                let next = at.partition_point(|&p| p < cursor);
                at.get(next).copied()
            })
        };
        match found {
            Some(at) => {
                push_count(&mut ops, ListOp::Skip, at - cursor);
                push_count(&mut ops, ListOp::Keep, 1);
                cursor = at + 1;
            }
            None => match ops.last_mut() {
                Some(ListOp::Insert(chunks)) => chunks.push(*chunk),
                _ => ops.push(ListOp::Insert(vec![*chunk])),
            },
        }
    }
    ops
}

/// Appends `n` chunks of a `Keep` or `Skip` step, merged into the last step
/// when it is the same kind. Counts past `u32::MAX` continue in a new step.
fn push_count(ops: &mut Vec<ListOp>, step: fn(u32) -> ListOp, mut n: usize) {
    while n > 0 {
        let fresh = step(0);
        if let Some(last) = ops.last_mut() {
            let same = std::mem::discriminant(last) == std::mem::discriminant(&fresh);
            if let (true, ListOp::Keep(m) | ListOp::Skip(m)) = (same, last) {
                let room = (u32::MAX - *m) as usize;
                let add = n.min(room);
                *m += add as u32;
                n -= add;
                if n == 0 {
                    return;
                }
            }
        }
        let add = n.min(u32::MAX as usize);
        ops.push(step(add as u32));
        n -= add;
    }
}

/// Chunk references a patch carries itself.
pub fn inserted(ops: &[ListOp]) -> usize {
    ops.iter()
        .map(|op| match op {
            ListOp::Insert(chunks) => chunks.len(),
            _ => 0,
        })
        .sum()
}

/// The base lists of one folder in one direction of a connection: the chunk
/// list of the last entry sent (or accepted) for each path, for entries of
/// [`PATCH_MIN_CHUNKS`] to [`MAX_TRACKED_CHUNKS`] chunks, at most
/// [`MAX_TRACKED_CHUNKS`] references in all, the lowest sequence evicted
/// first.
///
/// Both ends apply [`ChunkLists::record`] to the same entries in the same
/// order (the sender after it sends a batch, the receiver after it accepts
/// one), so both always hold the same bases.
#[derive(Debug, Clone, Default)]
pub struct ChunkLists {
    by_path: HashMap<RelPath, (u64, Vec<ChunkRef>)>,
    by_sequence: BTreeMap<u64, RelPath>,
    total: usize,
}

impl ChunkLists {
    /// The recorded base of `path`: its sequence and chunks.
    pub fn base(&self, path: &RelPath) -> Option<(u64, &[ChunkRef])> {
        self.by_path
            .get(path)
            .map(|(sequence, chunks)| (*sequence, chunks.as_slice()))
    }

    /// Chunk references held.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Records a batch's entries, in order: each replaces its path's base,
    /// or removes it when the entry cannot be one.
    pub fn record(&mut self, entries: &[FileEntry]) {
        for entry in entries {
            if let Some((sequence, chunks)) = self.by_path.remove(&entry.path) {
                self.by_sequence.remove(&sequence);
                self.total -= chunks.len();
            }
            let Some(chunks) = base_chunks(entry) else {
                continue;
            };
            self.total += chunks.len();
            self.by_sequence.insert(entry.sequence, entry.path.clone());
            self.by_path
                .insert(entry.path.clone(), (entry.sequence, chunks.to_vec()));
            while self.total > MAX_TRACKED_CHUNKS {
                let Some((_, oldest)) = self.by_sequence.pop_first() else {
                    break;
                };
                if let Some((_, chunks)) = self.by_path.remove(&oldest) {
                    self.total -= chunks.len();
                }
            }
        }
    }

    /// How `entry` travels: as a patch against its path's base when that
    /// carries at most half of its chunks, else whole (`None`).
    pub fn patch_for(&self, entry: &FileEntry) -> Option<(u64, Vec<ListOp>)> {
        let new = base_chunks(entry)?;
        let (sequence, base) = self.base(&entry.path)?;
        let ops = diff(base, new);
        (inserted(&ops) * 2 < new.len()).then_some((sequence, ops))
    }

    /// Rebuilds the chunk list of `entry` (sent with an empty one) from its
    /// path's base, which must have sequence `base_sequence`.
    pub fn rebuild(
        &self,
        entry: &mut FileEntry,
        base_sequence: u64,
        ops: &[ListOp],
    ) -> Result<(), PatchProblem> {
        let content = match (&entry.kind, entry.deleted, entry.content.as_mut()) {
            (FileKind::File, false, Some(content)) if content.chunks.is_empty() => content,
            _ => return Err(PatchProblem::NotPatchable),
        };
        let (recorded, base) = self.base(&entry.path).ok_or(PatchProblem::NoBase)?;
        if recorded != base_sequence {
            return Err(PatchProblem::WrongBase {
                named: base_sequence,
                recorded,
            });
        }
        content.chunks = apply(base, ops)?;
        Ok(())
    }
}

/// The chunks of `entry` if it can be a base: a live file whose content
/// lists [`PATCH_MIN_CHUNKS`] to [`MAX_TRACKED_CHUNKS`] chunks.
fn base_chunks(entry: &FileEntry) -> Option<&[ChunkRef]> {
    match (&entry.kind, entry.deleted, &entry.content) {
        (FileKind::File, false, Some(content))
            if (PATCH_MIN_CHUNKS..=MAX_TRACKED_CHUNKS).contains(&content.chunks.len()) =>
        {
            Some(&content.chunks)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use meshsync_core::entry::{Content, Timestamp};
    use meshsync_core::ids::Hash;
    use meshsync_core::version::VersionVector;
    use proptest::prelude::*;

    use super::*;

    fn chunk(n: u32) -> ChunkRef {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        ChunkRef {
            hash: Hash(bytes),
            len: 1000 + n,
        }
    }

    fn file(path: &str, sequence: u64, chunks: Vec<ChunkRef>) -> FileEntry {
        FileEntry {
            path: RelPath::new(path).unwrap(),
            kind: FileKind::File,
            size: chunks.iter().map(|c| u64::from(c.len)).sum(),
            mtime: Timestamp::default(),
            permissions: 0o644,
            symlink_target: None,
            content: Some(Content {
                hash: Hash([7; 32]),
                chunk_avg: 65536,
                chunks,
            }),
            version: VersionVector::default(),
            deleted: false,
            sequence,
        }
    }

    #[test]
    fn an_overwrite_and_an_insert_cost_only_their_chunks() {
        let base: Vec<ChunkRef> = (0..1000).map(chunk).collect();
        let mut new = base.clone();
        new[5] = chunk(5000); // an insert near the start rewrites one chunk
        new.splice(500..503, [chunk(6000), chunk(6001)]); // an overwrite
        let ops = diff(&base, &new);
        assert_eq!(inserted(&ops), 3);
        assert_eq!(
            ops,
            vec![
                ListOp::Keep(5),
                ListOp::Insert(vec![chunk(5000)]),
                ListOp::Skip(1),
                ListOp::Keep(494),
                ListOp::Insert(vec![chunk(6000), chunk(6001)]),
                ListOp::Skip(3),
                ListOp::Keep(497),
            ]
        );
        assert_eq!(apply(&base, &ops).unwrap(), new);
    }

    #[test]
    fn bad_steps_are_refused() {
        let base: Vec<ChunkRef> = (0..4).map(chunk).collect();
        assert_eq!(
            apply(&base, &[ListOp::Keep(5)]),
            Err(PatchProblem::PastEnd { len: 4 })
        );
        assert_eq!(
            apply(&base, &[ListOp::Skip(3), ListOp::Keep(2)]),
            Err(PatchProblem::PastEnd { len: 4 })
        );
        assert_eq!(
            apply(&base, &[ListOp::Keep(u32::MAX)]),
            Err(PatchProblem::PastEnd { len: 4 })
        );
        assert_eq!(
            apply(&base, &[ListOp::Keep(0)]),
            Err(PatchProblem::EmptyStep)
        );
        assert_eq!(
            apply(&base, &[ListOp::Insert(vec![])]),
            Err(PatchProblem::EmptyStep)
        );
        // Dropping the tail is allowed: the file got shorter.
        assert_eq!(apply(&base, &[ListOp::Keep(2)]).unwrap(), base[..2]);
    }

    #[test]
    fn bases_follow_the_last_entry_of_each_path_within_the_budget() {
        let mut lists = ChunkLists::default();
        let big = |n: u32| (0..n).map(chunk).collect::<Vec<_>>();
        lists.record(&[file("a", 1, big(100)), file("small", 2, big(10))]);
        assert_eq!(lists.base(&RelPath::new("a").unwrap()).unwrap().0, 1);
        assert!(lists.base(&RelPath::new("small").unwrap()).is_none());
        assert_eq!(lists.total(), 100);

        // A deletion removes the base.
        let mut gone = file("a", 3, big(100));
        gone.deleted = true;
        lists.record(&[gone]);
        assert!(lists.base(&RelPath::new("a").unwrap()).is_none());
        assert_eq!(lists.total(), 0);

        // Past the budget, the lowest sequence goes first.
        let half = (MAX_TRACKED_CHUNKS / 2) as u32;
        lists.record(&[file("x", 4, big(half)), file("y", 5, big(half))]);
        lists.record(&[file("z", 6, big(100))]);
        assert!(lists.base(&RelPath::new("x").unwrap()).is_none());
        assert!(lists.base(&RelPath::new("y").unwrap()).is_some());
        assert!(lists.base(&RelPath::new("z").unwrap()).is_some());
        assert_eq!(lists.total(), half as usize + 100);
    }

    #[test]
    fn a_patch_is_used_only_when_it_is_small() {
        let mut lists = ChunkLists::default();
        let base: Vec<ChunkRef> = (0..100).map(chunk).collect();
        lists.record(&[file("a", 1, base.clone())]);
        let mut edited = base.clone();
        edited[50] = chunk(900);
        let (sequence, ops) = lists.patch_for(&file("a", 2, edited.clone())).unwrap();
        assert_eq!(sequence, 1);

        let mut sent = file("a", 2, edited.clone());
        sent.content.as_mut().unwrap().chunks.clear();
        lists.rebuild(&mut sent, 1, &ops).unwrap();
        assert_eq!(sent, file("a", 2, edited));
        assert_eq!(
            lists.rebuild(&mut file("a", 2, Vec::new()), 7, &ops),
            Err(PatchProblem::WrongBase {
                named: 7,
                recorded: 1
            })
        );
        assert_eq!(
            lists.rebuild(&mut file("b", 2, Vec::new()), 1, &ops),
            Err(PatchProblem::NoBase)
        );
        assert_eq!(
            lists.rebuild(&mut file("a", 2, base.clone()), 1, &ops),
            Err(PatchProblem::NotPatchable)
        );

        let rewritten: Vec<ChunkRef> = (200..300).map(chunk).collect();
        assert!(lists.patch_for(&file("a", 2, rewritten)).is_none());
    }

    proptest! {
        #[test]
        fn any_edit_round_trips(
            base in proptest::collection::vec(0u32..300, 0..200),
            edits in proptest::collection::vec((0usize..220, 0usize..6, proptest::collection::vec(0u32..400, 0..6)), 0..8),
        ) {
            let base: Vec<ChunkRef> = base.into_iter().map(chunk).collect();
            let mut new = base.clone();
            for (at, remove, insert) in edits {
                let at = at.min(new.len());
                let end = (at + remove).min(new.len());
                new.splice(at..end, insert.into_iter().map(chunk));
            }
            let ops = diff(&base, &new);
            prop_assert_eq!(apply(&base, &ops).unwrap(), new.clone());
            prop_assert!(inserted(&ops) <= new.len());
            for op in &ops {
                match op {
                    ListOp::Keep(n) | ListOp::Skip(n) => prop_assert!(*n > 0),
                    ListOp::Insert(chunks) => prop_assert!(!chunks.is_empty()),
                }
            }
        }
    }
}
