//! The encrypted chunks of a storage-only folder: what a storage peer keeps
//! on disk instead of a folder's files.
//!
//! One file per sealed entry version (a **pack**), `FOLDER/.meshsync/blobs/
//! XY/ID`, holding the entry's encrypted chunks end to end in file order;
//! `ID` is the 64 hex digits of the pack's id (the caller's: BLAKE3 of the
//! entry's signed encoding), `XY` its first two. A chunk is found by its
//! entry and offset, and read back only after its bytes hashed right again.
//!
//! Why not one file per chunk (the first layout): a storage peer writing a
//! 1 GiB first sync created, renamed and `stat`ed 13,620 files, and those
//! file-system calls were 28 % of its CPU time on the 2-core machine
//! (docs/benchmarks.md, "Storage-only peers"), against a read-write peer that
//! writes two files. A pack is written like the reading device writes a file:
//! `pwrite`s into one preallocated file. What the chunk files gave for free is
//! done by the caller instead: a chunk shared by two kept versions is stored
//! twice (copied locally, not fetched again), and a superseded version goes
//! with one unlink of its pack, with no count of who else needs its chunks.
//! Nothing in the tree carries a plaintext name, size or date; a pack shows
//! which chunks make one entry, which the storage peer's index shows anyway.
//!
//! A pack is filled under `blobs/partial/ID` and renamed into place once
//! every chunk is in; durability is the caller's batched `syncfs` before it
//! records the entry. A partial pack survives a restart (its chunks are
//! checked again before they count) for [`PARTIAL_TTL`].
//!
//! Rules: a chunk is written only if its bytes hash to its name; a chunk is
//! served only after it hashed right again, and one that does not (a damaged
//! disk, or tampering) is reported ([`BlobError::Damaged`]) so that the
//! caller fetches it again and writes it in place. It must never write
//! outside its directory or follow a symlink into one.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use meshsync_core::ids::Hash;

use crate::write::{WriteError, ensure_meta_dir, ensure_real_dirs};

/// The store's directory inside the folder's marker directory.
pub const BLOBS_DIR: &str = "blobs";
/// Where packs are filled, inside [`BLOBS_DIR`].
const PARTIAL_DIR: &str = "partial";
/// The name prefix of packs filled ahead of their entries from hints.
const HINTED_PREFIX: &str = "hint-";
/// How long a partial pack left by an earlier run is kept for its entry to
/// come back.
pub const PARTIAL_TTL: Duration = Duration::from_secs(24 * 3600);

