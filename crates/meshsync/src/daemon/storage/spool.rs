//! The ciphertext a reading device made while sealing, kept until the
//! storage peer asks for it.
//!
//! The sealed entry of a file needs the ciphertext hash of every chunk, so
//! the sending device encrypts chunks before the storage peer can ask for
//! them; encrypting them a second time on request would double the cost of
//! a first sync (measured: with a 128 MiB memory cache and no hints, 78 % of
//! a 1 GiB folder's chunks were encrypted twice). So the ciphertext waits
//! here. With chunk hints ([`super::hints`]) the storage peer asks for a
//! chunk shortly after it was made, so it waits in memory first (up to
//! [`MEMORY_BYTES`]; a sealing thread that finds it full waits a moment for
//! the peer to take some, so it does not run far ahead of a peer it shares
//! the cores with); beyond that, or when the peer does not take any, in
//! append-only segment files under the folder's `.meshsync/spool/` (the
//! page cache keeps them warm; a segment deleted soon after is often never
//! written back at all). A segment is deleted once every chunk in it was
//! served, or after [`SPOOL_TTL`]; the segments hold at most
//! [`SPOOL_BYTES`], and what does not fit is encrypted again on request. It
//! holds ciphertext only, and never anything a peer could not already ask
//! for.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
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

/// Ciphertext kept in memory before any goes to segment files: with chunk
/// hints the storage peer asks for a chunk a second or so after it was
/// made, so most never touch the disk (a write and a read back through the
/// page cache were about 0.8 s of CPU per GiB here).
pub const MEMORY_BYTES: u64 = 128 << 20;

/// How long a sealing thread waits for the storage peer to take ciphertext
/// out of a full memory spool before it writes to a segment file instead
/// (after one such wait in vain, none until something is taken again).
const MEMORY_WAIT: Duration = Duration::from_secs(1);

/// Ciphertext waiting in memory.
#[derive(Default)]
struct MemorySpool {
    chunks: HashMap<Hash, (Instant, Vec<u8>)>,
    bytes: u64,
    limit: u64,
    hits: u64,
    /// A wait for room ended in vain (the peer is not taking any).
    stalled: bool,
    /// When expired ciphertext was last looked for.
    expired_at: Option<Instant>,
}

impl MemorySpool {
    /// Drops ciphertext older than [`SPOOL_TTL`] (looked for at most once a
    /// second: a scan of every chunk per insert cost more than the rest).
    fn expire(&mut self, now: Instant) {
        if self
            .expired_at
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.expired_at = Some(now);
        let bytes = &mut self.bytes;
        self.chunks.retain(|_, (made, ct)| {
            let keep = now.saturating_duration_since(*made) <= SPOOL_TTL;
            if !keep {
                *bytes -= ct.len() as u64;
            }
            keep
        });
    }

    fn fits(&self, len: u64) -> bool {
        self.bytes + len <= self.limit
    }
}

/// A spool shared by the sealing threads and the chunk server: memory
/// first, then segment files. The locks are held to find a place, never
/// while bytes are written to or read from a segment.
pub struct SharedSpool {
    disk: Mutex<Spool>,
    memory: Mutex<MemorySpool>,
    /// Signalled when ciphertext is taken out of memory.
    taken: Condvar,
}

impl SharedSpool {
    /// See [`Spool::open`]; up to [`MEMORY_BYTES`] wait in memory.
    pub fn open(root: &Path) -> Self {
        Self::with_memory(root, MEMORY_BYTES)
    }

    /// A spool that keeps up to `memory` bytes in memory (none without a
    /// usable directory: such a spool keeps nothing).
    pub fn with_memory(root: &Path, memory: u64) -> Self {
        let disk = Spool::open(root);
        let limit = if disk.dir.is_some() { memory } else { 0 };
        SharedSpool {
            disk: Mutex::new(disk),
            memory: Mutex::new(MemorySpool {
                limit,
                ..MemorySpool::default()
            }),
            taken: Condvar::new(),
        }
    }

    /// Keeps `ciphertext` (named `hash`) for a later request, if it fits:
    /// in memory, waiting up to [`MEMORY_WAIT`] for the storage peer to make
    /// room (so a sealer runs at most that far ahead of the peer's fetching,
    /// on a machine whose cores they share), else in a segment file.
    pub fn insert(&self, hash: Hash, ciphertext: Vec<u8>, now: Instant) {
        let len = ciphertext.len() as u64;
        {
            let mut m = self.memory.lock().expect("poisoned");
            m.expire(now);
            if m.chunks.contains_key(&hash) {
                return;
            }
            if !m.fits(len) && !m.stalled && len <= m.limit {
                let (guard, wait) = self
                    .taken
                    .wait_timeout_while(m, MEMORY_WAIT, |m| !m.fits(len))
                    .expect("poisoned");
                m = guard;
                m.stalled = wait.timed_out();
            }
            if m.fits(len) {
                m.bytes += len;
                m.chunks.insert(hash, (now, ciphertext));
                return;
            }
        }
        let reserved = self.disk.lock().expect("poisoned").reserve(hash, len, now);
        if let Some((file, at)) = reserved {
            let ok = file.write_all_at(&ciphertext, at).is_ok();
            self.disk.lock().expect("poisoned").publish(&hash, ok);
        }
    }

