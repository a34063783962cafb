//! Chunks of big files this device is still downloading that it already
//! holds: served to peers from the partial file, and announced to them
//! (protocol version 3, `ChunksHeld`), so that peers pulling the same big
//! file at once fetch parts of it from each other instead of each getting
//! all of it from the device they started from.
//!
//! Main type: [`HeldChunks`], one per folder. A download registers its
//! partial file ([`HeldChunks::start`]), each chunk once it is verified and
//! written ([`HeldChunks::add`]), and leaves when the file is renamed into
//! place or given up ([`HeldChunks::stop`]); from then on the index and the
//! chunk map speak for the file. Each connection keeps a [`HeldCursor`] of
//! what it has announced ([`HeldChunks::news`]).
//!
//! It must never serve a byte it has not just read back and hashed: a chunk
//! is read from the partial file and checked against its hash on every
//! request ([`HeldChunks::read`]), as the chunk map does for whole files.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use meshsync_core::entry::{ChunkRef, Content};
use meshsync_core::ids::Hash;
use meshsync_core::path::RelPath;

/// Files with fewer chunks are not announced while downloading: they are
/// whole (and in the index) a moment later anyway.
pub const MIN_CHUNKS: usize = 64;

/// A file version being downloaded: its path and content hash.
type FileKey = (RelPath, Hash);

struct HeldFile {
    partial: Arc<PathBuf>,
    /// Chunk numbers held, in the order they were verified.
    log: Vec<u32>,
}

#[derive(Clone, Copy)]
struct Place {
    offset: u64,
    len: u32,
}

#[derive(Default)]
struct Inner {
    files: HashMap<FileKey, HeldFile>,
    by_hash: HashMap<Hash, (Arc<PathBuf>, Place)>,
}

/// The verified chunks of a folder's partial downloads.
#[derive(Default)]
pub struct HeldChunks {
    inner: Mutex<Inner>,
}

/// What one connection has announced of each download.
#[derive(Default)]
pub struct HeldCursor {
    sent: HashMap<FileKey, usize>,
}

impl HeldChunks {
    /// Whether a download of `content` is worth announcing.
    pub fn worth_it(content: &Content) -> bool {
        content.chunks.len() >= MIN_CHUNKS
    }

    /// Registers the download of the version `file` of `path` in
    /// `partial`, holding already the chunks `present` (number, offset,
    /// chunk; verified when the download started or resumed).
    pub fn start(
        &self,
        path: &RelPath,
        file: Hash,
        partial: PathBuf,
        present: impl IntoIterator<Item = (u32, u64, ChunkRef)>,
    ) {
        let mut inner = self.inner.lock().expect("poisoned");
        let partial = Arc::new(partial);
        inner.files.insert(
            (path.clone(), file),
            HeldFile {
                partial,
                log: Vec::new(),
            },
        );
        for (n, offset, chunk) in present {
            add_locked(&mut inner, path, file, n, offset, chunk);
        }
    }

    /// Notes chunk number `n` (`chunk`, at `offset`) of the download of the
    /// version `file` of `path` as verified and written.
    pub fn add(&self, path: &RelPath, file: Hash, n: u32, offset: u64, chunk: ChunkRef) {
        let mut inner = self.inner.lock().expect("poisoned");
        add_locked(&mut inner, path, file, n, offset, chunk);
    }

    /// The download of `content` to `path` is over (renamed into place or
    /// given up).
    pub fn stop(&self, path: &RelPath, file: &Hash) {
        let mut inner = self.inner.lock().expect("poisoned");
        if let Some(gone) = inner.files.remove(&(path.clone(), *file)) {
            inner
                .by_hash
                .retain(|_, (partial, _)| !Arc::ptr_eq(partial, &gone.partial));
        }
    }

