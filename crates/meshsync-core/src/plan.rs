//! The planner: two indexes in, the actions that make them agree out.
//!
//! Sides are called A and B. In one-way sync (`meshsync sync SRC DST`, like
//! `rsync -a`) A is the source and B becomes a copy of it; extra files in B
//! are deleted only with `delete`. In two-way sync, each path goes the way its
//! version vectors say: the newer side wins; concurrent changes are a
//! conflict, resolved by [`crate::conflict`] without losing either copy; a
//! change beats a concurrent delete.
//!
//! Inputs are plain maps of [`FileEntry`] (tombstones included, ignored paths
//! already left out); the output is a [`Plan`]: actions in the order they
//! must run (conflict copies kept, room made for kind changes, directories
//! created shallow-first, files written, deletions deepest-first, directory
//! metadata last). The planner never looks at a disk: where a decision needs
//! a content hash the index does not have yet, [`content_needed`] names the
//! files to hash first; an unknown hash is never taken as "equal".

use std::collections::{BTreeMap, BTreeSet};

use crate::conflict;
use crate::entry::{CompareMode, FileEntry, FileKind};
use crate::ids::ShortId;
use crate::path::RelPath;
use crate::version::{Causality, VersionVector};

/// An index: every known path's entry.
pub type Index = BTreeMap<RelPath, FileEntry>;

/// Puts a batch of entries into an index (a later entry for the same path
/// replaces the earlier), keeping the map's nodes full.
///
/// Inserted one by one in path order, as batches arrive, a `BTreeMap`'s
/// nodes are left a little over half full (a full node splits 6 + 5), and
/// with entries of about 200 bytes that is a third of an index's memory.
/// A batch that is large next to the map (an eighth of it or more) is
/// merged instead, which builds full nodes in O(map + batch). A smaller
/// one is inserted, and each time the map has grown by an eighth since
/// (a step of [`growth_step`]) it is rebuilt with full nodes, also in
/// O(map): each entry is moved O(1) times on average, and at most about
/// an eighth of the map sits in half-full nodes. With 20,000 files this
/// saved about 2.5 MiB per index; with 100,000 arriving in batches of
/// 4,096, merging alone stopped at 32,768.
pub fn insert_batch<V>(
    map: &mut BTreeMap<RelPath, V>,
    batch: impl IntoIterator<Item = (RelPath, V)>,
) {
    let batch = batch.into_iter();
    if batch.size_hint().0.saturating_mul(8) < map.len() {
        let before = map.len();
        map.extend(batch);
        if growth_step(map.len()) > growth_step(before) {
            repack(map);
        }
        return;
    }
    // Built in bulk (sorted first; a later duplicate wins, as with inserts).
    let mut sorted: BTreeMap<RelPath, V> = batch.collect();
    if map.is_empty() {
        *map = sorted;
    } else {
        map.append(&mut sorted);
    }
}

/// Which eighth of a power of two `len` is in: the steps are 6–12 % of
/// the length apart.
fn growth_step(len: usize) -> usize {
    if len < 8 {
        return len;
    }
    let exponent = (usize::BITS - 1 - len.leading_zeros()) as usize;
    exponent * 8 + ((len >> (exponent - 3)) & 7)
}

/// Rebuilds `map` with full nodes: a merge with a non-empty map streams
/// both into new nodes, freeing the old ones as it goes (no copy of the
/// whole map at once).
fn repack<V>(map: &mut BTreeMap<RelPath, V>) {
    if let Some(last) = map.last_key_value().map(|(k, _)| k.clone()) {
        let mut tail = map.split_off(&last);
        map.append(&mut tail);
    }
}

/// What the planner reads from an index. Implemented for every path-sorted
/// map whose values hold a [`FileEntry`], so the store's own index (entries
/// plus local stat facts) is planned in place, without a copy.
pub trait EntryMap {
    /// The entry at `path`.
    fn entry(&self, path: &RelPath) -> Option<&FileEntry>;
    /// Every entry, in path order.
    fn entries(&self) -> Box<dyn Iterator<Item = &FileEntry> + '_>;
    /// Entries strictly below directory `dir`, in path order.
    fn entries_below<'s>(
        &'s self,
        dir: &'s RelPath,
    ) -> Box<dyn Iterator<Item = &'s FileEntry> + 's>;
}

impl AsRef<FileEntry> for FileEntry {
    fn as_ref(&self) -> &FileEntry {
        self
    }
}

impl<E: AsRef<FileEntry>> EntryMap for BTreeMap<RelPath, E> {
    fn entry(&self, path: &RelPath) -> Option<&FileEntry> {
        self.get(path).map(AsRef::as_ref)
    }

    fn entries(&self) -> Box<dyn Iterator<Item = &FileEntry> + '_> {
        Box::new(self.values().map(AsRef::as_ref))
    }

    fn entries_below<'s>(
        &'s self,
        dir: &'s RelPath,
    ) -> Box<dyn Iterator<Item = &'s FileEntry> + 's> {
        use std::ops::Bound;
        Box::new(
            self.range::<RelPath, _>((Bound::Excluded(dir), Bound::Unbounded))
                .take_while(move |(p, _)| p.as_str().starts_with(dir.as_str()))
                .filter(move |(p, _)| p.starts_with(dir))
                .map(|(_, e)| e.as_ref()),
        )
    }
}