    /// The ciphertext named `hash` of `len` bytes, if it waits here (it is
    /// then forgotten).
    pub fn take(&self, hash: &Hash, len: u32) -> Option<Vec<u8>> {
        {
            let mut m = self.memory.lock().expect("poisoned");
            if m.chunks
                .get(hash)
                .is_some_and(|(_, ct)| ct.len() == len as usize)
            {
                let (_, ct) = m.chunks.remove(hash).expect("present");
                m.bytes -= ct.len() as u64;
                m.hits += 1;
                m.stalled = false;
                self.taken.notify_all();
                return Some(ct);
            }
        }
        let (file, at) = self.disk.lock().expect("poisoned").locate(hash, len)?;
        let mut buf = vec![0u8; len as usize];
        let read = file.read_exact_at(&mut buf, at);
        self.disk.lock().expect("poisoned").forget(hash);
        read.ok().map(|()| buf)
    }

    /// Requests served from the spool (memory or disk), and requests that
    /// missed it.
    pub fn stats(&self) -> (u64, u64) {
        let memory_hits = self.memory.lock().expect("poisoned").hits;
        let s = self.disk.lock().expect("poisoned");
        (memory_hits + s.hits, s.misses)
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
        spool.insert(Hash::of(&a), a.clone(), Instant::now());
        assert_eq!(spool.take(&Hash::of(&a), 100), None);
        assert!(!dir.path().join(META_DIR).exists());
    }

    #[test]
    fn ciphertext_waits_in_memory_first() {
        let dir = folder_with_marker();
        let spool = SharedSpool::with_memory(dir.path(), 1500);
        let now = Instant::now();
        let (a, b) = (vec![1u8; 1000], vec![2u8; 1000]);
        spool.insert(Hash::of(&a), a.clone(), now);
        // Over the memory budget: to a segment file.
        spool.insert(Hash::of(&b), b.clone(), now);
        assert_eq!(spool.disk.lock().unwrap().bytes, 1000);
        assert_eq!(spool.take(&Hash::of(&a), 999), None);
        assert_eq!(spool.take(&Hash::of(&a), 1000), Some(a.clone()));
        assert_eq!(spool.take(&Hash::of(&b), 1000), Some(b));
        assert_eq!(spool.take(&Hash::of(&a), 1000), None);
        assert_eq!(spool.memory.lock().unwrap().bytes, 0);
        // Memory expires like segments do.
        spool.insert(Hash::of(&a), a.clone(), now);
        let c = vec![3u8; 10];
        spool.insert(Hash::of(&c), c, now + SPOOL_TTL + Duration::from_secs(1));
        assert_eq!(spool.take(&Hash::of(&a), 1000), None);
    }

    #[test]
    fn ciphertext_waits_in_segments_that_go_when_served() {
        let dir = folder_with_marker();
        let spool = SharedSpool::with_memory(dir.path(), 0);
        let now = Instant::now();
        let a = vec![1u8; 1000];
        let b = vec![2u8; 500];
        spool.insert(Hash::of(&a), a.clone(), now);
        spool.insert(Hash::of(&b), b.clone(), now);
        assert_eq!(spool.take(&Hash::of(&b), 500), Some(b.clone()));
        assert_eq!(spool.take(&Hash::of(&b), 500), None);
        assert_eq!(spool.take(&Hash::of(&a), 999), None);
        assert_eq!(spool.take(&Hash::of(&a), 1000), Some(a));
        assert_eq!(spool.stats(), (2, 2));
        assert_eq!(spool.disk.lock().unwrap().bytes, 0);
        drop(spool);
        let left = std::fs::read_dir(dir.path().join(".meshsync/spool"))
            .unwrap()
            .count();
        assert_eq!(left, 0);
    }

    #[test]
    fn old_segments_expire_and_leftovers_are_cleared_on_open() {
        let dir = folder_with_marker();
        let spool = SharedSpool::with_memory(dir.path(), 0);
        let t0 = Instant::now();
        let a = vec![3u8; 100];
        spool.insert(Hash::of(&a), a.clone(), t0);
        let later = t0 + SPOOL_TTL + Duration::from_secs(1);
        let b = vec![4u8; 100];
        spool.insert(Hash::of(&b), b.clone(), later);
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