    /// Reads chunk `hash` of length `len` from the partial file that holds
    /// it, if the bytes there still hash right.
    pub fn read(&self, hash: &Hash, len: u32) -> Option<Vec<u8>> {
        let (partial, place) = self
            .inner
            .lock()
            .expect("poisoned")
            .by_hash
            .get(hash)
            .cloned()?;
        if place.len != len {
            return None;
        }
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&*partial)
            .ok()?;
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, place.offset).ok()?;
        (Hash::of(&buf) == *hash).then_some(buf)
    }

    /// Chunk numbers verified since `cursor` last looked, per download (at
    /// most one entry per download, numbers in the order verified).
    pub fn news(&self, cursor: &mut HeldCursor) -> Vec<(RelPath, Hash, Vec<u32>)> {
        let inner = self.inner.lock().expect("poisoned");
        cursor.sent.retain(|key, _| inner.files.contains_key(key));
        let mut out = Vec::new();
        for (key, file) in &inner.files {
            let sent = cursor.sent.entry(key.clone()).or_default();
            if file.log.len() > *sent {
                out.push((key.0.clone(), key.1, file.log[*sent..].to_vec()));
                *sent = file.log.len();
            }
        }
        out
    }
}

fn add_locked(inner: &mut Inner, path: &RelPath, file: Hash, n: u32, offset: u64, chunk: ChunkRef) {
    let Some(file) = inner.files.get_mut(&(path.clone(), file)) else {
        return;
    };
    file.log.push(n);
    let partial = Arc::clone(&file.partial);
    inner.by_hash.entry(chunk.hash).or_insert((
        partial,
        Place {
            offset,
            len: chunk.len,
        },
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_chunks_are_served_and_announced_once() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("partial");
        let bodies: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let content = Content {
            hash: Hash::of(b"whole"),
            chunk_avg: 65536,
            chunks: bodies
                .iter()
                .map(|b| ChunkRef {
                    hash: Hash::of(b),
                    len: b.len() as u32,
                })
                .collect(),
        };
        // Chunks 0 and 2 are on disk; 1 and 3 are still zeros.
        let mut disk = vec![0u8; bodies.iter().map(Vec::len).sum()];
        disk[..100].copy_from_slice(&bodies[0]);
        disk[201..303].copy_from_slice(&bodies[2]);
        std::fs::write(&partial, &disk).unwrap();
        let path = RelPath::new("big").unwrap();
        let at = |n: usize| {
            let offset = content.chunks[..n].iter().map(|c| u64::from(c.len)).sum();
            (n as u32, offset, content.chunks[n])
        };
        let add = |held: &HeldChunks, n: usize| {
            let (n, offset, chunk) = at(n);
            held.add(&path, content.hash, n, offset, chunk);
        };
        let held = HeldChunks::default();
        held.start(&path, content.hash, partial.clone(), [at(0)]);
        add(&held, 2);
        let (mut c1, mut c2) = (HeldCursor::default(), HeldCursor::default());
        assert_eq!(
            held.news(&mut c1),
            [(path.clone(), content.hash, vec![0, 2])]
        );
        assert!(held.news(&mut c1).is_empty());
        assert_eq!(
            held.read(&Hash::of(&bodies[2]), 102),
            Some(bodies[2].clone())
        );
        // Not registered, or registered with the wrong length: nothing.
        assert_eq!(held.read(&Hash::of(&bodies[1]), 101), None);
        assert_eq!(held.read(&Hash::of(&bodies[2]), 7), None);
        // Registered but not what the disk holds (a liar's chunk number):
        // nothing is served.
        add(&held, 3);
        assert_eq!(held.read(&Hash::of(&bodies[3]), 103), None);
        assert_eq!(held.news(&mut c1), [(path.clone(), content.hash, vec![3])]);
        assert_eq!(held.news(&mut c2).len(), 1);
        // Another download: nothing is noted.
        held.add(&path, Hash::of(b"other"), 1, 100, content.chunks[1]);
        assert!(held.news(&mut c1).is_empty());
        held.stop(&path, &content.hash);
        assert_eq!(held.read(&Hash::of(&bodies[0]), 100), None);
        assert!(held.news(&mut c1).is_empty());
    }
}
