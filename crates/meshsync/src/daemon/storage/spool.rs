//! The ciphertext a reading device made while sealing, kept until the
//! storage peer asks for it.
//!
//! A storage peer can fetch nothing of a file before its sealed entry
//! arrives, and the entry needs the ciphertext hash of every chunk: the
//! sending device encrypts the whole file first, then the peer asks for the
//! chunks one by one. Encrypting them a second time on request would double
//! the cost of the first sync (measured: with a 128 MiB memory cache, 78 % of
//! a 1 GiB folder's chunks were encrypted twice). So the ciphertext goes to
//! append-only segment files under the folder's `.meshsync/spool/` (the page
//! cache keeps them warm; a segment deleted soon after is often never
//! written back at all) and a request reads it back. A segment is deleted
//! once every chunk in it was served, or after [`SPOOL_TTL`]; the spool holds
//! at most [`SPOOL_BYTES`], and what does not fit is encrypted again on
//! request. It holds ciphertext only, and never anything a peer could not
//! already ask for.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshsync_core::ids::Hash;

/// The most ciphertext waiting in the spool.
pub const SPOOL_BYTES: u64 = 4 << 30;
/// A segment is cut once it holds this much.
const SEGMENT_BYTES: u64 = 256 << 20;
/// How long ciphertext waits for its request.
pub const SPOOL_TTL: Duration = Duration::from_secs(600);

struct Segment {
    id: u64,
    path: PathBuf,
    file: Arc<File>,
    written: u64,
    /// Chunks in it not served yet.
    waiting: usize,
    created: Instant,
}

/// A folder's spool of ciphertext waiting for a storage peer.
pub struct Spool {
    dir: Option<PathBuf>,
    segments: VecDeque<Segment>,
    next_id: u64,
    /// Where each waiting chunk is: segment id, offset, length, and whether
    /// its bytes are written yet.
    by_cipher: HashMap<Hash, (u64, u64, u32, bool)>,
    bytes: u64,
    /// Requests served from the spool, and requests that missed it.
    pub hits: u64,
    /// See `hits`.
    pub misses: u64,
}