/// One of the two trees being synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// The first tree (the source, in one-way sync).
    A,
    /// The second tree (the destination, in one-way sync).
    B,
}

impl Side {
    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// Which way changes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A to B only; with `delete`, what A does not have is removed from B.
    OneWay {
        /// Remove paths from B that A does not have (`--delete`).
        delete: bool,
    },
    /// Both ways, by version vectors.
    TwoWay,
}

/// Everything the planner decides from.
#[derive(Clone, Copy)]
pub struct PlanInput<'a> {
    /// Tree A's index.
    pub a: &'a dyn EntryMap,
    /// Tree B's index.
    pub b: &'a dyn EntryMap,
    /// Tree A's device (conflict copies it loses are named after it).
    pub a_device: ShortId,
    /// Tree B's device.
    pub b_device: ShortId,
    /// One-way or two-way.
    pub direction: Direction,
    /// How equal files are recognised.
    pub compare: CompareMode,
    /// The current time, for conflict-copy names.
    pub now_unix_secs: i64,
}

impl<'a> PlanInput<'a> {
    fn index(&self, side: Side) -> &'a dyn EntryMap {
        match side {
            Side::A => self.a,
            Side::B => self.b,
        }
    }

    fn device(&self, side: Side) -> ShortId {
        match side {
            Side::A => self.a_device,
            Side::B => self.b_device,
        }
    }
}

/// One step of a plan. Every action names what it expects to find on disk
/// (`replaces`, `expected`), so the executor can refuse when the disk moved
/// on since the scan instead of overwriting a change it never saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Rename the losing copy of a conflict on `side` to `to`, before the
    /// winner's copy takes its name. An executor that must fetch the
    /// winner's bytes does it right before the winner's rename, once they
    /// are all there and verified (the daemon, `daemon/pull.rs`): a winner
    /// that never comes then leaves the loser at its name, and a crash
    /// between the two renames leaves it at `to`, never nowhere.
    KeepConflictCopy {
        /// Where the losing copy is.
        side: Side,
        /// The losing copy as scanned.
        entry: Box<FileEntry>,
        /// Its new name.
        to: RelPath,
    },
    /// Create a directory on `side`.
    MakeDir {
        /// Where.
        side: Side,
        /// The directory as it should be recorded (permissions, version).
        entry: Box<FileEntry>,
    },
    /// Write `source`'s content (from side `from`) to the other side, reusing
    /// any chunk the target side already holds.
    Copy {
        /// The side the content comes from.
        from: Side,
        /// The file as scanned on `from` (path, size, mtime, chunks if known).
        source: Box<FileEntry>,
        /// What the target path holds now (`None`: nothing, or a conflict copy
        /// was moved away). The write is refused if the disk differs.
        replaces: Option<Box<FileEntry>>,
        /// The version both sides record afterwards.
        version: VersionVector,
    },
    /// Create (or replace with) a symlink on the other side of `from`.
    Symlink {
        /// The side the link comes from.
        from: Side,
        /// The link as scanned on `from`.
        source: Box<FileEntry>,
        /// What the target path holds now.
        replaces: Option<Box<FileEntry>>,
        /// The version both sides record afterwards.
        version: VersionVector,
    },
    /// Same content, other metadata: set permissions (and a file's mtime)
    /// on `side` to `entry`'s.
    SetMetadata {
        /// Where.
        side: Side,
        /// The entry to match.
        entry: Box<FileEntry>,
        /// What the path holds now.
        expected: Box<FileEntry>,
    },
    /// Delete a path on `side` (a directory only when empty).
    Delete {
        /// Where.
        side: Side,
        /// What the path holds now (refused if the disk differs).
        expected: Box<FileEntry>,
        /// The tombstone's version, recorded on both sides.
        version: VersionVector,
        /// Made to make room for another kind of entry (runs before copies).
        /// Executors record no tombstone for it: the write that follows
        /// records the path. If that write never happens (a crash, a dropped
        /// connection), the next scan finds the path gone and records a
        /// local delete, which a concurrent change still beats; a recorded
        /// tombstone with this version would instead claim the write that
        /// never landed, and let a third device's change win silently.
        making_room: bool,
    },
    /// Both sides already agree: record the merged version on both.
    RecordVersion {
        /// Which path.
        path: RelPath,
        /// The merged version.
        version: VersionVector,
    },
}

impl Action {
    /// The path the action concerns (the target path).
    pub fn path(&self) -> &RelPath {
        match self {
            Action::KeepConflictCopy { entry, .. } => &entry.path,
            Action::MakeDir { entry, .. } => &entry.path,
            Action::Copy { source, .. } | Action::Symlink { source, .. } => &source.path,
            Action::SetMetadata { entry, .. } => &entry.path,
            Action::Delete { expected, .. } => &expected.path,
            Action::RecordVersion { path, .. } => path,
        }
    }

