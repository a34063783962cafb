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
///
/// Compact on purpose: a chunk maps to the number of its set of holders,
/// and each distinct set is kept once. Nearly every chunk of a folder has
/// one of a handful of sets ("all my peers", "all but the one still
/// syncing"), so a chunk costs its hash and four bytes. A list of holders
/// per chunk was 4.2 MiB of a daemon's peak heap with 20,000 files, one
/// 128-byte allocation per chunk.
#[derive(Debug, Clone)]
pub struct ChunkSources<P> {
    /// Every peer ever recorded; a set names peers by their place here.
    peers: Vec<P>,
    /// The distinct sets of holders, as places in `peers` (ascending) and
    /// as the peers themselves (what [`ChunkSources::holders`] returns).
    /// Set 0 is the empty set.
    sets: Vec<(Vec<u32>, Vec<P>)>,
    /// A set's number, by its places.
    set_numbers: HashMap<Vec<u32>, u32>,
    /// (set, place of a peer) -> the set with that peer added.
    grown: HashMap<(u32, u32), u32>,
    by_hash: HashMap<Hash, u32>,
}

impl<P: Clone + PartialEq> Default for ChunkSources<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Clone + PartialEq> ChunkSources<P> {
    /// An empty map.
    pub fn new() -> Self {
        ChunkSources {
            peers: Vec::new(),
            sets: vec![(Vec::new(), Vec::new())],
            set_numbers: HashMap::from([(Vec::new(), 0)]),
            grown: HashMap::new(),
            by_hash: HashMap::new(),
        }
    }

    /// Records every chunk of every live file in `index` as held by `peer`.
    pub fn add_index(&mut self, peer: P, index: &dyn EntryMap) {
        let entries = index.entries();
        if self.by_hash.is_empty() {
            // The first index names nearly every chunk: one allocation.
            self.by_hash.reserve(entries.size_hint().0);
        }
        self.add_entries(peer, entries);
    }

    /// Records every chunk of the live files among `entries` (say, an index
    /// update) as held by `peer`.
    pub fn add_entries<'e>(&mut self, peer: P, entries: impl IntoIterator<Item = &'e FileEntry>) {
        let place = self.place_of(peer);
        for e in entries {
            if !e.is_live() {
                continue;
            }
            if let Some(c) = &e.content {
                self.add_at(place, c.chunks.iter().map(|c| c.hash));
            }
        }
    }

    /// Records the chunks `hashes` as held by `peer`.
    pub fn add_chunks(&mut self, peer: P, hashes: impl IntoIterator<Item = Hash>) {
        let place = self.place_of(peer);
        self.add_at(place, hashes);
    }

    fn add_at(&mut self, place: u32, hashes: impl IntoIterator<Item = Hash>) {
        // Neighbouring chunks nearly always have the same holders.
        let mut last: Option<(u32, u32)> = None;
        for hash in hashes {
            let set = *self.by_hash.get(&hash).unwrap_or(&0);
            let next = match last {
                Some((from, to)) if from == set => to,
                _ => {
                    let to = self.with_peer(set, place);
                    last = Some((set, to));
                    to
                }
            };
            if next != set {
                self.by_hash.insert(hash, next);
            }
        }
    }

    /// Forgets everything `peer` held (it disconnected).
    pub fn remove_peer(&mut self, peer: &P) {
        let Some(place) = self.peers.iter().position(|p| p == peer) else {
            return;
        };
        let place = place as u32;
        let without: Vec<u32> = (0..self.sets.len())
            .map(|set| {
                let places = &self.sets[set].0;
                if places.binary_search(&place).is_err() {
                    return set as u32;
                }
                let rest: Vec<u32> = places.iter().copied().filter(|&p| p != place).collect();
                self.intern(rest)
            })
            .collect();
        self.by_hash.retain(|_, set| {
            *set = without[*set as usize];
            *set != 0
        });
        self.grown.clear();
    }

    /// The peers that hold `hash`.
    pub fn holders(&self, hash: &Hash) -> &[P] {
        self.by_hash
            .get(hash)
            .map_or(&[], |&set| self.sets[set as usize].1.as_slice())
    }

    fn place_of(&mut self, peer: P) -> u32 {
        match self.peers.iter().position(|p| *p == peer) {
            Some(place) => place as u32,
            None => {
                self.peers.push(peer);
                (self.peers.len() - 1) as u32
            }
        }
    }

    /// The set `set` with the peer at `place` added.
    fn with_peer(&mut self, set: u32, place: u32) -> u32 {
        if let Some(&to) = self.grown.get(&(set, place)) {
            return to;
        }
        let places = &self.sets[set as usize].0;
        let to = match places.binary_search(&place) {
            Ok(_) => set,
            Err(at) => {
                let mut more = places.clone();
                more.insert(at, place);
                self.intern(more)
            }
        };
        self.grown.insert((set, place), to);
        to
    }

    fn intern(&mut self, places: Vec<u32>) -> u32 {
        if let Some(&set) = self.set_numbers.get(&places) {
            return set;
        }
        let set = self.sets.len() as u32;
        let peers = places
            .iter()
            .map(|&p| self.peers[p as usize].clone())
            .collect();
        self.set_numbers.insert(places.clone(), set);
        self.sets.push((places, peers));
        set
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

    #[test]
    fn chunk_sources_agree_with_a_list_per_chunk() {
        // Seeded random adds and departures, against the obvious model.
        let mut next = crate::testing::seeded(0x9e37_79b9_7f4a_7c15u64);
        let hashes: Vec<Hash> = (0..40u32).map(|i| Hash::of(&i.to_le_bytes())).collect();
        let mut s = ChunkSources::new();
        let mut model: HashMap<Hash, Vec<u64>> = HashMap::new();
        for _ in 0..2_000 {
            let peer = next(6);
            if next(10) == 0 {
                s.remove_peer(&peer);
                model.values_mut().for_each(|v| v.retain(|p| *p != peer));
            } else {
                let picked: Vec<Hash> = (0..next(5)).map(|_| hashes[next(40) as usize]).collect();
                s.add_chunks(peer, picked.iter().copied());
                for h in picked {
                    let holders = model.entry(h).or_default();
                    if !holders.contains(&peer) {
                        holders.push(peer);
                    }
                }
            }
            for h in &hashes {
                let mut want = model.get(h).cloned().unwrap_or_default();
                want.sort_unstable();
                let mut got = s.holders(h).to_vec();
                got.sort_unstable();
                assert_eq!(got, want);
            }
        }
        // Only a handful of distinct sets were ever made.
        assert!(s.sets.len() <= 64, "{} sets", s.sets.len());
    }
}
