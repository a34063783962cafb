//! The global view of a shared folder: for every path, the version the
//! whole swarm converges to, given what this device and its peers announced.
//!
//! A device syncing with several peers does not plan against each peer in
//! turn (it could fetch a version that a third peer already superseded).
//! It folds every authoritative index into one [`GlobalIndex`] — per path,
//! among the newest entries (those no other entry's version dominates), the
//! side-independent winner of [`crate::conflict`], a change beating a
//! delete and a directory beating anything else, with the versions of the
//! concurrent entries in the very same state merged in — and then plans
//! its own side against it ([`crate::pull::plan_pull`]: the ordinary pairwise
//! planner with itself as side A and the global view as side B, carrying out
//! only the actions on its own side). Every device applies the same rule, so
//! each one keeps its own losing copy as a conflict copy, which then travels
//! like any new file.
//!
//! The view is the same whatever order the indexes come in (concurrency is
//! not transitive: folding "newer or winner" pairwise in turn could end on
//! an entry that an earlier one dominates, older than this device's own).
//! And it is a tree, as the pairwise planner keeps one: where live entries
//! remain below a path whose winner is not a directory (children its
//! author never saw deleted, or they would be tombstones that dominate
//! them), the path is the best directory any index has there. Against a
//! file or symlink, that directory keeps its own version: the file's
//! devices then see a conflict the directory wins, and keep the file as a
//! conflict copy. Against a delete, it takes the tombstone's version too:
//! the device that deleted it makes it again (nothing of its own is lost),
//! as the planner does for a directory with a surviving child.
//!
//! Only devices allowed to change the folder are authoritative (their index
//! batches are signed with the folder's key). Read-only and storage-only
//! peers' indexes still say which chunks they hold ([`ChunkSources`]), so
//! they serve downloads, but never decide what the folder contains.
//!
//! The view borrows the entries it keeps from the indexes it folds
//! ([`GlobalView`]); only entries whose versions it merges are copies.
//! Measured on a daemon with 20,000 files, the owned view was 10.5 MiB of
//! its peak heap.
//!
//! Pure: indexes in, a map out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Deref;

use crate::entry::{CompareMode, FileEntry, FileKind};
use crate::ids::{Hash, ShortId};
use crate::path::RelPath;
use crate::plan::{EntryMap, Index};
use crate::version::Causality;

/// The entry every path converges to, owned.
pub type GlobalIndex = Index;

/// One path's entry in a [`GlobalView`]: an entry of a folded index as it
/// is, or a copy whose version merges several.
#[derive(Debug, Clone)]
pub enum ViewEntry<'a> {
    /// An index's own entry.
    Borrowed(&'a FileEntry),
    /// A copy with a merged version.
    Merged(Box<FileEntry>),
}

impl ViewEntry<'_> {
    fn to_mut(&mut self) -> &mut FileEntry {
        if let ViewEntry::Borrowed(e) = self {
            *self = ViewEntry::Merged(Box::new((*e).clone()));
        }
        match self {
            ViewEntry::Merged(e) => e,
            ViewEntry::Borrowed(_) => unreachable!("made owned above"),
        }
    }

    fn into_owned(self) -> FileEntry {
        match self {
            ViewEntry::Borrowed(e) => e.clone(),
            ViewEntry::Merged(e) => *e,
        }
    }
}

impl Deref for ViewEntry<'_> {
    type Target = FileEntry;
    fn deref(&self) -> &FileEntry {
        match self {
            ViewEntry::Borrowed(e) => e,
            ViewEntry::Merged(e) => e,
        }
    }
}

/// The entry every path converges to, borrowed from the indexes it was
/// folded from (keys included) where it is one of theirs unchanged.
#[derive(Debug, Clone, Default)]
pub struct GlobalView<'a> {
    map: BTreeMap<&'a RelPath, ViewEntry<'a>>,
}