    /// The side whose disk the action changes; `None` for
    /// [`Action::RecordVersion`], which changes no disk and records the
    /// version in both sides' indexes. (A copy or symlink changes the side
    /// opposite `from`; the source side only records the version.)
    pub fn side(&self) -> Option<Side> {
        match self {
            Action::KeepConflictCopy { side, .. }
            | Action::MakeDir { side, .. }
            | Action::SetMetadata { side, .. }
            | Action::Delete { side, .. } => Some(*side),
            Action::Copy { from, .. } | Action::Symlink { from, .. } => Some(from.other()),
            Action::RecordVersion { .. } => None,
        }
    }

    /// The order in which groups of actions run (lower first).
    pub fn phase(&self) -> u8 {
        match self {
            Action::KeepConflictCopy { .. } => 0,
            Action::Delete {
                making_room: true, ..
            } => 1,
            Action::MakeDir { .. } => 2,
            Action::Copy { .. } | Action::Symlink { .. } => 3,
            Action::SetMetadata { entry, .. } if entry.kind != FileKind::Directory => 3,
            Action::Delete { .. } => 4,
            Action::SetMetadata { .. } => 5,
            Action::RecordVersion { .. } => 6,
        }
    }

    /// Whether this action may run while file writes of `writes_phase` are
    /// still in flight. One of the writes' own phase touches another path
    /// (the plan gives a path at most one action per phase); one of a later
    /// phase waits for them (a delete may remove a file they take chunks
    /// from).
    pub fn may_run_among_writes(&self, writes_phase: u8) -> bool {
        self.phase() == writes_phase
    }
}

/// A path the planner would not touch, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Which path.
    pub path: RelPath,
    /// Why, in words a person can act on.
    pub reason: String,
}

/// What to do, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The actions, in the order they must run (see [`Action::phase`]).
    pub actions: Vec<Action>,
    /// Paths left alone, with reasons.
    pub refused: Vec<Refusal>,
}

impl Plan {
    /// Whether there is nothing to do on disk (version records aside).
    pub fn is_noop(&self) -> bool {
        self.actions
            .iter()
            .all(|a| matches!(a, Action::RecordVersion { .. }))
    }
}

/// The files whose content hash must be known before [`plan`] can tell a
/// real conflict from two identical copies: live files on both sides, same
/// size, concurrent versions (two-way) or checksum mode, and no hash yet.
pub fn content_needed(input: &PlanInput<'_>) -> Vec<(Side, RelPath)> {
    let mut out = Vec::new();
    for a in input.a.entries() {
        let path = &a.path;
        let Some(b) = input.b.entry(path) else {
            continue;
        };
        if !(a.is_live() && b.is_live() && a.kind == FileKind::File && b.kind == FileKind::File) {
            continue;
        }
        if a.size != b.size || (a.content.is_some() && b.content.is_some()) {
            continue;
        }
        let relevant = match input.direction {
            // Two-way never trusts size + mtime between different versions
            // (see `two_way_compare`): a concurrent pair, or a newer one with
            // the very same size and mtime, is judged by content.
            Direction::TwoWay => match a.version.compare(&b.version) {
                Causality::Equal => false,
                Causality::Concurrent => true,
                _ => a.mtime == b.mtime,
            },
            Direction::OneWay { .. } => input.compare == CompareMode::Checksum,
        };
        if relevant {
            for (side, e) in [(Side::A, a), (Side::B, b)] {
                if e.content.is_none() {
                    out.push((side, path.clone()));
                }
            }
        }
    }
    out
}

/// What one path needs, before it is spelled out as actions.
enum Decision {
    Nothing,
    Record(VersionVector),
    /// Make the other side equal to `from`'s entry (which may be a deletion).
    Apply {
        from: Side,
        version: VersionVector,
    },
    Conflict {
        winner: Side,
        version: VersionVector,
    },
}

/// Plans the actions that bring both trees in line (see the module docs).
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut out = Plan::default();
    // Both sides walked side by side in path order (`EntryMap::entries`):
    // every path once, with no lookups.
    let (mut walk_a, mut walk_b) = (input.a.entries().peekable(), input.b.entries().peekable());
    loop {
        let (a, b) = match (walk_a.peek(), walk_b.peek()) {
            (None, None) => break,
            (Some(_), None) => (walk_a.next(), None),
            (None, Some(_)) => (None, walk_b.next()),
            (Some(x), Some(y)) => match x.path.cmp(&y.path) {
                std::cmp::Ordering::Less => (walk_a.next(), None),
                std::cmp::Ordering::Greater => (None, walk_b.next()),
                std::cmp::Ordering::Equal => (walk_a.next(), walk_b.next()),
            },
        };
        let path = &a.or(b).expect("one side has the path").path;
        let decision = match input.direction {
            Direction::OneWay { delete } => decide_one_way(a, b, delete, input.compare),
            Direction::TwoWay => decide_two_way(a, b, input),
        };
        spell_out(path, decision, input, &mut out);
    }
    drop_deletes_done_to_make_room(&mut out.actions);
    keep_directories_with_surviving_children(input, &mut out.actions);
    out.actions.sort_by(|x, y| {
        let (px, py) = (x.phase(), y.phase());
        px.cmp(&py).then_with(|| {
            // Deletions run deepest first; everything else parents first.
            if matches!(px, 1 | 4 | 5) {
                y.path()
                    .depth()
                    .cmp(&x.path().depth())
                    .then_with(|| x.path().cmp(y.path()))
            } else {
                x.path().cmp(y.path())
            }
        })
    });
    out
}

