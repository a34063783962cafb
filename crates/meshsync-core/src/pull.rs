//! A device's pull: what it does to its own folder to come in line with the
//! swarm, decided from its own index and the global view.
//!
//! The daemon never writes to a peer: every device changes only its own
//! disk, and every peer, running this same rule against its own view, does
//! its part. [`plan_pull`] runs the two-way planner ([`crate::plan`]) with
//! this device as side A and the global view ([`crate::global`], folded from
//! this device's index and every authoritative peer's) as side B, and keeps
//! the actions on side A (see [`Action::side`]) and the version records.
//!
//! One decision is its own: a conflict that this device's copy *wins*
//! against the global entry. The global entry is the winner among the
//! newest entries folded in, this device's copy included, so this device
//! wins only with a copy that is no longer among the newest (another
//! device superseded it, and that copy lost to the global entry) yet beats
//! the global entry: say a directory a peer has since deleted, against a
//! file a third device made meanwhile. The pairwise plan would
//! rename the loser on side B and write the winner there, which only the
//! loser's devices can do. Here, in two rounds:
//!
//! 1. the loser's copy is fetched under its conflict-copy name, an ordinary
//!    write on this side, and no version is recorded for the path;
//! 2. once that copy is in this device's index, the path records a version
//!    newer than both copies, bumped at this device (it changed the path:
//!    it chose), and the copy is not fetched again. The loser's devices then
//!    see a newer version and take it, and the conflict is not seen again.
//!
//! Recording the dominating version first would let the loser's devices
//! overwrite their copy as outdated: if the fetch of the loser's copy
//! failed (a peer gone, a crash), no conflict copy would be left anywhere.
//!
//! Pure: indexes in, actions out; the clock is passed in. It must never plan
//! a change to another device's disk, nor record a version that dominates a
//! copy nobody keeps.

use std::collections::{BTreeMap, BTreeSet};

use crate::conflict;
use crate::entry::{CompareMode, Content, FileEntry, FileKind};
use crate::ids::ShortId;
use crate::path::RelPath;
use crate::plan::{self, Action, Direction, EntryMap, Plan, PlanInput, Side};
use crate::version::Causality;

/// Everything a pull decides from.
#[derive(Clone, Copy)]
pub struct PullInput<'a> {
    /// This device's index (as scanned and recorded).
    pub local: &'a dyn EntryMap,
    /// The global view, folded from `local` and every authoritative peer's
    /// index ([`crate::global::global_view`], `local` first).
    pub global: &'a dyn EntryMap,
    /// This device's version-vector key.
    pub device: ShortId,
    /// This device's version clock (never below a counter it issued
    /// before): a version it records for a conflict it won is bumped to at
    /// least this.
    pub clock: u64,
    /// The current time, for conflict-copy names.
    pub now_unix_secs: i64,
}

/// Plans this device's side of bringing its folder in line with the global
/// view (see the module docs). The actions change only this device's disk
/// and index, in the order they must run; refusals are the planner's.
pub fn plan_pull(input: &PullInput<'_>) -> Plan {
    let pairwise = plan::plan(&PlanInput {
        a: input.local,
        b: input.global,
        a_device: input.device,
        // The global view has no device of its own: its entries' versions
        // name who changed them, and the winner rule goes by those.
        b_device: ShortId(0),
        direction: Direction::TwoWay,
        compare: CompareMode::Metadata,
        now_unix_secs: input.now_unix_secs,
    });
    // Conflicts won here: the path, and the loser's copy kept on side B.
    let won: BTreeMap<&RelPath, (&FileEntry, &RelPath)> = pairwise
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::KeepConflictCopy {
                side: Side::B,
                entry,
                to,
            } => Some((&entry.path, (&**entry, to))),
            _ => None,
        })
        .collect();
    let loser_kept: BTreeSet<&RelPath> = won
        .iter()
        .filter(|(_, (loser, _))| holds_conflict_copy(input.local, loser))
        .map(|(path, _)| *path)
        .collect();
    // The names the plan would fetch an already kept loser's copy under.
    let fetched_already: BTreeSet<&RelPath> = won
        .iter()
        .filter(|(path, _)| loser_kept.contains(*path))
        .map(|(_, (_, to))| *to)
        .collect();
    let mut actions: Vec<Action> = Vec::new();
    for action in &pairwise.actions {
        match action.side() {
            None => actions.push(action.clone()),
            Some(Side::A) => {
                let refetch = matches!(
                    action,
                    Action::Copy { from: Side::B, .. } | Action::Symlink { from: Side::B, .. }
                ) && fetched_already.contains(action.path());
                if !refetch {
                    actions.push(action.clone());
                }
            }
            Some(Side::B) => {
                // The winner's write to the loser's side becomes, once the
                // loser's copy is kept here, a version newer than both.
                let version = match action {
                    Action::Copy { version, .. } | Action::Symlink { version, .. } => version,
                    Action::MakeDir { entry, .. } => &entry.version,
                    _ => continue,
                };
                if loser_kept.contains(action.path()) {
                    let mut version = version.clone();
                    version.bump_at(input.device, input.clock);
                    actions.push(Action::RecordVersion {
                        path: action.path().clone(),
                        version,
                    });
                }
            }
        }
    }
    // Stable: the planner's order within each phase stays.
    actions.sort_by_key(Action::phase);
    Plan {
        actions,
        refused: pairwise.refused,
    }
}