impl GlobalView<'_> {
    /// The entry at `path`.
    pub fn get(&self, path: &RelPath) -> Option<&FileEntry> {
        self.map.get(path).map(|e| &**e)
    }

    /// How many paths the view has.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl EntryMap for GlobalView<'_> {
    fn entry(&self, path: &RelPath) -> Option<&FileEntry> {
        self.get(path)
    }

    fn entries(&self) -> Box<dyn Iterator<Item = &FileEntry> + '_> {
        Box::new(self.map.values().map(|e| &**e))
    }

    fn entries_below<'s>(
        &'s self,
        dir: &'s RelPath,
    ) -> Box<dyn Iterator<Item = &'s FileEntry> + 's> {
        use std::ops::Bound;
        Box::new(
            self.map
                .range::<&RelPath, _>((Bound::Excluded(&dir), Bound::Unbounded))
                .take_while(move |(p, _)| p.as_str().starts_with(dir.as_str()))
                .filter(move |(p, _)| p.starts_with(dir))
                .map(|(_, e)| &**e),
        )
    }
}

/// [`global_view`], with every entry copied out.
pub fn global_index(indexes: &[&dyn EntryMap]) -> GlobalIndex {
    global_view(indexes)
        .map
        .into_iter()
        .map(|(path, e)| (path.clone(), e.into_owned()))
        .collect()
}

/// Folds `indexes` (this device's own first, then each authoritative peer's)
/// into the global view.
pub fn global_view<'a>(indexes: &[&'a dyn EntryMap]) -> GlobalView<'a> {
    // The indexes are walked side by side in path order (`EntryMap::entries`
    // promises it): no lookups, and one buffer for every path's entries.
    // Measured on 20,000 files (`cargo bench -p meshsync-core --bench
    // plan`), a map of per-path lists took 15 ms, mostly allocation and
    // path comparisons.
    let mut walks: Vec<_> = indexes.iter().map(|i| i.entries().peekable()).collect();
    // Per path, the newest entries: none dominates another (an antichain;
    // usually one entry). Of two entries with equal versions in different
    // states (one device's index behind its disk), the one `beats` prefers
    // stays, whichever came first: what exists, as the planner keeps it.
    let mut set: Vec<&'a FileEntry> = Vec::with_capacity(indexes.len());
    let mut kept: Vec<(&'a RelPath, ViewEntry<'a>)> = Vec::new();
    while let Some(path) = walks
        .iter_mut()
        .filter_map(|w| w.peek().map(|e| &e.path))
        .min()
    {
        set.clear();
        for walk in &mut walks {
            let Some(e) = walk.next_if(|e| e.path == *path) else {
                continue;
            };
            debug_assert!(walk.peek().is_none_or(|next| next.path > e.path));
            let superseded = set.iter().any(|x| match e.version.compare(&x.version) {
                Causality::Older => true,
                Causality::Equal => !beats(e, x),
                Causality::Newer | Causality::Concurrent => false,
            });
            if superseded {
                continue;
            }
            set.retain(|x| {
                !matches!(
                    x.version.compare(&e.version),
                    Causality::Older | Causality::Equal
                )
            });
            set.push(e);
        }
        let Some(best) = set
            .iter()
            .copied()
            .reduce(|best, e| if beats(e, best) { e } else { best })
        else {
            continue;
        };
        // Concurrent copies in the very same state are one version of
        // it: the view has seen them all (one record, not one a round).
        let mut entry = ViewEntry::Borrowed(best);
        for e in set
            .iter()
            .filter(|e| !std::ptr::eq(**e, best) && same_state(e, best))
        {
            let merged = entry.version.merge(&e.version);
            if merged != entry.version {
                entry.to_mut().version = merged;
            }
        }
        kept.push((&best.path, entry));
    }
    // In path order already: collecting into the map sorts nothing.
    let map = kept.into_iter().collect();
    let mut out = GlobalView { map };
    keep_directories_with_live_children(indexes, &mut out);
    out
}

