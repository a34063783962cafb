//! Where chunks already sit on the local disk, so a copy can take them from
//! there instead of from the source (or the network).
//!
//! A [`ChunkMap`] is built from an index: every chunk of every live file
//! whose content is known, with the stat facts that file had when hashed.
//! [`ChunkReader`] copies a chunk out of its file only after checking that
//! the file still has that inode, size and mtime, and it hashes every chunk
//! it reads before writing it: a stale map can cost a read from the source,
//! never a corrupt file.
//!
//! Chunks are copied through a buffer (`pread`, BLAKE3, `pwrite`), not with
//! `copy_file_range`: measured on ext4 (bench `large` update, 1 GiB of
//! reused 64 KiB chunks), one `copy_file_range` per chunk took 3.2 s against
//! about half that through a buffer, and the buffer is what lets each chunk be
//! verified. Content-defined chunks are not block-aligned, so a reflink could
//! share almost none of them anyway.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshsync_core::entry::{Content, FileKind, Timestamp};
use meshsync_core::ids::Hash;
use meshsync_core::path::RelPath;

use std::os::unix::fs::FileExt;

use crate::db::{LocalStat, StoredEntry, StoredIndex};
use crate::scan::disk_path;

#[derive(Debug, Clone)]
struct Holder {
    path: HolderPath,
    inode: u64,
    size: u64,
    mtime: Timestamp,
}

/// Where a holder is. A daemon's map holds one per file, so a file of the
/// map's own tree keeps its index path (shared with the index, no copy)
/// and is joined to the root only when opened: with 20,000 files, a
/// joined path per file was 1.7 MiB.
#[derive(Debug, Clone)]
enum HolderPath {
    /// Below the map's root, spelled on disk as in the index.
    InRoot(RelPath),
    /// Anywhere else, or spelled otherwise (exactly as long as the path:
    /// a joined `PathBuf` keeps up to twice that).
    Elsewhere(Box<Path>),
}

/// One place a chunk can be read from.
#[derive(Debug, Clone, Copy)]
struct Location {
    holder: u32,
    offset: u64,
    len: u32,
}

/// Chunks available on a local disk, by hash.
#[derive(Debug, Default, Clone)]
pub struct ChunkMap {
    /// The tree of [`ChunkMap::from_index`], for its files' paths.
    root: Option<Arc<Path>>,
    holders: Vec<Holder>,
    by_hash: HashMap<Hash, Location>,
}

impl ChunkMap {
    /// Every chunk of every live, hashed file in `index` (a scan of `root`,
    /// with the on-disk spellings the scan saw).
    pub fn from_index(
        root: &Path,
        index: &StoredIndex,
        disk_names: &BTreeMap<RelPath, PathBuf>,
    ) -> Self {
        let mut map = ChunkMap {
            root: Some(Arc::from(root)),
            holders: Vec::with_capacity(index.len()),
            by_hash: HashMap::with_capacity(index.len()),
        };
        for stored in index.values() {
            map.add_stored(stored, disk_names);
        }
        map
    }

    /// Adds a file of the map's own tree (see [`ChunkMap::from_index`]) as
    /// its index has it, if it is a live file whose content is known.
    pub fn add_stored(&mut self, stored: &StoredEntry, disk_names: &BTreeMap<RelPath, PathBuf>) {
        let e = &stored.entry;
        let (true, FileKind::File, Some(content), Some(local)) =
            (e.is_live(), e.kind, &e.content, &stored.local)
        else {
            return;
        };
        let path = match &self.root {
            Some(_) if disk_names.is_empty() => HolderPath::InRoot(e.path.clone()),
            Some(root) => {
                HolderPath::Elsewhere(disk_path(root, disk_names, &e.path).into_boxed_path())
            }
            None => return,
        };
        self.add_holder(path, local, e.size, e.mtime, content);
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
        self.add_holder(
            HolderPath::Elsewhere(path.into_boxed_path()),
            local,
            size,
            mtime,
            content,
        );
    }

    fn add_holder(
        &mut self,
        path: HolderPath,
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
        // The newest holder wins: an older one may have changed since.
        for (offset, c) in content.offsets() {
            self.by_hash.insert(
                c.hash,
                Location {
                    holder,
                    offset,
                    len: c.len,
                },
            );
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

    /// Reads chunk `hash` (of length `len`) from the file that holds it,
    /// if that file is unchanged and the bytes hash right: what a peer is
    /// served is always verified first.
    pub fn read_chunk(&self, hash: &Hash, len: u32) -> Option<Vec<u8>> {
        let loc = self.by_hash.get(hash)?;
        if loc.len != len {
            return None;
        }
        let file = self.open_checked(loc.holder)?;
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, loc.offset).ok()?;
        (Hash::of(&buf) == *hash).then_some(buf)
    }

    /// Opens a chunk holder's file if it is still what was hashed.
    fn open_checked(&self, holder: u32) -> Option<File> {
        let h = &self.holders[holder as usize];
        let joined;
        let path: &Path = match (&h.path, &self.root) {
            (HolderPath::InRoot(rel), Some(root)) => {
                joined = root.join(rel.as_str());
                &joined
            }
            (HolderPath::InRoot(_), None) => return None,
            (HolderPath::Elsewhere(path), _) => path,
        };
        let f = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .ok()?;
        // SAFETY: a valid descriptor; advice only.
        unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
                0,
                libc::POSIX_FADV_SEQUENTIAL,
            );
        }
        let md = f.metadata().ok()?;
        let same = md.ino() == h.inode
            && md.size() == h.size
            && md.mtime() == h.mtime.secs
            && md.mtime_nsec() as u32 == h.mtime.nanos;
        same.then_some(f)
    }
}

/// Copies chunks out of the files of one or more [`ChunkMap`]s (tried in
/// order), keeping the last file open.
pub struct ChunkReader<'m, const N: usize> {
    maps: [&'m ChunkMap; N],
    open: Option<(usize, u32, Option<File>)>,
    buf: Vec<u8>,
}

impl<'m, const N: usize> ChunkReader<'m, N> {
    /// A reader over `maps`.
    pub fn new(maps: [&'m ChunkMap; N]) -> Self {
        ChunkReader {
            maps,
            open: None,
            buf: Vec::new(),
        }
    }

    /// Copies the chunk `hash` (of length `len`) to `to` at `to_offset`,
    /// after checking that the bytes read hash to `hash`. Returns `Ok(false)`
    /// (and writes nothing) when the chunk is not known, its file changed, or
    /// the bytes do not match; an error only when writing `to` fails.
    pub fn copy(
        &mut self,
        hash: &Hash,
        len: usize,
        to: &File,
        to_offset: u64,
    ) -> std::io::Result<bool> {
        let Some((m, loc)) = self
            .maps
            .iter()
            .enumerate()
            .find_map(|(m, map)| map.by_hash.get(hash).map(|l| (m, *l)))
        else {
            return Ok(false);
        };
        if loc.len as usize != len {
            return Ok(false);
        }
        if self.open.as_ref().map(|(om, h, _)| (*om, *h)) != Some((m, loc.holder)) {
            self.open = Some((m, loc.holder, self.maps[m].open_checked(loc.holder)));
        }
        let Some((_, _, Some(file))) = &self.open else {
            return Ok(false);
        };
        self.buf.resize(len, 0);
        if file.read_exact_at(&mut self.buf, loc.offset).is_err() || Hash::of(&self.buf) != *hash {
            return Ok(false);
        }
        to.write_all_at(&self.buf, to_offset)?;
        Ok(true)
    }
}