/// Whether `local` holds `loser` as a conflict copy of its path: a live
/// sibling conflict copy with the same content and a version that has seen
/// the loser's.
fn holds_conflict_copy(local: &dyn EntryMap, loser: &FileEntry) -> bool {
    let Some(dir) = loser.path.parent() else {
        return local
            .entries()
            .filter(|e| e.path.parent().is_none())
            .any(|e| is_kept_copy(e, loser));
    };
    local
        .entries_below(&dir)
        .filter(|e| e.path.parent().as_ref() == Some(&dir))
        .any(|e| is_kept_copy(e, loser))
}

fn is_kept_copy(e: &FileEntry, loser: &FileEntry) -> bool {
    let same_content = match loser.kind {
        FileKind::File => matches!(
            (&e.content, &loser.content),
            (Some(x), Some(y)) if x.hash == y.hash
        ),
        FileKind::Symlink => e.symlink_target == loser.symlink_target,
        FileKind::Directory => false,
    };
    e.is_live()
        && e.kind == loser.kind
        && same_content
        && conflict::is_conflict_copy_of(&e.path, &loser.path)
        && matches!(
            e.version.compare(&loser.version),
            Causality::Newer | Causality::Equal
        )
}

/// Where a device starts going through work that other devices of the
/// swarm are doing at the same time, so that they do not all fetch the
/// same files (or chunks) first: each starts at its own share of the
/// bytes and wraps around. What one fetched first, another fetches later,
/// from it, once announced, instead of from the device they all started
/// from (BitTorrent gets the same spread from rarest-first and random
/// picks; a rotation keeps each device's reads and the source's reads
/// sequential).
///
/// The place is the device's rank among the devices it knows share the
/// folder, so devices that know the same set are evenly spread. Places
/// taken from the ids alone (uniform, whatever a device knows) were tried
/// and measured worse with four peers: random places cluster (three of four
/// peers within an eighth of the data), and a peer close behind another
/// fetches what that one has not announced yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stagger {
    slot: usize,
    slots: usize,
}

impl Stagger {
    /// Start at the beginning.
    pub const NONE: Stagger = Stagger { slot: 0, slots: 1 };

    /// The place of `device` among `others` (the devices known to share the
    /// folder; itself among them or not): its rank by short id, so every
    /// device that knows the same set takes a different place.
    pub fn among(device: ShortId, others: impl IntoIterator<Item = ShortId>) -> Stagger {
        let mut all: Vec<ShortId> = others.into_iter().chain([device]).collect();
        all.sort_unstable();
        all.dedup();
        Stagger {
            slot: all.iter().position(|d| *d == device).unwrap_or(0),
            slots: all.len(),
        }
    }

    /// Where to start in items of these sizes: the item that holds the
    /// byte at this device's share of the total (`slot / slots`).
    pub fn start(&self, sizes: impl IntoIterator<Item = u64>) -> usize {
        if self.slot == 0 {
            return 0;
        }
        let sizes: Vec<u64> = sizes.into_iter().collect();
        let total: u128 = sizes.iter().map(|s| u128::from(*s)).sum();
        let target = total * self.slot as u128 / self.slots as u128;
        let mut end = 0u128;
        for (i, s) in sizes.iter().enumerate() {
            end += u128::from(*s);
            if end > target {
                return i;
            }
        }
        0
    }
}