/// Makes the view a tree: a file, symlink or delete that won a path with
/// live entries below it gives way to the best directory any index has
/// there (see the module docs).
fn keep_directories_with_live_children<'a>(indexes: &[&'a dyn EntryMap], out: &mut GlobalView<'a>) {
    // Every path with a live entry somewhere below it: one set lookup per
    // entry instead of a range query per file.
    let mut above_live: HashSet<&'a str> = HashSet::new();
    for (path, e) in &out.map {
        if !e.is_live() {
            continue;
        }
        let mut dir = path.as_str();
        while let Some(slash) = dir.rfind('/') {
            dir = &dir[..slash];
            // Its parents went in with it.
            if !above_live.insert(dir) {
                break;
            }
        }
    }
    let blocked: Vec<&'a RelPath> = out
        .map
        .iter()
        .filter(|(_, e)| e.deleted || e.kind != FileKind::Directory)
        .filter(|(path, _)| above_live.contains(path.as_str()))
        .map(|(path, _)| *path)
        .collect();
    for path in blocked {
        let dir = indexes
            .iter()
            .filter_map(|index| index.entry(path))
            .filter(|e| e.is_live() && e.kind == FileKind::Directory)
            .reduce(|best, e| {
                let newer = match e.version.compare(&best.version) {
                    Causality::Newer => true,
                    Causality::Concurrent => beats(e, best),
                    Causality::Older | Causality::Equal => false,
                };
                if newer { e } else { best }
            });
        if let Some(dir) = dir {
            let mut dir = ViewEntry::Borrowed(dir);
            if let Some(tomb) = out.get(path).filter(|e| e.deleted) {
                dir.to_mut().version = dir.version.merge(&tomb.version);
            }
            out.map.insert(path, dir);
        }
    }
}

/// Whether two entries record the same state: both deleted, or the same
/// kind, content (by hash), link target and metadata.
fn same_state(a: &FileEntry, b: &FileEntry) -> bool {
    if a.deleted || b.deleted {
        return a.deleted == b.deleted;
    }
    a.kind == b.kind
        && a.same_content(b, CompareMode::Checksum) == Some(true)
        && !a.metadata_differs(b)
}

/// Whether `candidate` wins over the concurrent `current`: a change beats
/// a delete, a directory beats a file, then the shared winner order.
fn beats(candidate: &FileEntry, current: &FileEntry) -> bool {
    match (candidate.is_live(), current.is_live()) {
        (true, false) => return true,
        (false, true) => return false,
        _ => {}
    }
    let (cd, ud) = (
        candidate.kind == FileKind::Directory,
        current.kind == FileKind::Directory,
    );
    if cd != ud {
        return cd;
    }
    crate::conflict::compare_winners(
        candidate,
        last_changer(candidate),
        current,
        last_changer(current),
    )
    .is_gt()
}

/// The device whose change `e` is, for the winner rule.
fn last_changer(e: &FileEntry) -> ShortId {
    crate::plan::last_changer(&e.version).unwrap_or(ShortId(0))
}

/// Which peers announced holding each chunk (any index, authoritative or
/// not). Built from the peers' indexes when a pull is planned, then kept up
/// to date while it runs: a peer's index update adds what it now holds
/// ([`ChunkSources::add_entries`]), so a file a peer finishes during the
/// round can be fetched from it. It only grows (a chunk a peer no longer
/// has costs one "not found" before another holder is asked) until a peer
/// goes ([`ChunkSources::remove_peer`]) or the next plan rebuilds it.
#[derive(Debug, Default, Clone)]
pub struct ChunkSources<P> {
    by_hash: HashMap<Hash, Vec<P>>,
}

impl<P: Clone + PartialEq> ChunkSources<P> {
    /// An empty map.
    pub fn new() -> Self {
        ChunkSources {
            by_hash: HashMap::new(),
        }
    }

    /// Records every chunk of every live file in `index` as held by `peer`.
    pub fn add_index(&mut self, peer: P, index: &dyn EntryMap) {
        self.add_entries(peer, index.entries());
    }