impl Spool {
    /// The spool of the folder at `root`: `.meshsync/spool/`, emptied of
    /// what an earlier run left. Without a usable directory the spool keeps
    /// nothing (every request encrypts again).
    pub fn open(root: &Path) -> Self {
        // Never makes the folder marker (see `ensure_meta_dir`).
        let made = meshsync_store::write::ensure_meta_dir(root, Path::new("spool"), 0o700);
        let dir = match made {
            Ok(dir) => {
                if let Ok(entries) = std::fs::read_dir(&dir) {
                    for e in entries.flatten() {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
                Some(dir)
            }
            Err(e) => {
                tracing::warn!("no ciphertext spool in {}: {e}", root.display());
                None
            }
        };
        Spool {
            dir,
            segments: VecDeque::new(),
            next_id: 0,
            by_cipher: HashMap::new(),
            bytes: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// Makes room for a ciphertext of `len` bytes named `hash`: the file and
    /// offset to write it at, or `None` if it does not fit (or is there
    /// already). Write it, then [`Spool::publish`] it.
    fn reserve(&mut self, hash: Hash, len: u64, now: Instant) -> Option<(Arc<File>, u64)> {
        self.expire(now);
        if self.by_cipher.contains_key(&hash) || self.bytes + len > SPOOL_BYTES {
            return None;
        }
        let dir = self.dir.as_ref()?;
        let need_new = self
            .segments
            .back()
            .is_none_or(|s| s.written + len > SEGMENT_BYTES);
        if need_new {
            let id = self.next_id;
            self.next_id += 1;
            let path = dir.join(format!("segment-{id}"));
            let file = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| tracing::debug!("spool {}: {e}", path.display()))
                .ok()?;
            self.segments.push_back(Segment {
                id,
                path,
                file: Arc::new(file),
                written: 0,
                waiting: 0,
                created: now,
            });
        }
        let seg = self.segments.back_mut().expect("a segment");
        let at = seg.written;
        seg.written += len;
        seg.waiting += 1;
        self.bytes += len;
        // Claimed, not readable until published.
        self.by_cipher.insert(hash, (seg.id, at, len as u32, false));
        Some((Arc::clone(&seg.file), at))
    }

    /// Makes a reserved ciphertext readable (`written`), or gives its place
    /// up (the write failed).
    fn publish(&mut self, hash: &Hash, written: bool) {
        if written {
            if let Some(slot) = self.by_cipher.get_mut(hash) {
                slot.3 = true;
            }
        } else {
            self.forget(hash);
        }
    }

    /// Forgets a chunk; deletes its segment once nothing in it waits (unless
    /// it is the one being written).
    fn forget(&mut self, hash: &Hash) {
        let Some((id, _, len, _)) = self.by_cipher.remove(hash) else {
            return;
        };
        self.bytes -= u64::from(len);
        let Some(pos) = self.segments.iter().position(|s| s.id == id) else {
            return;
        };
        let last = self.segments.len() - 1;
        let seg = &mut self.segments[pos];
        seg.waiting -= 1;
        if seg.waiting == 0 && pos != last {
            let seg = self.segments.remove(pos).expect("present");
            let _ = std::fs::remove_file(&seg.path);
        }
    }

    /// Where the ciphertext named `hash` of `len` bytes waits, if it does:
    /// read it there, then [`Spool::forget`] it.
    fn locate(&mut self, hash: &Hash, len: u32) -> Option<(Arc<File>, u64)> {
        let found = match self.by_cipher.get(hash) {
            Some(&(id, at, stored, true)) if stored == len => self
                .segments
                .iter()
                .find(|s| s.id == id)
                .map(|s| (Arc::clone(&s.file), at)),
            _ => None,
        };
        match found {
            Some(_) => self.hits += 1,
            None => self.misses += 1,
        }
        found
    }

    /// Drops segments older than [`SPOOL_TTL`].
    fn expire(&mut self, now: Instant) {
        while self
            .segments
            .front()
            .is_some_and(|s| now.duration_since(s.created) > SPOOL_TTL)
        {
            let seg = self.segments.pop_front().expect("present");
            let _ = std::fs::remove_file(&seg.path);
            self.by_cipher.retain(|_, (id, _, len, _)| {
                if *id == seg.id {
                    self.bytes -= u64::from(*len);
                    false
                } else {
                    true
                }
            });
        }
    }
}

/// A spool shared by the sealing threads and the chunk server: the lock is
/// held to find a place, never while the bytes are written or read.
pub struct SharedSpool(Mutex<Spool>);

impl SharedSpool {
    /// See [`Spool::open`].
    pub fn open(root: &Path) -> Self {
        SharedSpool(Mutex::new(Spool::open(root)))
    }

    /// Keeps `ciphertext` (named `hash`) for a later request, if it fits.
    pub fn insert(&self, hash: Hash, ciphertext: &[u8], now: Instant) {
        let reserved = self
            .0
            .lock()
            .expect("poisoned")
            .reserve(hash, ciphertext.len() as u64, now);
        if let Some((file, at)) = reserved {
            let ok = file.write_all_at(ciphertext, at).is_ok();
            self.0.lock().expect("poisoned").publish(&hash, ok);
        }
    }

    /// The ciphertext named `hash` of `len` bytes, if it waits here (it is
    /// then forgotten).
    pub fn take(&self, hash: &Hash, len: u32) -> Option<Vec<u8>> {
        let (file, at) = self.0.lock().expect("poisoned").locate(hash, len)?;
        let mut buf = vec![0u8; len as usize];
        let read = file.read_exact_at(&mut buf, at);
        self.0.lock().expect("poisoned").forget(hash);
        read.ok().map(|()| buf)
    }

    /// Requests served from the spool, and requests that missed it.
    pub fn stats(&self) -> (u64, u64) {
        let s = self.0.lock().expect("poisoned");
        (s.hits, s.misses)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        for s in &self.segments {
            let _ = std::fs::remove_file(&s.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshsync_core::path::META_DIR;

    fn folder_with_marker() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(META_DIR)).unwrap();
        dir
    }

    #[test]
    fn no_marker_no_spool_and_no_marker_made() {
        let dir = tempfile::tempdir().unwrap();
        let spool = SharedSpool::open(dir.path());
        let a = vec![5u8; 100];
        spool.insert(Hash::of(&a), &a, Instant::now());
        assert_eq!(spool.take(&Hash::of(&a), 100), None);
        assert!(!dir.path().join(META_DIR).exists());
    }

    #[test]
    fn ciphertext_waits_in_segments_that_go_when_served() {
        let dir = folder_with_marker();
        let spool = SharedSpool::open(dir.path());
        let now = Instant::now();
        let a = vec![1u8; 1000];
        let b = vec![2u8; 500];
        spool.insert(Hash::of(&a), &a, now);
        spool.insert(Hash::of(&b), &b, now);
        assert_eq!(spool.take(&Hash::of(&b), 500), Some(b.clone()));
        assert_eq!(spool.take(&Hash::of(&b), 500), None);
        assert_eq!(spool.take(&Hash::of(&a), 999), None);
        assert_eq!(spool.take(&Hash::of(&a), 1000), Some(a));
        assert_eq!(spool.stats(), (2, 2));
        assert_eq!(spool.0.lock().unwrap().bytes, 0);
        drop(spool);
        let left = std::fs::read_dir(dir.path().join(".meshsync/spool"))
            .unwrap()
            .count();
        assert_eq!(left, 0);
    }

    #[test]
    fn old_segments_expire_and_leftovers_are_cleared_on_open() {
        let dir = folder_with_marker();
        let spool = SharedSpool::open(dir.path());
        let t0 = Instant::now();
        let a = vec![3u8; 100];
        spool.insert(Hash::of(&a), &a, t0);
        let later = t0 + SPOOL_TTL + Duration::from_secs(1);
        let b = vec![4u8; 100];
        spool.insert(Hash::of(&b), &b, later);
        assert_eq!(spool.take(&Hash::of(&a), 100), None);
        assert_eq!(spool.take(&Hash::of(&b), 100), Some(b));
        std::mem::forget(spool);
        std::fs::write(dir.path().join(".meshsync/spool/segment-9"), b"x").unwrap();
        let _spool = Spool::open(dir.path());
        let left = std::fs::read_dir(dir.path().join(".meshsync/spool"))
            .unwrap()
            .count();
        assert_eq!(left, 0);
    }
}
