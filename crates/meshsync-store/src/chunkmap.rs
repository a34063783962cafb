//! Where chunks already sit on the local disk, so a copy can take them from
//! there instead of from the source (or the network).
//!
//! A [`ChunkMap`] is built from an index: every chunk of every live file
//! whose content is known, with the stat facts that file had when hashed.
//! [`ChunkReader`] copies a chunk out of its file only after checking that
//! the file still has that inode, size and mtime; the writer verifies the
//! assembled file's hash anyway, so a stale map can cost a retry, never
//! corrupt a file.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use meshsync_core::entry::{Content, FileKind, Timestamp};
use meshsync_core::ids::Hash;

use crate::db::{LocalStat, StoredIndex};
use crate::write::copy_range;

#[derive(Debug, Clone)]
struct Holder {
    path: PathBuf,
    inode: u64,
    size: u64,
    mtime: Timestamp,
}

/// One place a chunk can be read from.
#[derive(Debug, Clone, Copy)]
struct Location {
    holder: u32,
    offset: u64,
    len: u32,
}

/// Chunks available on a local disk, by hash.
#[derive(Debug, Default)]
pub struct ChunkMap {
    holders: Vec<Holder>,
    by_hash: HashMap<Hash, Location>,
}

impl ChunkMap {
    /// Every chunk of every live, hashed file of `index` (rooted at `root`).
    pub fn from_index(root: &Path, index: &StoredIndex) -> Self {
        let mut map = ChunkMap::default();
        for (path, stored) in index {
            let e = &stored.entry;
            if let (true, FileKind::File, Some(content), Some(local)) = (
                e.is_live(),
                e.kind,
                e.content.as_ref(),
                stored.local.as_ref(),
            ) {
                map.add(root.join(path.as_str()), local, e.size, e.mtime, content);
            }
        }
        map
    }

    /// Adds the chunks of one file.
    pub fn add(
        &mut self,
        path: PathBuf,
        local: &LocalStat,
        size: u64,
        mtime: Timestamp,
        content: &Content,
    ) {
        let holder = self.holders.len() as u32;
        self.holders.push(Holder {
            path,
            inode: local.inode,
            size,
            mtime,
        });
        for (offset, c) in content.offsets() {
            self.by_hash.entry(c.hash).or_insert(Location {
                holder,
                offset,
                len: c.len,
            });
        }
    }

    /// Whether no chunk is known.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Whether a chunk with this hash is known.
    pub fn contains(&self, hash: &Hash) -> bool {
        self.by_hash.contains_key(hash)
    }
}

/// Copies chunks out of a [`ChunkMap`]'s files, keeping the last file open.
pub struct ChunkReader<'m> {
    map: &'m ChunkMap,
    open: Option<(u32, Option<File>)>,
}

impl<'m> ChunkReader<'m> {
    /// A reader over `map`.
    pub fn new(map: &'m ChunkMap) -> Self {
        ChunkReader { map, open: None }
    }

    /// Copies the chunk `hash` (of length `len`) to `to` at `to_offset`.
    /// Returns false (and copies nothing) when the chunk is not known or its
    /// file changed since it was hashed.
    pub fn copy(&mut self, hash: &Hash, len: usize, to: &mut File, to_offset: u64) -> bool {
        let Some(loc) = self.map.by_hash.get(hash).copied() else {
            return false;
        };
        if loc.len as usize != len {
            return false;
        }
        if self.open.as_ref().map(|(h, _)| *h) != Some(loc.holder) {
            self.open = Some((loc.holder, self.open_checked(loc.holder)));
        }
        let Some((_, Some(file))) = &self.open else {
            return false;
        };
        copy_range(file, loc.offset, u64::from(loc.len), to, to_offset).is_ok()
    }

    fn open_checked(&self, holder: u32) -> Option<File> {
        let h = &self.map.holders[holder as usize];
        let f = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&h.path)
            .ok()?;
        let md = f.metadata().ok()?;
        let same = md.ino() == h.inode
            && md.size() == h.size
            && md.mtime() == h.mtime.secs
            && md.mtime_nsec() as u32 == h.mtime.nanos;
        same.then_some(f)
    }
}