    /// Records every chunk of the live files among `entries` (say, an index
    /// update) as held by `peer`.
    pub fn add_entries<'e>(&mut self, peer: P, entries: impl IntoIterator<Item = &'e FileEntry>) {
        for e in entries {
            if !e.is_live() {
                continue;
            }
            if let Some(c) = &e.content {
                self.add_chunks(peer.clone(), c.chunks.iter().map(|c| c.hash));
            }
        }
    }

    /// Records the chunks `hashes` as held by `peer`.
    pub fn add_chunks(&mut self, peer: P, hashes: impl IntoIterator<Item = Hash>) {
        for hash in hashes {
            let holders = self.by_hash.entry(hash).or_default();
            if !holders.contains(&peer) {
                holders.push(peer.clone());
            }
        }
    }

    /// Forgets everything `peer` held (it disconnected).
    pub fn remove_peer(&mut self, peer: &P) {
        self.by_hash.retain(|_, holders| {
            holders.retain(|p| p != peer);
            !holders.is_empty()
        });
    }

    /// The peers that hold `hash`.
    pub fn holders(&self, hash: &Hash) -> &[P] {
        self.by_hash.get(hash).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{ChunkRef, Content, Timestamp};
    use crate::version::VersionVector;

    fn entry(path: &str, body: &str, secs: i64, version: &[(u64, u64)]) -> FileEntry {
        let mut v = VersionVector::new();
        for &(d, c) in version {
            v.bump_at(ShortId(d), c);
        }
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
            version: v,
            deleted: false,
            sequence: 0,
        }
    }

    fn index(es: Vec<FileEntry>) -> Index {
        es.into_iter().map(|e| (e.path.clone(), e)).collect()
    }

    #[test]
    fn newest_version_wins_whatever_the_order() {
        let old = index(vec![entry("f", "old", 1, &[(1, 1)])]);
        let new = index(vec![entry("f", "new", 2, &[(1, 1), (2, 2)])]);
        for order in [[&old, &new], [&new, &old]] {
            let g = global_index(&[order[0] as &dyn EntryMap, order[1]]);
            assert_eq!(g[&RelPath::new("f").unwrap()].size, 3);
            assert_eq!(g[&RelPath::new("f").unwrap()].mtime.secs, 2);
        }
    }

    #[test]
    fn concurrent_winner_is_order_independent_and_change_beats_delete() {
        let a = index(vec![entry("f", "aaaa", 5, &[(1, 2)])]);
        let b = index(vec![entry("f", "bb", 9, &[(2, 2)])]);
        let g1 = global_index(&[&a as &dyn EntryMap, &b]);
        let g2 = global_index(&[&b as &dyn EntryMap, &a]);
        assert_eq!(g1, g2);
        assert_eq!(g1[&RelPath::new("f").unwrap()].mtime.secs, 9);
        let mut tomb = entry("f", "", 99, &[(3, 7)]);
        tomb.deleted = true;
        let c = index(vec![tomb]);
        let g3 = global_index(&[&c as &dyn EntryMap, &a]);
        assert!(g3[&RelPath::new("f").unwrap()].is_live());
    }

    #[test]
    fn the_view_does_not_depend_on_the_order_of_indexes() {
        // L dominates G; M is concurrent with both and beats L, G beats M:
        // folding pairwise in the order L, M, G ended on G, older than L.
        let l = index(vec![entry("f", "l", 10, &[(0, 10), (1, 3), (2, 14)])]);
        let m = index(vec![entry("f", "m", 30, &[(1, 13)])]);
        let g = index(vec![entry("f", "g", 40, &[(1, 3), (2, 14)])]);
        let f = RelPath::new("f").unwrap();
        let orders: [[&Index; 3]; 6] = [
            [&l, &m, &g],
            [&l, &g, &m],
            [&m, &l, &g],
            [&m, &g, &l],
            [&g, &l, &m],
            [&g, &m, &l],
        ];
        for o in orders {
            let v = global_index(&[o[0] as &dyn EntryMap, o[1], o[2]]);
            // Among the newest (L and M), M wins on mtime.
            assert_eq!(v[&f], m[&f]);
        }
    }

    #[test]
    fn concurrent_copies_of_the_same_state_merge_their_versions() {
        let a = index(vec![entry("f", "same", 5, &[(1, 3)])]);
        let b = index(vec![entry("f", "same", 5, &[(2, 4)])]);
        let c = index(vec![entry("f", "other", 9, &[(3, 2)])]);
        let f = RelPath::new("f").unwrap();
        let v = global_index(&[&a as &dyn EntryMap, &b]);
        assert_eq!(v[&f].version, a[&f].version.merge(&b[&f].version));
        // The winner takes only what is in its own state.
        let v = global_index(&[&a as &dyn EntryMap, &b, &c]);
        assert_eq!(v[&f].version, c[&f].version);
    }

    #[test]
    fn of_equal_versions_what_exists_wins_whatever_the_order() {
        let mut d = entry("d", "", 1, &[(1, 4)]);
        d.kind = FileKind::Directory;
        d.content = None;
        d.size = 0;
        let mut tomb = d.clone();
        tomb.deleted = true;
        let (live, gone) = (index(vec![d.clone()]), index(vec![tomb]));
        for order in [[&live, &gone], [&gone, &live]] {
            let v = global_index(&[order[0] as &dyn EntryMap, order[1]]);
            assert_eq!(v[&d.path], d);
        }
    }

    #[test]
    fn a_path_with_live_children_is_a_directory() {
        let mut d = entry("d", "", 1, &[(1, 1)]);
        d.kind = FileKind::Directory;
        d.content = None;
        d.size = 0;
        let here = index(vec![d.clone(), entry("d/new", "n", 2, &[(1, 2)])]);
        // Another device, which never saw d/new, replaced d with a file.
        let there = index(vec![entry("d", "file", 5, &[(1, 1), (2, 7)])]);
        let v = global_index(&[&there as &dyn EntryMap, &here]);
        assert_eq!(v[&RelPath::new("d").unwrap()], d);
        // Once d/new is gone (a tombstone that dominates it), the file wins.
        let mut gone = entry("d/new", "", 2, &[(1, 2), (2, 8)]);
        gone.deleted = true;
        let there = index(vec![entry("d", "file", 5, &[(1, 1), (2, 7)]), gone]);
        let v = global_index(&[&there as &dyn EntryMap, &here]);
        assert_eq!(v[&RelPath::new("d").unwrap()].kind, FileKind::File);
    }

    #[test]
    fn a_deleted_directory_with_a_new_child_is_made_again() {
        let mut d = entry("d", "", 1, &[(1, 1)]);
        d.kind = FileKind::Directory;
        d.content = None;
        d.size = 0;
        let here = index(vec![d.clone(), entry("d/new", "n", 2, &[(1, 2)])]);
        // Another device deleted d (it knew d, not d/new).
        let mut tomb = d.clone();
        tomb.deleted = true;
        tomb.version = VersionVector::new();
        tomb.version.bump_at(ShortId(1), 1);
        tomb.version.bump_at(ShortId(2), 7);
        let there = index(vec![tomb.clone()]);
        let v = global_index(&[&there as &dyn EntryMap, &here]);
        let kept = &v[&RelPath::new("d").unwrap()];
        assert!(kept.is_live() && kept.kind == FileKind::Directory);
        assert_eq!(kept.version, tomb.version.merge(&d.version));
    }

    #[test]
    fn chunk_sources_list_holders() {
        let a = index(vec![entry("f", "x", 1, &[(1, 1)])]);
        let mut s = ChunkSources::new();
        s.add_index("peer1", &a);
        s.add_index("peer2", &a);
        s.add_index("peer1", &a);
        assert_eq!(s.holders(&Hash::of(b"x")), &["peer1", "peer2"]);
        assert!(s.holders(&Hash::of(b"y")).is_empty());
    }

    #[test]
    fn chunk_sources_follow_updates_and_departures() {
        let mut s = ChunkSources::new();
        s.add_index("a", &index(vec![entry("f", "x", 1, &[(1, 1)])]));
        // An update: b finished f, and a deleted g is not a source.
        let mut gone = entry("g", "y", 1, &[(1, 1)]);
        gone.deleted = true;
        let update = [entry("f", "x", 1, &[(1, 1)]), gone];
        s.add_entries("b", &update);
        assert_eq!(s.holders(&Hash::of(b"x")), &["a", "b"]);
        assert!(s.holders(&Hash::of(b"y")).is_empty());
        s.remove_peer(&"a");
        assert_eq!(s.holders(&Hash::of(b"x")), &["b"]);
        s.remove_peer(&"b");
        assert!(s.holders(&Hash::of(b"x")).is_empty());
        assert!(s.by_hash.is_empty());
    }
}
