//! A content-addressed store of encrypted chunks: what a storage-only peer
//! keeps on disk instead of a folder's files.
//!
//! Each chunk is one file, `FOLDER/.meshsync/blobs/XY/HASH` (`HASH` the 64
//! hex digits of BLAKE3 of the ciphertext, `XY` its first two). Content
//! addressing is what a storage peer needs: it dedupes identical chunks
//! across files and versions, keeps several concurrent versions of one path
//! without naming them, serves a chunk by the only name it knows, and drops
//! a chunk no kept entry needs with one unlink. Nothing in the tree carries a
//! plaintext name, size or date: the directory can itself be copied off as a
//! backup of the ciphertext.
//!
//! Rules: a chunk is written only if its bytes hash to its name (a temporary
//! file in the same directory, renamed into place; durability is the
//! caller's batched `syncfs` before it records anything that needs the
//! chunk); a chunk is served only after it hashed right again, and one that
//! does not (a damaged disk, or tampering) is deleted so that it is fetched
//! again. It must never write outside its directory or follow a symlink
//! into one.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use meshsync_core::ids::Hash;
use meshsync_core::path::TEMP_PREFIX;

use crate::write::{WriteError, ensure_meta_dir, ensure_real_dirs};

/// The store's directory inside the folder's marker directory.
pub const BLOBS_DIR: &str = "blobs";

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
    /// tampering). It was removed.
    #[error("stored chunk {path} is damaged (its bytes do not hash to its name); removed")]
    Damaged {
        /// The file.
        path: PathBuf,
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

/// The encrypted chunks of one storage-only folder.
#[derive(Debug)]
pub struct BlobStore {
    root: PathBuf,
    dir: PathBuf,
    temps: AtomicU64,
}

impl BlobStore {
    /// The store of the folder at `root` (its `.meshsync/blobs`, created if
    /// missing; the folder marker `.meshsync` must exist); leftover temporary
    /// files of an interrupted write are removed.
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        // Never makes the folder marker: without it the folder is not there
        // (an unmounted disk), and ciphertext must not fill the mount point.
        let dir = ensure_meta_dir(root, Path::new(BLOBS_DIR), 0o700).map_err(|e| match e {
            WriteError::Io { path, source } => BlobError::Io { path, source },
            other => other.into(),
        })?;
        let store = BlobStore {
            root: root.to_path_buf(),
            dir,
            temps: AtomicU64::new(0),
        };
        for sub in store.subdirs()? {
            for e in fs::read_dir(&sub).map_err(io_err(&sub))?.flatten() {
                if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(store)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, hash: &Hash) -> PathBuf {
        let hex = hash.to_hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// Whether chunk `hash` of `len` bytes is stored (by its file's length;
    /// reads verify the bytes).
    pub fn has(&self, hash: &Hash, len: u32) -> bool {
        fs::symlink_metadata(self.path_of(hash))
            .is_ok_and(|m| m.is_file() && m.len() == u64::from(len))
    }

    /// Stores a chunk, if its bytes hash to `hash`. Not durable until the
    /// caller syncs the file system.
    pub fn write(&self, hash: &Hash, bytes: &[u8]) -> Result<(), BlobError> {
        if Hash::of(bytes) != *hash {
            return Err(BlobError::Mismatch {
                hash: hash.to_hex(),
            });
        }
        let target = self.path_of(hash);
        let hex = hash.to_hex();
        ensure_real_dirs(&self.dir, Path::new(&hex[..2]), 0o700)?;
        let n = self.temps.fetch_add(1, Ordering::Relaxed);
        let temp = target.with_file_name(format!(
            "{TEMP_PREFIX}{}-{}-{n}",
            &hex[..16],
            std::process::id()
        ));
        let result = (|| {
            let mut f = File::options()
                .write(true)
                .create_new(true)
                .open(&temp)
                .map_err(io_err(&temp))?;
            f.write_all(bytes).map_err(io_err(&temp))?;
            fs::rename(&temp, &target).map_err(io_err(&target))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }

    /// Reads chunk `hash` of `len` bytes and checks it: `Ok(None)` if it is
    /// not stored, [`BlobError::Damaged`] (and the file removed) if its bytes
    /// do not hash right.
    pub fn read(&self, hash: &Hash, len: u32) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.path_of(hash);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let size = f.metadata().map_err(io_err(&path))?.len();
        if size != u64::from(len) {
            return Ok(None);
        }
        let mut buf = vec![0u8; len as usize];
        f.read_exact(&mut buf).map_err(io_err(&path))?;
        if Hash::of(&buf) != *hash {
            let _ = fs::remove_file(&path);
            return Err(BlobError::Damaged { path });
        }
        Ok(Some(buf))
    }

    /// Removes a chunk (no error if it is not there).
    pub fn remove(&self, hash: &Hash) -> Result<(), BlobError> {
        let path = self.path_of(hash);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Every stored chunk's name (files whose names are not a hash are
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

    /// Makes every chunk written so far durable (one `syncfs`).
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
    fn chunks_are_stored_by_hash_and_verified_both_ways() {
        let dir = folder();
        let store = BlobStore::open(dir.path()).unwrap();
        let bytes = b"ciphertext bytes".to_vec();
        let hash = Hash::of(&bytes);
        assert!(!store.has(&hash, bytes.len() as u32));
        assert!(matches!(
            store.write(&Hash::of(b"other"), &bytes),
            Err(BlobError::Mismatch { .. })
        ));
        store.write(&hash, &bytes).unwrap();
        store.write(&hash, &bytes).unwrap();
        assert!(store.has(&hash, bytes.len() as u32));
        assert!(!store.has(&hash, 3));
        assert_eq!(
            store.read(&hash, bytes.len() as u32).unwrap(),
            Some(bytes.clone())
        );
        assert_eq!(store.list().unwrap(), vec![hash]);
        store.sync().unwrap();

        // Damage on disk is found on read, and the chunk is dropped.
        let path = store.path_of(&hash);
        let mut damaged = bytes.clone();
        damaged[0] ^= 1;
        fs::write(&path, &damaged).unwrap();
        assert!(matches!(
            store.read(&hash, bytes.len() as u32),
            Err(BlobError::Damaged { .. })
        ));
        assert!(!path.exists());
        assert_eq!(store.read(&hash, bytes.len() as u32).unwrap(), None);
        store.remove(&hash).unwrap();
    }

    #[test]
    fn stale_temps_are_removed_and_odd_names_ignored() {
        let dir = folder();
        let store = BlobStore::open(dir.path()).unwrap();
        let hash = Hash::of(b"x");
        store.write(&hash, b"x").unwrap();
        let sub = store.path_of(&hash).parent().unwrap().to_path_buf();
        fs::write(sub.join(format!("{TEMP_PREFIX}junk")), b"").unwrap();
        fs::write(sub.join("not-a-hash"), b"").unwrap();
        drop(store);
        let store = BlobStore::open(dir.path()).unwrap();
        assert!(!sub.join(format!("{TEMP_PREFIX}junk")).exists());
        assert_eq!(store.list().unwrap(), vec![hash]);
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