/// A directory deleted on one side while a child below it survives there (a
/// change that beat a concurrent delete) cannot be deleted: it is kept, and
/// made again on the side that deleted it, so the child has a parent on both.
fn keep_directories_with_surviving_children(input: &PlanInput<'_>, actions: &mut Vec<Action>) {
    let deleted: BTreeSet<(Side, RelPath)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Delete { side, expected, .. } => Some((*side, expected.path.clone())),
            _ => None,
        })
        .collect();
    let written: BTreeSet<(Side, RelPath)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Copy { from, source, .. } | Action::Symlink { from, source, .. } => {
                Some((from.other(), source.path.clone()))
            }
            Action::MakeDir { side, entry } => Some((*side, entry.path.clone())),
            _ => None,
        })
        .collect();
    let survives_below = |side: Side, dir: &RelPath| {
        input
            .index(side)
            .entries_below(dir)
            .any(|e| e.is_live() && !deleted.contains(&(side, e.path.clone())))
            || written
                .range((side, dir.clone())..)
                .take_while(|(s, p)| *s == side && p.as_str().starts_with(dir.as_str()))
                .any(|(_, p)| p.starts_with(dir) && p != dir)
    };
    let mut resurrect = Vec::new();
    actions.retain(|a| match a {
        Action::Delete {
            side,
            expected,
            version,
            ..
        } if expected.kind == FileKind::Directory && survives_below(*side, &expected.path) => {
            let mut entry = (**expected).clone();
            entry.version = version.clone();
            if live(input.index(side.other()).entry(&entry.path)).is_none() {
                resurrect.push(Action::MakeDir {
                    side: side.other(),
                    entry: Box::new(entry),
                });
            } else {
                resurrect.push(Action::RecordVersion {
                    path: entry.path.clone(),
                    version: entry.version,
                });
            }
            false
        }
        _ => true,
    });
    actions.extend(resurrect);
}

/// A path deleted to make room for a kind change also gets its own ordinary
/// delete decision; keep only the early one.
fn drop_deletes_done_to_make_room(actions: &mut Vec<Action>) {
    let early: BTreeSet<(Side, RelPath)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Delete {
                side,
                expected,
                making_room: true,
                ..
            } => Some((*side, expected.path.clone())),
            _ => None,
        })
        .collect();
    if early.is_empty() {
        return;
    }
    actions.retain(|a| match a {
        Action::Delete {
            side,
            expected,
            making_room: false,
            ..
        } => !early.contains(&(*side, expected.path.clone())),
        _ => true,
    });
}

fn version_of(e: Option<&FileEntry>) -> VersionVector {
    e.map(|e| e.version.clone()).unwrap_or_default()
}

fn live(e: Option<&FileEntry>) -> Option<&FileEntry> {
    e.filter(|e| e.is_live())
}

fn decide_one_way(
    a: Option<&FileEntry>,
    b: Option<&FileEntry>,
    delete: bool,
    compare: CompareMode,
) -> Decision {
    let merged = version_of(a).merge(&version_of(b));
    match (live(a), live(b)) {
        (Some(a), Some(b)) if a.same_content(b, compare) == Some(true) => {
            if a.metadata_differs(b) {
                Decision::Apply {
                    from: Side::A,
                    version: merged,
                }
            } else if a.version != b.version {
                Decision::Record(merged)
            } else {
                Decision::Nothing
            }
        }
        (Some(_), _) => Decision::Apply {
            from: Side::A,
            version: merged,
        },
        (None, Some(_)) if delete => Decision::Apply {
            from: Side::A,
            version: merged,
        },
        _ => Decision::Nothing,
    }
}

/// Two copies with different versions are equal only by content hash: two
/// concurrent edits can leave the same size and mtime (a coarse clock, a tool
/// that keeps mtimes), and taking them as equal would lose one. An unknown
/// hash counts as "different" (a conflict copy, never a loss).
const TWO_WAY_COMPARE: CompareMode = CompareMode::Checksum;