/// Rotates the writes of a pull (`actions` in plan order: files, symlinks
/// and file metadata, which do not depend on each other) so that this
/// device starts at its own place ([`Stagger`]); every other phase keeps
/// its order.
pub fn stagger_writes(actions: &mut [Action], stagger: Stagger) {
    let Some(first) = actions.iter().position(|a| a.phase() == WRITE_PHASE) else {
        return;
    };
    let len = actions[first..]
        .iter()
        .take_while(|a| a.phase() == WRITE_PHASE)
        .count();
    let writes = &mut actions[first..first + len];
    let start = stagger.start(writes.iter().map(|a| match a {
        Action::Copy { source, .. } => source.size,
        _ => 0,
    }));
    writes.rotate_left(start);
}

/// The phase of [`Action::Copy`] (see [`Action::phase`]).
const WRITE_PHASE: u8 = 3;

/// Whether a peer's index update can change this device's pull. It cannot
/// when every entry says that the peer now holds exactly what this device
/// holds (the same version and state of the path) and replaces nothing of
/// the peer's that was not older than that: the global view stays the same
/// (an entry older than this device's never wins it, and an equal one
/// merges into this device's). Peers catching up with this device (a
/// swarm's source) send little else, batch after batch; each would
/// otherwise cost a plan of the whole folder.
pub fn may_change_pull(
    local: &dyn EntryMap,
    peer_before: &dyn EntryMap,
    update: &[FileEntry],
) -> bool {
    update.iter().any(|e| {
        let Some(mine) = local.entry(&e.path) else {
            return true;
        };
        let same = mine.version.compare(&e.version) == Causality::Equal
            && mine.deleted == e.deleted
            && mine.kind == e.kind
            && mine.content.as_ref().map(|c| c.hash) == e.content.as_ref().map(|c| c.hash);
        if !same {
            return true;
        }
        peer_before.entry(&e.path).is_some_and(|old| {
            !matches!(
                old.version.compare(&mine.version),
                Causality::Older | Causality::Equal
            )
        })
    })
}

/// How many of this device's entries the swarm does not take: live paths
/// no authoritative peer has, and versions newer than or concurrent with
/// theirs (`swarm` is the global view of the authoritative peers alone).
/// What a receive-only folder or a read-only key shows as local changes.
pub fn local_only_changes(local: &dyn EntryMap, swarm: &dyn EntryMap) -> u64 {
    local
        .entries()
        .filter(|e| match swarm.entry(&e.path) {
            None => e.is_live(),
            Some(t) => matches!(
                e.version.compare(&t.version),
                Causality::Newer | Causality::Concurrent
            ),
        })
        .count() as u64
}

/// Chunks shorter than this are fetched whole: a delta would save at most
/// a few hundred bytes and cost a read of the old file.
pub const MIN_DELTA_CHUNK: u32 = 2048;