/// Why a chunk could not be stored or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// The bytes given do not hash to the chunk's name.
    #[error("chunk {hash} does not match its bytes")]
    Mismatch {
        /// The name (hex).
        hash: String,
    },
    /// A stored chunk no longer hashes to its name (a damaged disk or
    /// tampering).
    #[error(
        "stored chunk {hash} at {offset} of {path} is damaged (its bytes do not hash to its name)"
    )]
    Damaged {
        /// The pack.
        path: PathBuf,
        /// Where the chunk starts in it.
        offset: u64,
        /// The chunk's name (hex).
        hash: String,
    },
    /// The directory is not safe to write into (a symlink on the way).
    #[error(transparent)]
    Unsafe(#[from] WriteError),
    /// The file system failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A pack being filled: its file, open for writing at offsets.
#[derive(Debug)]
pub struct PartialPack {
    /// The partial file.
    pub file: File,
    /// Whether it was left by an earlier run (its chunks must be checked
    /// with [`BlobStore::check_chunk`] before they count).
    pub reused: bool,
}

/// The encrypted chunks of one storage-only folder, one pack per entry.
#[derive(Debug)]
pub struct BlobStore {
    root: PathBuf,
    dir: PathBuf,
    partial: PathBuf,
}

impl BlobStore {
    /// The store of the folder at `root` (its `.meshsync/blobs`, created if
    /// missing; the folder marker `.meshsync` must exist); partial packs
    /// older than [`PARTIAL_TTL`] and every pack filled for hints are
    /// removed.
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        // Never makes the folder marker: without it the folder is not there
        // (an unmounted disk), and ciphertext must not fill the mount point.
        let made = |sub: &Path| {
            ensure_meta_dir(root, sub, 0o700).map_err(|e| match e {
                WriteError::Io { path, source } => BlobError::Io { path, source },
                other => other.into(),
            })
        };
        let dir = made(Path::new(BLOBS_DIR))?;
        let partial = made(&Path::new(BLOBS_DIR).join(PARTIAL_DIR))?;
        let now = SystemTime::now();
        for e in fs::read_dir(&partial).map_err(io_err(&partial))?.flatten() {
            let stale = e.metadata().and_then(|m| m.modified()).map_or(true, |t| {
                now.duration_since(t).unwrap_or_default() > PARTIAL_TTL
            });
            if stale || parse_hex(&e.file_name().to_string_lossy()).is_none() {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(BlobStore {
            root: root.to_path_buf(),
            dir,
            partial,
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where pack `id` is kept once complete.
    pub fn pack_path(&self, id: &Hash) -> PathBuf {
        let hex = id.to_hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    fn partial_path(&self, id: &Hash) -> PathBuf {
        self.partial.join(id.to_hex())
    }

    /// Whether pack `id` is complete and `len` bytes long.
    pub fn has_pack(&self, id: &Hash, len: u64) -> bool {
        fs::symlink_metadata(self.pack_path(id)).is_ok_and(|m| m.is_file() && m.len() == len)
    }

    /// Opens pack `id` of `len` bytes for filling: the partial file an
    /// earlier run left (if it has that length), or a new one.
    pub fn open_partial(&self, id: &Hash, len: u64) -> Result<PartialPack, BlobError> {
        let path = self.partial_path(id);
        let open = |create: bool| {
            File::options()
                .read(true)
                .write(true)
                .create_new(create)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
        };
        if let Ok(file) = open(false) {
            if file.metadata().is_ok_and(|m| m.is_file() && m.len() == len) {
                return Ok(PartialPack { file, reused: true });
            }
            drop(file);
            let _ = fs::remove_file(&path);
        }
        let file = open(true).map_err(io_err(&path))?;
        file.set_len(len).map_err(io_err(&path))?;
        Ok(PartialPack {
            file,
            reused: false,
        })
    }

    /// Writes chunk `hash` at each of `targets` (a file and an offset: a
    /// pack being filled, or a complete one to repair), if its bytes hash
    /// to `hash`. Not durable until the caller syncs the file system.
    pub fn write_chunk<'a>(
        targets: impl IntoIterator<Item = (&'a File, u64)>,
        hash: &Hash,
        bytes: &[u8],
    ) -> Result<(), BlobError> {
        if Hash::of(bytes) != *hash {
            return Err(BlobError::Mismatch {
                hash: hash.to_hex(),
            });
        }
        for (file, offset) in targets {
            file.write_all_at(bytes, offset)
                .map_err(|source| BlobError::Io {
                    path: PathBuf::from(format!("pack (chunk {} at {offset})", hash.to_hex())),
                    source,
                })?;
        }
        Ok(())
    }

    /// Whether the `len` bytes at `offset` of `file` hash to `hash` (a
    /// partial pack's chunk from an earlier run).
    pub fn check_chunk(file: &File, offset: u64, hash: &Hash, len: u32) -> bool {
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset).is_ok() && Hash::of(&buf) == *hash
    }

    /// Moves a filled pack into place.
    pub fn finish(&self, id: &Hash) -> Result<(), BlobError> {
        let hex = id.to_hex();
        ensure_real_dirs(&self.dir, Path::new(&hex[..2]), 0o700)?;
        let target = self.pack_path(id);
        fs::rename(self.partial_path(id), &target).map_err(io_err(&target))
    }

    fn hinted_path(&self, key: &Hash) -> PathBuf {
        self.partial
            .join(format!("{HINTED_PREFIX}{}", key.to_hex()))
    }

    /// Creates (or empties) the pack filled ahead of its entry for hints
    /// under `key`, `len` bytes long so far (grow it with `set_len`). Such
    /// a pack is deleted when the store opens: after a restart its entry's
    /// pack is filled afresh.
    pub fn open_hinted(&self, key: &Hash) -> Result<File, BlobError> {
        let path = self.hinted_path(key);
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_err(&path))
    }

    /// Makes the pack filled for hints under `key` the partial pack `id`
    /// (the entry that claims it came).
    pub fn adopt_hinted(&self, key: &Hash, id: &Hash) -> Result<(), BlobError> {
        let target = self.partial_path(id);
        fs::rename(self.hinted_path(key), &target).map_err(io_err(&target))
    }

    /// Drops the pack filled for hints under `key`.
    pub fn discard_hinted(&self, key: &Hash) {
        let _ = fs::remove_file(self.hinted_path(key));
    }

    /// Drops a partial pack (its entry was superseded before it completed).
    pub fn discard_partial(&self, id: &Hash) {
        let _ = fs::remove_file(self.partial_path(id));
    }

    /// Opens complete pack `id` for reading and repairs.
    pub fn open_pack(&self, id: &Hash) -> Result<Option<File>, BlobError> {
        let path = self.pack_path(id);
        match File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Reads chunk `hash` of `len` bytes at `offset` of pack `id` and checks
    /// it: `Ok(None)` if the pack is not there or too short,
    /// [`BlobError::Damaged`] if the bytes do not hash right.
    pub fn read_chunk(
        &self,
        id: &Hash,
        offset: u64,
        hash: &Hash,
        len: u32,
    ) -> Result<Option<Vec<u8>>, BlobError> {
        let Some(file) = self.open_pack(id)? else {
            return Ok(None);
        };
        let mut buf = vec![0u8; len as usize];
        match file.read_exact_at(&mut buf, offset) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(io_err(&self.pack_path(id))(e)),
        }
        if Hash::of(&buf) != *hash {
            return Err(BlobError::Damaged {
                path: self.pack_path(id),
                offset,
                hash: hash.to_hex(),
            });
        }
        Ok(Some(buf))
    }

    /// Removes a complete pack (no error if it is not there).
    pub fn remove(&self, id: &Hash) -> Result<(), BlobError> {
        let path = self.pack_path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Every complete pack's id (files whose names are not an id are
    /// skipped).
    pub fn list(&self) -> Result<Vec<Hash>, BlobError> {
        let mut out = Vec::new();
        for sub in self.subdirs()? {
            for e in fs::read_dir(&sub).map_err(io_err(&sub))?.flatten() {
                if let Some(hash) = e.file_name().to_str().and_then(parse_hex) {
                    out.push(hash);
                }
            }
        }
        Ok(out)
    }

    /// Makes every pack written or moved so far durable (one `syncfs`).
    pub fn sync(&self) -> Result<(), BlobError> {
        Ok(crate::write::sync_filesystem(&self.root)?)
    }

    fn subdirs(&self) -> Result<Vec<PathBuf>, BlobError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir)
            .map_err(io_err(&self.dir))?
            .flatten()
        {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.len() == 2
                && name.bytes().all(|b| b.is_ascii_hexdigit())
                && e.file_type().is_ok_and(|t| t.is_dir())
            {
                out.push(e.path());
            }
        }
        Ok(out)
    }
}

fn parse_hex(name: &str) -> Option<Hash> {
    if name.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in name.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(Hash(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshsync_core::path::META_DIR;

    fn folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(META_DIR)).unwrap();
        dir
    }

    #[test]
    fn a_folder_without_its_marker_gets_no_store_and_no_marker() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            BlobStore::open(dir.path()),
            Err(BlobError::Io { .. })
        ));
        assert!(!dir.path().join(META_DIR).exists());
    }

    #[test]
    fn packs_are_filled_verified_moved_and_read_back() {
        let dir = folder();
        let store = BlobStore::open(dir.path()).unwrap();
        let (a, b) = (b"first chunk".to_vec(), b"second".to_vec());
        let (ha, hb) = (Hash::of(&a), Hash::of(&b));
        let id = Hash::of(b"an entry");
        let len = (a.len() + b.len()) as u64;
        assert!(!store.has_pack(&id, len));
        let p = store.open_partial(&id, len).unwrap();
        assert!(!p.reused);
        assert!(matches!(
            BlobStore::write_chunk([(&p.file, 0)], &hb, &a),
            Err(BlobError::Mismatch { .. })
        ));
        BlobStore::write_chunk([(&p.file, 0)], &ha, &a).unwrap();
        BlobStore::write_chunk([(&p.file, a.len() as u64)], &hb, &b).unwrap();
        // Not served before it is complete and moved.
        assert_eq!(store.read_chunk(&id, 0, &ha, a.len() as u32).unwrap(), None);
        store.finish(&id).unwrap();
        store.sync().unwrap();
        assert!(store.has_pack(&id, len));
        assert_eq!(
            store
                .read_chunk(&id, a.len() as u64, &hb, b.len() as u32)
                .unwrap(),
            Some(b.clone())
        );
        assert_eq!(store.list().unwrap(), vec![id]);

        // Damage on disk is found on read; a repair writes it in place.
        let path = store.pack_path(&id);
        let mut bytes = fs::read(&path).unwrap();
        bytes[1] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            store.read_chunk(&id, 0, &ha, a.len() as u32),
            Err(BlobError::Damaged { offset: 0, .. })
        ));
        assert_eq!(
            store
                .read_chunk(&id, a.len() as u64, &hb, b.len() as u32)
                .unwrap(),
            Some(b.clone()),
            "the other chunk of the pack is still served"
        );
        let f = store.open_pack(&id).unwrap().unwrap();
        BlobStore::write_chunk([(&f, 0)], &ha, &a).unwrap();
        assert_eq!(
            store.read_chunk(&id, 0, &ha, a.len() as u32).unwrap(),
            Some(a)
        );
        // A read past the end finds nothing.
        assert_eq!(store.read_chunk(&id, len, &ha, 11).unwrap(), None);
        store.remove(&id).unwrap();
        store.remove(&id).unwrap();
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn a_partial_pack_is_taken_up_again_and_its_chunks_checked() {
        let dir = folder();
        let store = BlobStore::open(dir.path()).unwrap();
        let a = b"chunk".to_vec();
        let id = Hash::of(b"entry");
        let p = store.open_partial(&id, 10).unwrap();
        BlobStore::write_chunk([(&p.file, 0)], &Hash::of(&a), &a).unwrap();
        drop((p, store));
        fs::write(dir.path().join(".meshsync/blobs/partial/not-an-id"), b"").unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        assert!(
            !dir.path()
                .join(".meshsync/blobs/partial/not-an-id")
                .exists()
        );
        let p = store.open_partial(&id, 10).unwrap();
        assert!(p.reused);
        assert!(BlobStore::check_chunk(&p.file, 0, &Hash::of(&a), 5));
        assert!(!BlobStore::check_chunk(&p.file, 5, &Hash::of(&a), 5));
        // Another length: a new, empty partial pack.
        drop(p);
        let p = store.open_partial(&id, 12).unwrap();
        assert!(!p.reused);
        assert!(!BlobStore::check_chunk(&p.file, 0, &Hash::of(&a), 5));
        store.discard_partial(&id);
        assert!(!store.partial_path(&id).exists());

        // A pack filled for hints becomes the entry's partial pack; one left
        // by an earlier run is gone when the store opens again.
        let key = Hash::of(b"hinted");
        let f = store.open_hinted(&key).unwrap();
        f.set_len(5).unwrap();
        BlobStore::write_chunk([(&f, 0)], &Hash::of(&a), &a).unwrap();
        store.adopt_hinted(&key, &id).unwrap();
        let p = store.open_partial(&id, 5).unwrap();
        assert!(p.reused && BlobStore::check_chunk(&p.file, 0, &Hash::of(&a), 5));
        store.open_hinted(&key).unwrap();
        drop(store);
        let store = BlobStore::open(dir.path()).unwrap();
        assert!(!store.hinted_path(&key).exists());
        assert!(store.partial_path(&id).exists());
    }

    #[test]
    fn a_symlinked_marker_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join(META_DIR)).unwrap();
        assert!(matches!(
            BlobStore::open(dir.path()),
            Err(BlobError::Unsafe(_))
        ));
    }
}