fn decide_two_way(a: Option<&FileEntry>, b: Option<&FileEntry>, input: &PlanInput<'_>) -> Decision {
    let (va, vb) = (version_of(a), version_of(b));
    let merged = va.merge(&vb);
    let causality = va.compare(&vb);
    let compare = if causality == Causality::Equal {
        input.compare
    } else {
        TWO_WAY_COMPARE
    };
    match (live(a), live(b)) {
        // A tombstone against a path the other side never had: nothing to do.
        (None, None) if a.is_none() || b.is_none() => Decision::Nothing,
        (None, None) => {
            if causality == Causality::Equal {
                Decision::Nothing
            } else {
                Decision::Record(merged)
            }
        }
        (Some(x), Some(y)) if x.same_content(y, compare) == Some(true) => {
            if !x.metadata_differs(y) {
                return if causality == Causality::Equal {
                    Decision::Nothing
                } else {
                    Decision::Record(merged)
                };
            }
            let from = match causality {
                Causality::Newer => Side::A,
                Causality::Older => Side::B,
                _ => winner(x, y, input),
            };
            Decision::Apply {
                from,
                version: merged,
            }
        }
        (la, lb) => match causality {
            Causality::Newer => Decision::Apply {
                from: Side::A,
                version: merged,
            },
            Causality::Older => Decision::Apply {
                from: Side::B,
                version: merged,
            },
            Causality::Equal if la.is_some() != lb.is_some() => {
                // Same history yet one side is gone: the index is behind the
                // disk. Keep what exists rather than delete it.
                let from = if la.is_some() { Side::A } else { Side::B };
                Decision::Apply {
                    from,
                    version: merged,
                }
            }
            Causality::Equal | Causality::Concurrent => match (la, lb) {
                // A change beats a concurrent delete: the data comes back.
                (Some(_), None) => Decision::Apply {
                    from: Side::A,
                    version: merged,
                },
                (None, Some(_)) => Decision::Apply {
                    from: Side::B,
                    version: merged,
                },
                (Some(x), Some(y)) => Decision::Conflict {
                    winner: winner(x, y, input),
                    version: merged,
                },
                (None, None) => unreachable!("handled above"),
            },
        },
    }
}

/// Which side's copy of a concurrently changed path wins: a directory beats
/// anything else (it has children); otherwise the conflict rule.
fn winner(a: &FileEntry, b: &FileEntry, input: &PlanInput<'_>) -> Side {
    match (a.kind == FileKind::Directory, b.kind == FileKind::Directory) {
        (true, false) => Side::A,
        (false, true) => Side::B,
        _ => {
            let device = |e: &FileEntry, own: ShortId| last_changer(&e.version).unwrap_or(own);
            if conflict::compare_winners(a, device(a, input.a_device), b, device(b, input.b_device))
                .is_ge()
            {
                Side::A
            } else {
                Side::B
            }
        }
    }
}

/// The device with the largest counter: the one that made the latest change.
pub(crate) fn last_changer(v: &VersionVector) -> Option<ShortId> {
    v.counters()
        .iter()
        .max_by_key(|(d, c)| (*c, *d))
        .map(|(d, _)| *d)
}

fn spell_out(path: &RelPath, decision: Decision, input: &PlanInput<'_>, out: &mut Plan) {
    match decision {
        Decision::Nothing => {}
        Decision::Record(version) => out.actions.push(Action::RecordVersion {
            path: path.clone(),
            version,
        }),
        Decision::Apply { from, version } => apply(path, from, version, input, out),
        Decision::Conflict { winner, version } => {
            let loser = winner.other();
            let loser_entry = input
                .index(loser)
                .entry(path)
                .expect("conflicts have both sides")
                .clone();
            let loser_device = last_changer(&loser_entry.version).unwrap_or(input.device(loser));
            // The name tells this losing version from any other (see
            // `conflict`): a copy keeps the loser's version vector, so two
            // different losers under one name, on devices that never saw
            // each other's copy, would later be taken for an edit of each
            // other. The first free name: a live entry or a tombstone at a
            // candidate (the same loser kept in the same second) makes us
            // try the next.
            let tag = conflict::loser_tag(&loser_entry);
            let taken = |p: &RelPath| input.a.entry(p).is_some() || input.b.entry(p).is_some();
            let to = (1..=99)
                .map(|n| {
                    conflict::numbered_conflict_copy_path(
                        path,
                        input.now_unix_secs,
                        loser_device,
                        tag,
                        n,
                    )
                })
                .find(|candidate| candidate.as_ref().map_or(true, |p| !taken(p)));
            let to = match to {
                Some(Ok(p)) => p,
                Some(Err(e)) => {
                    out.refused.push(Refusal {
                        path: path.clone(),
                        reason: format!("conflict copy name is not valid: {e}"),
                    });
                    return;
                }
                None => {
                    out.refused.push(Refusal {
                        path: path.clone(),
                        reason: "conflict, and 99 conflict copies exist already; left both copies as they are"
                            .into(),
                    });
                    return;
                }
            };
            // Keep the loser under its conflict name, send it to the winner's
            // side too, then give the loser's side the winner's copy.
            out.actions.push(Action::KeepConflictCopy {
                side: loser,
                entry: Box::new(loser_entry.clone()),
                to: to.clone(),
            });
            let mut renamed = loser_entry.clone();
            renamed.path = to;
            if renamed.kind == FileKind::File {
                out.actions.push(Action::Copy {
                    from: loser,
                    source: Box::new(renamed.clone()),
                    replaces: None,
                    version: renamed.version.clone(),
                });
            } else if renamed.kind == FileKind::Symlink {
                out.actions.push(Action::Symlink {
                    from: loser,
                    source: Box::new(renamed.clone()),
                    replaces: None,
                    version: renamed.version.clone(),
                });
            }
            let winner_entry = input
                .index(winner)
                .entry(path)
                .expect("conflicts have both sides")
                .clone();
            push_write(winner, winner_entry, None, version, out);
        }
    }
}