/// The region of the old version `old` of a file to use as a delta base for
/// chunk `n` of its new content, if that chunk probably resembles one:
/// - a file of one chunk (a small file edited): the start of the old file,
///   up to twice the chunk's length;
/// - a chunk next to one the old version has too (the edge of an edit in a
///   big file): the same place in the old version, found through that
///   neighbour, with a quarter of the chunk's length around it.
///
/// Chunks in the middle of a rewritten region have no base: a delta could
/// not help them. The daemon reads the region and asks for the chunk as a
/// delta against it (protocol version 5, chunk deltas).
pub fn delta_base(
    new: &Content,
    offsets: &[u64],
    n: usize,
    is_held: &dyn Fn(usize) -> bool,
    old: &FileEntry,
) -> Option<std::ops::Range<u64>> {
    let chunk = new.chunks.get(n)?;
    if chunk.len < MIN_DELTA_CHUNK {
        return None;
    }
    let len = u64::from(chunk.len);
    if new.chunks.len() == 1 {
        return Some(0..old.size.min(2 * len));
    }
    let old_content = old.content.as_ref()?;
    let old_offset = |hash| {
        old_content
            .offsets()
            .find(|(_, c)| c.hash == hash)
            .map(|(offset, _)| offset)
    };
    let neighbour = [n.checked_sub(1), Some(n + 1)]
        .into_iter()
        .flatten()
        .filter(|&m| is_held(m))
        .find_map(|m| Some((offsets.get(m)?, old_offset(new.chunks.get(m)?.hash)?)))?;
    let (new_at, old_at) = neighbour;
    // Where chunk n would sit in the old version, shifted as its neighbour is.
    let at = (offsets[n] + old_at).checked_sub(*new_at)?;
    let start = at.saturating_sub(len / 4);
    let end = (at + len + len / 4).min(old.size);
    (start < end).then_some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{ChunkRef, Timestamp};
    use crate::global::global_index;
    use crate::ids::Hash;
    use crate::plan::Index;
    use crate::version::VersionVector;

    const HERE: ShortId = ShortId(1 << 59);
    const PEER: ShortId = ShortId(2 << 59);
    const THIRD: ShortId = ShortId(3 << 59);
    const NOW: i64 = 1_700_000_000;

    fn vv(counters: &[(ShortId, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        let mut sorted = counters.to_vec();
        sorted.sort_by_key(|(_, c)| *c);
        for (d, c) in sorted {
            v.bump_at(d, c);
        }
        v
    }

    fn file(path: &str, body: &str, secs: i64, version: &[(ShortId, u64)]) -> FileEntry {
        let hash = Hash::of(body.as_bytes());
        FileEntry {
            path: RelPath::new(path).unwrap(),
            kind: FileKind::File,
            size: body.len() as u64,
            mtime: Timestamp { secs, nanos: 0 },
            permissions: 0o644,
            symlink_target: None,
            content: Some(Content {
                hash,
                chunk_avg: 65536,
                chunks: vec![ChunkRef {
                    hash,
                    len: body.len() as u32,
                }],
            }),
            version: vv(version),
            deleted: false,
            sequence: 0,
        }
    }

    fn dir(path: &str, version: &[(ShortId, u64)]) -> FileEntry {
        FileEntry {
            kind: FileKind::Directory,
            size: 0,
            content: None,
            permissions: 0o755,
            ..file(path, "", 0, version)
        }
    }

    fn index(entries: &[FileEntry]) -> Index {
        entries
            .iter()
            .map(|e| (e.path.clone(), e.clone()))
            .collect()
    }

    #[test]
    fn local_only_changes_are_what_the_swarm_does_not_have() {
        let theirs = index(&[
            file("same", "x", 1, &[(PEER, 10)]),
            file("mine-newer", "x", 1, &[(PEER, 10)]),
            file("theirs-newer", "y", 1, &[(PEER, 20)]),
        ]);
        let local = index(&[
            file("same", "x", 1, &[(PEER, 10)]),
            file("mine-newer", "z", 2, &[(PEER, 10), (HERE, 30)]),
            file("theirs-newer", "x", 1, &[(PEER, 10)]),
            file("only-here", "w", 1, &[(HERE, 5)]),
        ]);
        let swarm = global_index(&[&theirs]);
        assert_eq!(local_only_changes(&local, &swarm), 2);
    }

    fn pull(local: &Index, peer: &Index, clock: u64) -> Plan {
        pull_from(local, &[peer], clock)
    }

    fn pull_from(local: &Index, peers: &[&Index], clock: u64) -> Plan {
        let mut all: Vec<&dyn EntryMap> = vec![local];
        all.extend(peers.iter().map(|p| *p as &dyn EntryMap));
        let global = global_index(&all);
        plan_pull(&PullInput {
            local,
            global: &global,
            device: HERE,
            clock,
            now_unix_secs: NOW,
        })
    }

    /// What the daemon's executor records for `actions` (the disk aside).
    fn apply(local: &mut Index, actions: &[Action]) {
        for a in actions {
            assert_ne!(a.side(), Some(Side::B), "a pull changed a peer: {a:?}");
            match a {
                Action::KeepConflictCopy { entry, to, .. } => {
                    let mut moved = (**entry).clone();
                    moved.path = to.clone();
                    local.remove(&entry.path);
                    local.insert(to.clone(), moved);
                }
                Action::MakeDir { entry, .. } => {
                    local.insert(entry.path.clone(), (**entry).clone());
                }
                Action::Copy {
                    source, version, ..
                }
                | Action::Symlink {
                    source, version, ..
                } => {
                    let mut e = (**source).clone();
                    e.version = version.clone();
                    local.insert(e.path.clone(), e);
                }
                Action::SetMetadata { entry, .. } => {
                    local.insert(entry.path.clone(), (**entry).clone());
                }
                Action::Delete {
                    expected, version, ..
                } => {
                    let mut tomb = (**expected).clone();
                    tomb.deleted = true;
                    tomb.content = None;
                    tomb.size = 0;
                    tomb.version = version.clone();
                    local.insert(tomb.path.clone(), tomb);
                }
                Action::RecordVersion { path, version } => {
                    if let Some(e) = local.get_mut(path) {
                        e.version = version.clone();
                    }
                }
            }
        }
    }

    fn newer_or_equal(x: &VersionVector, y: &VersionVector) -> bool {
        matches!(x.compare(y), Causality::Newer | Causality::Equal)
    }

    /// A directory here that the peer has since deleted, and a file a third
    /// device made at its name meanwhile: the file beats the delete, so it
    /// is the global entry; against it, the (stale) directory here wins.
    fn won_conflict() -> (Index, Vec<Index>) {
        let local = index(&[dir("d", &[(HERE, 1)])]);
        let mut tomb = dir("d", &[(HERE, 1), (PEER, 5)]);
        tomb.deleted = true;
        let peer = index(&[tomb]);
        let third = index(&[file("d", "a file", 60, &[(THIRD, 7)])]);
        (local, vec![peer, third])
    }

    #[test]
    fn won_conflict_fetches_the_losers_copy_first_then_records_a_dominating_version() {
        let (mut local, peers) = won_conflict();
        let peers: Vec<&Index> = peers.iter().collect();
        let loser = peers[1];
        let first = pull_from(&local, &peers, 100);
        // Round 1: the loser's copy comes here under its conflict name;
        // nothing dominates the loser yet.
        let copies: Vec<&RelPath> = first
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Copy {
                    from: Side::B,
                    source,
                    ..
                } => Some(&source.path),
                _ => None,
            })
            .collect();
        assert_eq!(copies.len(), 1, "{:#?}", first.actions);
        let d = RelPath::new("d").unwrap();
        assert!(conflict::is_conflict_copy_of(copies[0], &d));
        assert!(
            !first.actions.iter().any(|a| a.path() == &d),
            "{:#?}",
            first.actions
        );
        apply(&mut local, &first.actions);

        // Round 2: the copy is kept here: the directory records a version
        // newer than both, bumped at this device, and fetches nothing.
        let second = pull_from(&local, &peers, 100);
        match &second.actions[..] {
            [Action::RecordVersion { path, version }] => {
                assert_eq!(path, &d);
                assert!(newer_or_equal(version, &local[&d].version));
                assert!(newer_or_equal(version, &loser[&d].version));
                assert_ne!(version, &local[&d].version.merge(&loser[&d].version));
                assert_eq!(version.get(HERE), 100, "bumped with the clock");
            }
            other => panic!("{other:#?}"),
        }
        apply(&mut local, &second.actions);
        assert!(pull_from(&local, &peers, 101).actions.is_empty());
    }

    #[test]
    fn lost_conflict_keeps_the_local_copy_and_takes_the_winner() {
        let local = index(&[file("f", "mine", 10, &[(HERE, 2)])]);
        let peer = index(&[file("f", "theirs", 20, &[(HERE, 1), (PEER, 3)])]);
        let p = pull(&local, &peer, 100);
        match &p.actions[..] {
            [
                Action::KeepConflictCopy {
                    side: Side::A,
                    entry,
                    to,
                },
                Action::Copy {
                    from: Side::B,
                    source,
                    replaces: None,
                    version,
                },
            ] => {
                assert_eq!(entry.path.as_str(), "f");
                assert!(conflict::is_conflict_copy_of(to, &entry.path));
                assert_eq!(source.content, peer[&entry.path].content);
                assert!(newer_or_equal(version, &local[&entry.path].version));
                assert!(newer_or_equal(version, &peer[&entry.path].version));
            }
            other => panic!("{other:#?}"),
        }
    }

    #[test]
    fn nothing_to_do_is_an_empty_plan() {
        let both = index(&[dir("d", &[(PEER, 1)]), file("d/f", "x", 5, &[(PEER, 2)])]);
        let p = pull(&both, &both, 100);
        assert_eq!(p, Plan::default());
        // This device ahead of the swarm: the peers pull; nothing here.
        let ahead = index(&[
            dir("d", &[(PEER, 1)]),
            file("d/f", "y", 6, &[(PEER, 2), (HERE, 3)]),
        ]);
        assert_eq!(pull(&ahead, &both, 100), Plan::default());
    }

    #[test]
    fn a_delete_from_the_swarm_deletes_here() {
        let local = index(&[file("f", "x", 5, &[(HERE, 1)])]);
        let mut tomb = file("f", "", 5, &[(HERE, 1), (PEER, 2)]);
        tomb.deleted = true;
        tomb.content = None;
        let peer = index(&[tomb.clone()]);
        let p = pull(&local, &peer, 100);
        match &p.actions[..] {
            [
                Action::Delete {
                    side: Side::A,
                    expected,
                    version,
                    making_room: false,
                },
            ] => {
                assert_eq!(**expected, local[&tomb.path]);
                assert_eq!(version, &tomb.version);
            }
            other => panic!("{other:#?}"),
        }
    }

    #[test]
    fn applying_a_pull_leaves_nothing_to_do() {
        let mut tomb = file("gone", "", 1, &[(PEER, 4)]);
        tomb.deleted = true;
        let cases: Vec<(Index, Vec<Index>)> = vec![
            won_conflict(),
            (
                index(&[file("f", "mine", 10, &[(HERE, 2)])]),
                vec![index(&[file("f", "theirs", 20, &[(HERE, 1), (PEER, 3)])])],
            ),
            (
                index(&[
                    file("gone", "x", 1, &[(PEER, 1)]),
                    file("new", "n", 1, &[(HERE, 1)]),
                ]),
                vec![index(&[
                    tomb,
                    dir("d", &[(PEER, 2)]),
                    file("d/x", "x", 3, &[(PEER, 3)]),
                ])],
            ),
        ];
        for (mut local, peers) in cases {
            let peers: Vec<&Index> = peers.iter().collect();
            let mut rounds = 0;
            loop {
                let p = pull_from(&local, &peers, 100 + rounds);
                if p.actions.is_empty() {
                    break;
                }
                assert!(rounds < 2, "not settled: {:#?}", p.actions);
                apply(&mut local, &p.actions);
                rounds += 1;
            }
            // And again, later: still nothing.
            assert_eq!(pull_from(&local, &peers, 500), Plan::default());
        }
    }

    #[test]
    fn devices_start_at_their_own_share_of_the_bytes() {
        let devices = [THIRD, PEER, HERE];
        let places: Vec<Stagger> = devices
            .iter()
            .map(|d| Stagger::among(*d, devices))
            .collect();
        // Every device knowing the same set takes its own place.
        assert_eq!(
            places,
            [(2, 3), (1, 3), (0, 3)].map(|(slot, slots)| Stagger { slot, slots })
        );
        let sizes = [10, 10, 10, 30, 0, 0];
        assert_eq!(places[2].start(sizes), 0);
        assert_eq!(places[1].start(sizes), 2);
        assert_eq!(places[0].start(sizes), 3);
        assert_eq!(Stagger::NONE.start(sizes), 0);
        assert_eq!(places[0].start([0, 0]), 0);
        assert_eq!(places[0].start([]), 0);
        // Alone, or with itself listed: the beginning.
        assert_eq!(Stagger::among(HERE, [HERE]), Stagger::NONE);
    }

    #[test]
    fn staggered_writes_rotate_and_nothing_else_moves() {
        let local = Index::new();
        let mut peer = index(&[dir("d", &[(PEER, 1)])]);
        for i in 0..4 {
            let f = file(&format!("d/f{i}"), "12345678", 2, &[(PEER, 2 + i)]);
            peer.insert(f.path.clone(), f);
        }
        let plain = pull(&local, &peer, 100).actions;
        let paths = |a: &[Action]| -> Vec<String> {
            a.iter().map(|x| x.path().as_str().to_owned()).collect()
        };
        // The directory (an earlier phase) first, then the files.
        assert_eq!(paths(&plain), ["d", "d/f0", "d/f1", "d/f2", "d/f3"]);
        let mut staggered = plain.clone();
        stagger_writes(&mut staggered, Stagger { slot: 1, slots: 2 });
        assert_eq!(paths(&staggered), ["d", "d/f2", "d/f3", "d/f0", "d/f1"]);
        let mut same = plain.clone();
        stagger_writes(&mut same, Stagger::NONE);
        assert_eq!(same, plain);
    }

    #[test]
    fn an_update_that_only_catches_up_changes_no_pull() {
        let local = index(&[
            file("f", "x", 1, &[(HERE, 2)]),
            file("g", "y", 1, &[(HERE, 3)]),
        ]);
        let none = Index::new();
        let caught_up = [file("f", "x", 1, &[(HERE, 2)])];
        assert!(!may_change_pull(&local, &none, &caught_up));
        // It replaces an older entry of the peer's: still nothing new.
        let older = index(&[file("f", "old", 1, &[(HERE, 1)])]);
        assert!(!may_change_pull(&local, &older, &caught_up));
        // It replaces a concurrent one (which may have won): news.
        let concurrent = index(&[file("f", "c", 9, &[(PEER, 5)])]);
        assert!(may_change_pull(&local, &concurrent, &caught_up));
        // Newer, unknown here, or deleted where this device has it: news.
        for e in [
            file("f", "z", 2, &[(HERE, 2), (PEER, 4)]),
            file("h", "n", 1, &[(PEER, 1)]),
            FileEntry {
                deleted: true,
                ..file("g", "y", 1, &[(HERE, 3)])
            },
        ] {
            assert!(may_change_pull(&local, &none, &[caught_up[0].clone(), e]));
        }
        assert!(!may_change_pull(&local, &none, &[]));
    }

    #[test]
    fn a_delta_base_is_the_old_region_a_chunk_probably_resembles() {
        let chunk = |n: u8, len: u32| ChunkRef {
            hash: Hash::of(&[n]),
            len,
        };
        let content = |chunks: Vec<ChunkRef>| Content {
            hash: Hash::of(b"whole"),
            chunk_avg: 65536,
            chunks,
        };
        let with = |mut entry: FileEntry, chunks: Vec<ChunkRef>| {
            entry.size = chunks.iter().map(|c| u64::from(c.len)).sum();
            entry.content = Some(content(chunks));
            entry
        };
        let old = with(
            FileEntry {
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
            },
            vec![chunk(0, 40_000), chunk(1, 40_000), chunk(2, 40_000)],
        );
        let offsets_of = |c: &Content| c.offsets().map(|(o, _)| o).collect::<Vec<_>>();

        // 100 bytes inserted in chunk 1: it is new, its neighbours are held.
        let new = content(vec![chunk(0, 40_000), chunk(9, 40_100), chunk(2, 40_000)]);
        let offsets = offsets_of(&new);
        let held = |m: usize| m != 1;
        // (At 40,000 in the old file, with a quarter of 40,100 around it.)
        assert_eq!(
            delta_base(&new, &offsets, 1, &held, &old),
            Some(29_975..90_125)
        );
        // A chunk whose neighbours are new too has no base.
        let new = content(vec![chunk(7, 40_000), chunk(8, 40_000), chunk(2, 40_000)]);
        let offsets = offsets_of(&new);
        let held = |m: usize| m == 2;
        assert_eq!(delta_base(&new, &offsets, 0, &held, &old), None);
        // Its right neighbour places chunk 1.
        assert_eq!(
            delta_base(&new, &offsets, 1, &held, &old),
            Some(30_000..90_000)
        );
        // A one-chunk file: the start of the old one; tiny chunks: none.
        let new = content(vec![chunk(5, 10_000)]);
        assert_eq!(delta_base(&new, &[0], 0, &|_| false, &old), Some(0..20_000));
        let new = content(vec![chunk(5, 1_000)]);
        assert_eq!(delta_base(&new, &[0], 0, &|_| false, &old), None);
    }
}
