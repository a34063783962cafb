//! The global view of a shared folder: for every path, the version the
//! whole swarm converges to, given what this device and its peers announced.
//!
//! A device syncing with several peers does not plan against each peer in
//! turn (it could fetch a version that a third peer already superseded).
//! It folds every authoritative index into one [`GlobalIndex`] — per path the
//! newest entry by version vector; among concurrent ones the side-independent
//! winner of [`crate::conflict`], a change beating a delete — and then runs
//! the ordinary pairwise planner with itself as side A and the global view as
//! side B, carrying out only the actions on its own side. Every device applies
//! the same rule, so each one keeps its own losing copy as a conflict copy,
//! which then travels like any new file.
//!
//! Only devices allowed to change the folder are authoritative (their index
//! batches are signed with the folder's key). Read-only and storage-only
//! peers' indexes still say which chunks they hold ([`ChunkSources`]), so
//! they serve downloads, but never decide what the folder contains.
//!
//! Pure: indexes in, a map out.

use std::collections::{BTreeMap, HashMap};

use crate::conflict::WinnerKey;
use crate::entry::{FileEntry, FileKind};
use crate::ids::{Hash, ShortId};
use crate::path::RelPath;
use crate::plan::{EntryMap, Index};
use crate::version::Causality;

/// The entry every path converges to, with the peers that hold exactly it.
pub type GlobalIndex = Index;

/// Folds `indexes` (this device's own first, then each authoritative peer's)
/// into the global view.
pub fn global_index(indexes: &[&dyn EntryMap]) -> GlobalIndex {
    let mut out: BTreeMap<RelPath, FileEntry> = BTreeMap::new();
    for index in indexes {
        for e in index.entries() {
            match out.get_mut(&e.path) {
                None => {
                    out.insert(e.path.clone(), e.clone());
                }
                Some(current) => {
                    if prefer(e, current) {
                        *current = e.clone();
                    }
                }
            }
        }
    }
    out
}

/// Whether `candidate` should replace `current` as the global entry.
fn prefer(candidate: &FileEntry, current: &FileEntry) -> bool {
    match candidate.version.compare(&current.version) {
        Causality::Newer => true,
        Causality::Older | Causality::Equal => false,
        Causality::Concurrent => {
            // A change beats a concurrent delete; a directory beats a file;
            // then the shared winner order.
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
            key(candidate) > key(current)
        }
    }
}

fn key(e: &FileEntry) -> WinnerKey {
    let device = e
        .version
        .counters()
        .iter()
        .max_by_key(|(d, c)| (*c, *d))
        .map_or(ShortId(0), |(d, _)| *d);
    crate::conflict::winner_key(e, device)
}

/// Which peers announced holding each chunk (any index, authoritative or not).
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
        for e in index.entries() {
            if !e.is_live() {
                continue;
            }
            if let Some(c) = &e.content {
                for chunk in &c.chunks {
                    let holders = self.by_hash.entry(chunk.hash).or_default();
                    if !holders.contains(&peer) {
                        holders.push(peer.clone());
                    }
                }
            }
        }
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
    fn chunk_sources_list_holders() {
        let a = index(vec![entry("f", "x", 1, &[(1, 1)])]);
        let mut s = ChunkSources::new();
        s.add_index("peer1", &a);
        s.add_index("peer2", &a);
        s.add_index("peer1", &a);
        assert_eq!(s.holders(&Hash::of(b"x")), &["peer1", "peer2"]);
        assert!(s.holders(&Hash::of(b"y")).is_empty());
    }
}