/// Makes `from`'s side of `path` appear on the other side.
fn apply(
    path: &RelPath,
    from: Side,
    version: VersionVector,
    input: &PlanInput<'_>,
    out: &mut Plan,
) {
    let to = from.other();
    let src = live(input.index(from).entry(path));
    let tgt = live(input.index(to).entry(path));
    let deletes_allowed = !matches!(input.direction, Direction::OneWay { delete: false });
    match (src, tgt) {
        (None, None) => out.actions.push(Action::RecordVersion {
            path: path.clone(),
            version,
        }),
        (None, Some(t)) => out.actions.push(Action::Delete {
            side: to,
            expected: Box::new(t.clone()),
            version,
            making_room: false,
        }),
        (Some(s), Some(t))
            if s.kind == t.kind && s.same_content(t, input.compare) == Some(true) =>
        {
            let mut entry = s.clone();
            entry.version = version;
            out.actions.push(Action::SetMetadata {
                side: to,
                entry: Box::new(entry),
                expected: Box::new(t.clone()),
            });
        }
        (Some(s), Some(t)) if s.kind == t.kind && s.kind != FileKind::Directory => {
            push_write(from, s.clone(), Some(t.clone()), version, out);
        }
        (Some(s), Some(t)) if s.kind == t.kind => {
            // Two directories: only permissions can differ.
            let mut entry = s.clone();
            entry.version = version;
            out.actions.push(Action::SetMetadata {
                side: to,
                entry: Box::new(entry),
                expected: Box::new(t.clone()),
            });
        }
        (Some(s), Some(t)) => {
            // A kind change: remove what is there first (a directory with its
            // subtree, deepest first), then write the new kind.
            let subtree: Vec<&FileEntry> = if t.kind == FileKind::Directory {
                input
                    .index(to)
                    .entries_below(path)
                    .filter(|e| e.is_live())
                    .collect()
            } else {
                Vec::new()
            };
            if !subtree.is_empty() && !deletes_allowed {
                out.refused.push(Refusal {
                    path: path.clone(),
                    reason: "is a non-empty directory here and a file on the source; \
                             use --delete to replace it"
                        .into(),
                });
                return;
            }
            // In two-way sync, a child that `from` never saw deleted (created
            // or changed concurrently under the directory) must not be
            // deleted to make room: that is a conflict, and the directory wins.
            // Only a child the other side knows it deleted (a tombstone that
            // dominates the child) may go to make room. A child it does not
            // have, or has live (the global view folds in this side's own
            // children), was made or changed without it: a conflict.
            let unseen_child = input.direction == Direction::TwoWay
                && subtree.iter().any(|child| {
                    let theirs = input.index(from).entry(&child.path);
                    !theirs.is_some_and(|e| {
                        e.deleted
                            && matches!(
                                e.version.compare(&child.version),
                                Causality::Newer | Causality::Equal
                            )
                    })
                });
            if unseen_child {
                spell_out(
                    path,
                    Decision::Conflict {
                        winner: to,
                        version,
                    },
                    input,
                    out,
                );
                return;
            }
            for child in subtree {
                // Each child's tombstone dominates what both sides knew of it.
                let known = input.index(from).entry(&child.path).map(|e| &e.version);
                let child_version =
                    known.map_or(child.version.clone(), |v| v.merge(&child.version));
                out.actions.push(Action::Delete {
                    side: to,
                    expected: Box::new(child.clone()),
                    version: child_version,
                    making_room: true,
                });
            }
            out.actions.push(Action::Delete {
                side: to,
                expected: Box::new(t.clone()),
                version: version.clone(),
                making_room: true,
            });
            push_write(from, s.clone(), None, version, out);
        }
        (Some(s), None) => push_write(from, s.clone(), None, version, out),
    }
}

/// The action that writes `entry` (from `from`) to the other side.
fn push_write(
    from: Side,
    entry: FileEntry,
    replaces: Option<FileEntry>,
    version: VersionVector,
    out: &mut Plan,
) {
    match entry.kind {
        FileKind::Directory => {
            let mut e = entry;
            e.version = version;
            out.actions.push(Action::MakeDir {
                side: from.other(),
                entry: Box::new(e),
            });
        }
        FileKind::File => out.actions.push(Action::Copy {
            from,
            source: Box::new(entry),
            replaces: replaces.map(Box::new),
            version,
        }),
        FileKind::Symlink => out.actions.push(Action::Symlink {
            from,
            source: Box::new(entry),
            replaces: replaces.map(Box::new),
            version,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Content, Timestamp};
    use crate::ids::Hash;

    #[test]
    fn growth_steps_come_every_eighth_of_the_length() {
        let mut last = 0;
        let mut at = 8usize;
        for len in 8..100_000usize {
            let step = growth_step(len);
            assert!(step >= last, "steps never go back ({len})");
            if step > last {
                assert!(len - at <= at / 8 + 1, "{at} -> {len}");
                at = len;
            }
            last = step;
        }
    }

    #[test]
    fn a_batch_lands_as_if_inserted_one_by_one() {
        // Batches small and large against the map, unsorted, with repeats
        // (inside a batch and of earlier batches): the later value wins.
        let mut next = crate::testing::seeded(0x2545_f491_4f6c_dd1du64);
        let (mut packed, mut plain) = (BTreeMap::new(), BTreeMap::new());
        for round in 0..60u64 {
            let size = if round % 7 == 0 { 500 } else { next(40) };
            let batch: Vec<(RelPath, u64)> = (0..size)
                .map(|i| {
                    (
                        RelPath::new(&format!("d/f{}", next(3_000))).unwrap(),
                        round * 1_000 + i,
                    )
                })
                .collect();
            plain.extend(batch.iter().cloned());
            insert_batch(&mut packed, batch);
            assert_eq!(packed, plain, "round {round}");
        }
    }

    const DA: ShortId = ShortId(1);
    const DB: ShortId = ShortId(2);

    fn file(path: &str, body: &str, secs: i64, version: &[(ShortId, u32)]) -> FileEntry {
        let mut v = VersionVector::new();
        for &(d, n) in version {
            for _ in 0..n {
                v.bump(d);
            }
        }
        FileEntry {
            path: RelPath::new(path).unwrap(),
            kind: FileKind::File,
            size: body.len() as u64,
            mtime: Timestamp { secs, nanos: 0 },
            permissions: 0o644,
            symlink_target: None,
            content: Some(Content {
                hash: Hash::of(body.as_bytes()),
                chunk_avg: 65536,
                chunks: vec![],
            }),
            version: v,
            deleted: false,
            sequence: 0,
        }
    }

    fn dir(path: &str, version: &[(ShortId, u32)]) -> FileEntry {
        let mut e = file(path, "", 0, version);
        e.kind = FileKind::Directory;
        e.content = None;
        e
    }

    fn tombstone(mut e: FileEntry, by: ShortId) -> FileEntry {
        e.deleted = true;
        e.version.bump(by);
        e
    }

    #[test]
    fn only_actions_of_the_writes_phase_run_among_them() {
        let f = file("f", "body", 5, &[(ShortId(1), 1)]);
        let copy = Action::Copy {
            from: Side::B,
            source: Box::new(f.clone()),
            replaces: None,
            version: f.version.clone(),
        };
        let mut touched = f.clone();
        touched.mtime.secs = 6;
        let metadata = Action::SetMetadata {
            side: Side::A,
            entry: Box::new(touched),
            expected: Box::new(f.clone()),
        };
        let delete = Action::Delete {
            side: Side::A,
            expected: Box::new(f.clone()),
            version: f.version.clone(),
            making_room: false,
        };
        let writes = copy.phase();
        assert!(metadata.may_run_among_writes(writes));
        assert!(!delete.may_run_among_writes(writes));
    }

    fn index(entries: Vec<FileEntry>) -> Index {
        entries.into_iter().map(|e| (e.path.clone(), e)).collect()
    }

    fn run(a: &Index, b: &Index, direction: Direction) -> Plan {
        plan(&PlanInput {
            a,
            b,
            a_device: DA,
            b_device: DB,
            direction,
            compare: CompareMode::Metadata,
            now_unix_secs: 0,
        })
    }

    const ONE_WAY: Direction = Direction::OneWay { delete: false };
    const MIRROR: Direction = Direction::OneWay { delete: true };

    #[test]
    fn one_way_copies_new_and_changed_files_parents_first() {
        let a = index(vec![
            dir("d", &[(DA, 1)]),
            file("d/x", "new", 5, &[(DA, 1)]),
        ]);
        let p = run(&a, &Index::new(), ONE_WAY);
        assert!(
            matches!(&p.actions[0], Action::MakeDir { side: Side::B, entry } if entry.path.as_str() == "d")
        );
        assert!(matches!(
            &p.actions[1],
            Action::Copy {
                from: Side::A,
                replaces: None,
                ..
            }
        ));
    }

    #[test]
    fn one_way_leaves_extras_unless_delete() {
        let a = Index::new();
        let b = index(vec![file("extra", "x", 1, &[(DB, 1)])]);
        assert!(run(&a, &b, ONE_WAY).actions.is_empty());
        let p = run(&a, &b, MIRROR);
        assert!(matches!(
            &p.actions[..],
            [Action::Delete { side: Side::B, .. }]
        ));
    }

    #[test]
    fn equal_files_with_unrelated_histories_only_record_versions() {
        let a = index(vec![file("f", "same", 7, &[(DA, 1)])]);
        let b = index(vec![file("f", "same", 7, &[(DB, 3)])]);
        for dirn in [ONE_WAY, Direction::TwoWay] {
            let p = run(&a, &b, dirn);
            assert!(p.is_noop(), "{dirn:?}: {p:?}");
            assert!(matches!(&p.actions[..], [Action::RecordVersion { .. }]));
        }
    }

    #[test]
    fn metadata_only_change_sets_metadata() {
        let a = index(vec![file("f", "same", 9, &[(DA, 2)])]);
        let mut bf = file("f", "same", 7, &[(DA, 1)]);
        bf.content = a[&RelPath::new("f").unwrap()].content.clone();
        let b = index(vec![bf]);
        let p = run(&a, &b, Direction::TwoWay);
        assert!(
            matches!(&p.actions[..], [Action::SetMetadata { side: Side::B, .. }]),
            "{p:?}"
        );
    }

    #[test]
    fn two_way_newer_side_wins_each_way() {
        let base = &[(DA, 1)];
        let a = index(vec![
            file("f", "v2", 5, &[(DA, 1), (DB, 1)]),
            file("g", "g1", 1, base),
        ]);
        let b = index(vec![
            file("f", "v1", 1, base),
            file("g", "g2", 6, &[(DA, 1), (DB, 1)]),
        ]);
        let p = run(&a, &b, Direction::TwoWay);
        let froms: Vec<(String, Side)> = p
            .actions
            .iter()
            .filter_map(|x| match x {
                Action::Copy { from, source, .. } => Some((source.path.to_string(), *from)),
                _ => None,
            })
            .collect();
        assert_eq!(froms, vec![("f".into(), Side::A), ("g".into(), Side::B)]);
    }

    #[test]
    fn concurrent_edits_keep_both_copies() {
        let a = index(vec![file("doc.txt", "mine", 10, &[(DA, 2)])]);
        let b = index(vec![file("doc.txt", "theirs!", 20, &[(DA, 1), (DB, 1)])]);
        let p = run(&a, &b, Direction::TwoWay);
        // B's copy is newer: A's is kept as a conflict copy, sent to B, and
        // A gets B's copy under the original name.
        match &p.actions[..] {
            [
                Action::KeepConflictCopy {
                    side: Side::A, to, ..
                },
                Action::Copy {
                    from: Side::A,
                    source: c,
                    ..
                },
                Action::Copy {
                    from: Side::B,
                    source: w,
                    ..
                },
            ] => {
                assert!(
                    to.as_str()
                        .starts_with("doc.sync-conflict-19700101-000000-")
                );
                assert!(to.as_str().ends_with(".txt"));
                assert_eq!(&c.path, to);
                assert_eq!(w.path.as_str(), "doc.txt");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn change_beats_concurrent_delete() {
        let orig = file("f", "v1", 1, &[(DA, 1)]);
        let a = index(vec![tombstone(orig.clone(), DA)]);
        let b = index(vec![file("f", "v2", 2, &[(DA, 1), (DB, 1)])]);
        let p = run(&a, &b, Direction::TwoWay);
        assert!(
            matches!(&p.actions[..], [Action::Copy { from: Side::B, .. }]),
            "{p:?}"
        );
    }

    #[test]
    fn newer_delete_propagates_in_two_way() {
        let orig = file("f", "v1", 1, &[(DA, 1)]);
        let a = index(vec![tombstone(orig.clone(), DA)]);
        let b = index(vec![orig]);
        let p = run(&a, &b, Direction::TwoWay);
        assert!(matches!(
            &p.actions[..],
            [Action::Delete {
                side: Side::B,
                making_room: false,
                ..
            }]
        ));
    }

    #[test]
    fn directory_replaced_by_file_deletes_subtree_first() {
        let a = index(vec![file("x", "now a file", 3, &[(DA, 5)])]);
        let b = index(vec![
            dir("x", &[(DA, 1)]),
            file("x/y", "child", 1, &[(DA, 1)]),
        ]);
        assert_eq!(
            run(&a, &b, ONE_WAY).refused.len(),
            1,
            "refused without --delete"
        );
        let p = run(&a, &b, MIRROR);
        let kinds: Vec<(u8, &str)> = p
            .actions
            .iter()
            .map(|x| (x.phase(), x.path().as_str()))
            .collect();
        assert_eq!(kinds, vec![(1, "x/y"), (1, "x"), (3, "x")], "{p:?}");
    }

    #[test]
    fn deletes_run_deepest_first_after_copies() {
        let a = index(vec![file("new", "n", 1, &[(DA, 1)])]);
        let b = index(vec![dir("d", &[(DB, 1)]), file("d/e", "e", 1, &[(DB, 1)])]);
        let p = run(&a, &b, MIRROR);
        let order: Vec<&str> = p.actions.iter().map(|x| x.path().as_str()).collect();
        assert_eq!(order, vec!["new", "d/e", "d"]);
    }

    #[test]
    fn content_needed_only_for_undecidable_pairs() {
        let mut x = file("f", "same", 1, &[(DA, 1)]);
        let mut y = file("f", "same", 2, &[(DB, 1)]);
        x.content = None;
        y.content = None;
        let (a, b) = (index(vec![x]), index(vec![y]));
        let input = PlanInput {
            a: &a,
            b: &b,
            a_device: DA,
            b_device: DB,
            direction: Direction::TwoWay,
            compare: CompareMode::Metadata,
            now_unix_secs: 0,
        };
        assert_eq!(content_needed(&input).len(), 2);
        let one_way = PlanInput {
            direction: ONE_WAY,
            ..input
        };
        assert!(content_needed(&one_way).is_empty());
    }

    #[test]
    fn unknown_content_is_never_taken_as_equal() {
        let mut x = file("f", "aaaa", 1, &[(DA, 1)]);
        let mut y = file("f", "bbbb", 2, &[(DB, 1)]);
        x.content = None;
        y.content = None;
        let p = run(&index(vec![x]), &index(vec![y]), Direction::TwoWay);
        assert!(matches!(p.actions[0], Action::KeepConflictCopy { .. }));
    }
}
