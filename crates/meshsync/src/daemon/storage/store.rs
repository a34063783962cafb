//! A storage-only folder: ciphertext and sealed entries, nothing else.
//!
//! [`SealedStore`] keeps, per encrypted path, every version no other kept
//! version dominates ([`admit`]), each under a sequence number of this
//! device (so peers receive it incrementally, exactly like a read-write
//! device's own changes). An entry arrives verified (its signature) from any
//! peer; it waits as *pending* until every chunk it lists is in the blob
//! store, fetched from the peers that announced it, and is recorded only
//! after those chunks are durable. Chunks no kept or pending entry needs are
//! deleted.
//!
//! The folder's directory is never scanned and nothing in it is ever read
//! as plaintext; a storage-only device has no key to read it with.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use meshsync_core::encrypted_index::{Admission, SealedEntry, admit};
use meshsync_core::entry::{ChunkRef, FileKind};
use meshsync_core::ids::{DeviceId, Hash, ShareId};
use meshsync_core::keys::VerifyKey;
use meshsync_core::path::RelPath;
use meshsync_store::blobs::{BlobError, BlobStore};
use meshsync_store::db::IndexDb;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::super::folder::{Folder, FolderStateKind};
use super::super::{Daemon, FolderRuntime};

/// Chunks up to this size are written without a blocking-pool hand-off.
const INLINE_WRITE: usize = 256 << 10;
/// Chunk requests in flight while filling the store...
const WINDOW: usize = 64;
/// ... and their bytes at most (a few requests for the largest chunks).
const WINDOW_BYTES: u64 = 32 << 20;
/// Ciphertext fetched before the entries it completes are recorded.
const GROUP_BYTES: u64 = 256 << 20;
/// Entries recorded in one group.
const GROUP_ENTRIES: usize = 4096;

/// A storage-only folder's sealed index and blob store.
pub struct SealedStore {
    share: ShareId,
    verify: VerifyKey,
    tree_id: String,
    blobs: BlobStore,
    state: Mutex<StoreState>,
    /// The last sequence recorded (stream servers send what is new).
    pub sequence: watch::Sender<u64>,
}

#[derive(Default)]
struct StoreState {
    last_sequence: u64,
    /// Kept entries by their sequence here.
    by_seq: BTreeMap<u64, SealedEntry>,
    /// The sequences of each path's kept versions.
    by_path: HashMap<RelPath, Vec<u64>>,
    /// Admitted entries whose chunks are not all stored yet, by path.
    pending: HashMap<RelPath, Vec<SealedEntry>>,
    /// Which peers announced each chunk.
    sources: HashMap<Hash, Vec<DeviceId>>,
    /// Chunks of kept entries found damaged and removed: fetched again.
    repair: HashSet<ChunkRef>,
}

impl StoreState {
    fn kept_versions(&self, path: &RelPath) -> Vec<&SealedEntry> {
        self.by_path
            .get(path)
            .map(|seqs| seqs.iter().filter_map(|s| self.by_seq.get(s)).collect())
            .unwrap_or_default()
    }

    fn referenced(&self) -> HashSet<Hash> {
        self.by_seq
            .values()
            .chain(self.pending.values().flatten())
            .flat_map(|e| e.chunks.iter().map(|c| c.hash))
            .collect()
    }
}

/// One round's work: entries to complete and the chunks they miss.
struct Work {
    entries: Vec<SealedEntry>,
    missing: Vec<(ChunkRef, Vec<DeviceId>)>,
}

impl SealedStore {
    /// Opens the store of `folder` (its blob directory and its sealed index
    /// in `db`).
    pub fn open(folder: &Folder, verify: VerifyKey, db: &IndexDb) -> Result<Self> {
        let blobs = BlobStore::open(&folder.root)
            .with_context(|| format!("folder {}: blob store", folder.root.display()))?;
        let tree_id = format!("sealed-{}", folder.share);
        let stored = db.load_sealed(&tree_id)?;
        let mut state = StoreState {
            last_sequence: stored.last_sequence,
            ..StoreState::default()
        };
        for e in stored.entries {
            state
                .by_path
                .entry(e.path.clone())
                .or_default()
                .push(e.sequence);
            state.by_seq.insert(e.sequence, e);
        }
        Ok(SealedStore {
            share: folder.share,
            verify,
            tree_id,
            blobs,
            sequence: watch::channel(state.last_sequence).0,
            state: Mutex::new(state),
        })
    }

    /// The folder's verify key.
    pub fn verify_key(&self) -> &VerifyKey {
        &self.verify
    }

    /// Kept entries with a sequence above `since`, in order, and the last
    /// sequence.
    pub fn changes_since(&self, since: u64) -> (Vec<SealedEntry>, u64) {
        let st = self.state.lock().expect("poisoned");
        let entries = st
            .by_seq
            .range(since.saturating_add(1)..)
            .map(|(_, e)| e.clone())
            .collect();
        (entries, st.last_sequence)
    }

    /// Takes in entries `peer` announced, each already verified: admits the
    /// ones no kept or pending version dominates, and remembers `peer` as a
    /// source of their chunks. Returns how many were admitted.
    pub fn receive(&self, peer: DeviceId, entries: Vec<SealedEntry>) -> usize {
        let mut st = self.state.lock().expect("poisoned");
        let mut admitted = 0;
        for e in entries {
            for c in &e.chunks {
                let holders = st.sources.entry(c.hash).or_default();
                if !holders.contains(&peer) {
                    holders.push(peer);
                }
            }
            let kept: Vec<_> = st
                .kept_versions(&e.path)
                .into_iter()
                .map(|k| k.version.clone())
                .collect();
            let pending = st.pending.entry(e.path.clone()).or_default();
            let versions = kept.iter().chain(pending.iter().map(|p| &p.version));
            match admit(versions, &e.version) {
                Admission::Known | Admission::Dominated => {}
                Admission::Admit { supersedes } => {
                    // Positions past the kept ones are pending entries.
                    for i in supersedes.into_iter().rev() {
                        if let Some(p) = i.checked_sub(kept.len()) {
                            pending.remove(p);
                        }
                    }
                    pending.push(e);
                    admitted += 1;
                }
            }
        }
        st.pending.retain(|_, v| !v.is_empty());
        admitted
    }

    /// Whether damaged chunks wait to be fetched again.
    pub fn needs_repair(&self) -> bool {
        !self.state.lock().expect("poisoned").repair.is_empty()
    }

    /// Forgets `peer` as a source of chunks.
    pub fn forget_peer(&self, peer: &DeviceId) {
        let mut st = self.state.lock().expect("poisoned");
        for holders in st.sources.values_mut() {
            holders.retain(|p| p != peer);
        }
        st.sources.retain(|_, h| !h.is_empty());
    }

    /// Live files kept and the ciphertext bytes they hold.
    pub fn local_counts(&self) -> (u64, u64) {
        let st = self.state.lock().expect("poisoned");
        st.by_seq
            .values()
            .filter(|e| !e.deleted && e.kind == FileKind::File)
            .fold((0, 0), |(n, b), e| (n + 1, b + e.cipher_bytes()))
    }

    /// Pending file entries and the ciphertext bytes they list.
    fn need(&self) -> (u64, u64) {
        let st = self.state.lock().expect("poisoned");
        st.pending
            .values()
            .flatten()
            .filter(|e| !e.deleted && e.kind == FileKind::File)
            .fold((0, 0), |(n, b), e| (n + 1, b + e.cipher_bytes()))
    }

    /// Reads a stored chunk, verified. A damaged one is removed (and logged)
    /// and will be fetched again. Blocking.
    pub fn read_chunk(&self, hash: &Hash, len: u32) -> Option<Vec<u8>> {
        match self.blobs.read(hash, len) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!("folder {}: {e}", self.share);
                if matches!(e, BlobError::Damaged { .. }) {
                    self.state
                        .lock()
                        .expect("poisoned")
                        .repair
                        .insert(ChunkRef { hash: *hash, len });
                }
                None
            }
        }
    }

    /// The next group of pending entries (by path, bounded in bytes and
    /// count), and the chunks they miss with who announced them, plus
    /// damaged chunks to fetch again. Blocking (stats the blob store).
    fn next_work(&self) -> Work {
        let (mut candidates, repair, sources) = {
            let st = self.state.lock().expect("poisoned");
            let c: Vec<SealedEntry> = st.pending.values().flatten().cloned().collect();
            (c, st.repair.clone(), st.sources.clone())
        };
        candidates.sort_by(|a, b| a.path.cmp(&b.path).then(a.sequence.cmp(&b.sequence)));
        let mut entries = Vec::new();
        let mut wanted: Vec<ChunkRef> = repair.into_iter().collect();
        let mut seen: HashSet<Hash> = wanted.iter().map(|c| c.hash).collect();
        let mut bytes = 0u64;
        for e in candidates {
            if entries.len() >= GROUP_ENTRIES || bytes >= GROUP_BYTES {
                break;
            }
            for c in &e.chunks {
                if seen.insert(c.hash) && !self.blobs.has(&c.hash, c.len) {
                    bytes += u64::from(c.len);
                    wanted.push(*c);
                }
            }
            entries.push(e);
        }
        let missing = wanted
            .into_iter()
            .map(|c| {
                let from = sources.get(&c.hash).cloned().unwrap_or_default();
                (c, from)
            })
            .collect();
        Work { entries, missing }
    }

    /// Records the entries of `group` whose chunks are all stored (and
    /// durable: the caller synced), dropping the kept versions they
    /// supersede and the chunks nothing needs any more. Returns how many
    /// were recorded.
    fn commit(&self, db: &IndexDb, group: &[SealedEntry]) -> Result<usize> {
        let complete: Vec<&SealedEntry> = group
            .iter()
            .filter(|e| e.chunks.iter().all(|c| self.blobs.has(&c.hash, c.len)))
            .collect();
        let mut st = self.state.lock().expect("poisoned");
        let mut upserts: Vec<SealedEntry> = Vec::new();
        let mut removed: Vec<u64> = Vec::new();
        let mut dropped_chunks: Vec<Hash> = Vec::new();
        let mut last = st.last_sequence;
        for e in complete {
            // Out of pending (whatever happens to it now).
            let Some(pending) = st.pending.get_mut(&e.path) else {
                continue;
            };
            let Some(pos) = pending.iter().position(|p| p == e) else {
                continue;
            };
            pending.remove(pos);
            let kept: Vec<(u64, SealedEntry)> = st
                .by_path
                .get(&e.path)
                .map(|seqs| {
                    seqs.iter()
                        .filter_map(|s| st.by_seq.get(s).map(|k| (*s, k.clone())))
                        .collect()
                })
                .unwrap_or_default();
            let supersedes = match admit(kept.iter().map(|(_, k)| &k.version), &e.version) {
                Admission::Known | Admission::Dominated => continue,
                Admission::Admit { supersedes } => supersedes,
            };
            for i in supersedes {
                let (seq, old) = &kept[i];
                st.by_seq.remove(seq);
                if let Some(seqs) = st.by_path.get_mut(&e.path) {
                    seqs.retain(|s| s != seq);
                }
                removed.push(*seq);
                dropped_chunks.extend(old.chunks.iter().map(|c| c.hash));
            }
            last += 1;
            let mut entry = e.clone();
            entry.sequence = last;
            st.by_path.entry(e.path.clone()).or_default().push(last);
            st.by_seq.insert(last, entry.clone());
            upserts.push(entry);
        }
        st.pending.retain(|_, v| !v.is_empty());
        st.by_path.retain(|_, v| !v.is_empty());
        let repaired: Vec<ChunkRef> = st
            .repair
            .iter()
            .filter(|c| self.blobs.has(&c.hash, c.len))
            .copied()
            .collect();
        for c in repaired {
            st.repair.remove(&c);
        }
        if upserts.is_empty() && removed.is_empty() {
            return Ok(0);
        }
        let refs: Vec<&SealedEntry> = upserts.iter().collect();
        // Bookkeeping first in memory, then durably; a failed commit leaves
        // the entries pending again.
        if let Err(e) = db.commit_sealed(&self.tree_id, last, &refs, &removed) {
            for u in &upserts {
                st.by_seq.remove(&u.sequence);
                if let Some(seqs) = st.by_path.get_mut(&u.path) {
                    seqs.retain(|s| *s != u.sequence);
                }
                st.pending
                    .entry(u.path.clone())
                    .or_default()
                    .push(u.clone());
            }
            return Err(e.into());
        }
        st.last_sequence = last;
        if !dropped_chunks.is_empty() {
            let referenced = st.referenced();
            for h in dropped_chunks {
                if !referenced.contains(&h)
                    && let Err(e) = self.blobs.remove(&h)
                {
                    tracing::warn!("folder {}: {e}", self.share);
                }
            }
        }
        drop(st);
        let _ = self.sequence.send(last);
        Ok(upserts.len())
    }
}

/// A storage-only folder's turn in its loop: fetch what pending entries
/// miss, record the complete ones, until nothing more can be done now.
pub async fn run_round(daemon: &Arc<Daemon>, rt: &Arc<FolderRuntime>, store: &Arc<SealedStore>) {
    let folder = Arc::clone(&rt.folder);
    if !folder.marker_present() {
        let mut st = folder.state.lock().expect("poisoned");
        st.error = Some(format!(
            "folder marker {}/.meshsync is missing (unmounted disk?): folder stopped",
            folder.root.display()
        ));
        drop(st);
        daemon.set_state(&folder, FolderStateKind::Error);
        return;
    }
    // Each group's chunks are made durable and its entries recorded while
    // the next group's chunks are fetched.
    let mut recording: Option<tokio::task::JoinHandle<Result<usize>>> = None;
    for _round in 0..64 {
        let s = Arc::clone(store);
        let Ok(work) = tokio::task::spawn_blocking(move || s.next_work()).await else {
            return;
        };
        if work.entries.is_empty() && work.missing.is_empty() && recording.is_none() {
            break;
        }
        daemon.set_state(&folder, FolderStateKind::Syncing);
        set_need(&folder, store);
        let started = std::time::Instant::now();
        let wanted = work.missing.len();
        let fetched = fetch_missing(daemon, store, work.missing).await;
        tracing::debug!(
            "folder {}: stored {fetched} of {wanted} missing chunks in {:?}",
            store.share,
            started.elapsed()
        );
        let recorded = match recording.take() {
            Some(task) => finish_recording(daemon, &folder, task).await,
            None => 0,
        };
        if !work.entries.is_empty() {
            let (s, db) = (Arc::clone(store), Arc::clone(&daemon.db));
            let entries = work.entries;
            recording = Some(tokio::task::spawn_blocking(move || {
                s.blobs.sync()?;
                s.commit(&db, &entries)
            }));
        }
        if recorded == 0 && fetched == 0 {
            // No chunk came and nothing was recorded: record what is
            // complete now (entries without chunks, repaired ones) and stop
            // unless that was something.
            let now = match recording.take() {
                Some(task) => finish_recording(daemon, &folder, task).await,
                None => 0,
            };
            if now == 0 {
                break;
            }
        }
    }
    if let Some(task) = recording.take() {
        finish_recording(daemon, &folder, task).await;
    }
    set_need(&folder, store);
    let state = if folder.state.lock().expect("poisoned").need_files > 0 {
        FolderStateKind::Syncing
    } else {
        FolderStateKind::Idle
    };
    daemon.set_state(&folder, state);
}

/// Waits for a group's recording; returns how many entries it recorded.
async fn finish_recording(
    daemon: &Daemon,
    folder: &Folder,
    task: tokio::task::JoinHandle<Result<usize>>,
) -> usize {
    match task.await {
        Ok(Ok(n)) => {
            daemon
                .counters
                .files_synced
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            n
        }
        Ok(Err(e)) => {
            tracing::warn!(
                "folder {}: recording sealed entries: {e:#}",
                folder.root.display()
            );
            folder.state.lock().expect("poisoned").error = Some(format!("{e:#}"));
            0
        }
        Err(e) => {
            tracing::error!("sealed commit task failed: {e}");
            0
        }
    }
}

fn set_need(folder: &Folder, store: &SealedStore) {
    let (files, bytes) = store.need();
    let mut st = folder.state.lock().expect("poisoned");
    st.need_files = files;
    st.need_bytes = bytes;
}

/// Fetches chunks from their announcers (the least busy connected one
/// first, then the others), storing each after its hash checks. Returns how
/// many were stored.
async fn fetch_missing(
    daemon: &Arc<Daemon>,
    store: &Arc<SealedStore>,
    missing: Vec<(ChunkRef, Vec<DeviceId>)>,
) -> usize {
    let inflight: Arc<Mutex<HashMap<DeviceId, usize>>> = Arc::default();
    let mut tasks = JoinSet::new();
    let (mut stored, mut bytes) = (0, 0u64);
    for (chunk, holders) in missing {
        while tasks.len() >= WINDOW
            || (!tasks.is_empty() && bytes + u64::from(chunk.len) > WINDOW_BYTES)
        {
            if let Some(Ok((ok, len))) = tasks.join_next().await {
                stored += usize::from(ok);
                bytes -= u64::from(len);
            }
        }
        bytes += u64::from(chunk.len);
        let (d, s, inf) = (Arc::clone(daemon), Arc::clone(store), Arc::clone(&inflight));
        tasks.spawn(async move { (fetch_one(&d, &s, chunk, holders, &inf).await, chunk.len) });
    }
    while let Some(r) = tasks.join_next().await {
        if let Ok((true, _)) = r {
            stored += 1;
        }
    }
    stored
}

async fn fetch_one(
    daemon: &Arc<Daemon>,
    store: &Arc<SealedStore>,
    chunk: ChunkRef,
    mut holders: Vec<DeviceId>,
    inflight: &Mutex<HashMap<DeviceId, usize>>,
) -> bool {
    {
        let inf = inflight.lock().expect("poisoned");
        holders.sort_by_key(|p| inf.get(p).copied().unwrap_or(0));
    }
    for peer in holders {
        let Some(link) = daemon.peers.get(&peer) else {
            continue;
        };
        if !link
            .folders
            .lock()
            .expect("poisoned")
            .contains(&store.share)
        {
            continue;
        }
        *inflight.lock().expect("poisoned").entry(peer).or_default() += 1;
        let result = super::super::peer::fetch_chunk(&link.conn, store.share, chunk).await;
        *inflight.lock().expect("poisoned").entry(peer).or_default() -= 1;
        let bytes = match result {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!("chunk {} from {peer}: {e:#}", chunk.hash.to_hex());
                continue;
            }
        };
        let n = bytes.len() as u64;
        // A small chunk is written on this task: a hand-off to the blocking
        // pool costs more than the write (as for the daemon's small files).
        let written = if bytes.len() <= INLINE_WRITE {
            Ok(store.blobs.write(&chunk.hash, &bytes))
        } else {
            let s = Arc::clone(store);
            tokio::task::spawn_blocking(move || s.blobs.write(&chunk.hash, &bytes)).await
        };
        match written {
            Ok(Ok(())) => {
                link.bytes_in
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                daemon
                    .peers
                    .bytes_received
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                return true;
            }
            Ok(Err(BlobError::Mismatch { .. })) => {
                daemon
                    .counters
                    .chunks_rejected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    "peer {peer} sent an encrypted chunk that does not match its hash; refused"
                );
            }
            Ok(Err(e)) => {
                tracing::warn!("folder {}: {e}", store.share);
                return false;
            }
            Err(e) => {
                tracing::error!("blob write task failed: {e}");
                return false;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use meshsync_core::encrypted_index::seal_entry;
    use meshsync_core::entry::{FileEntry, Timestamp};
    use meshsync_core::ids::ShortId;
    use meshsync_core::keys::ReadWriteKey;
    use meshsync_core::version::VersionVector;

    use super::*;

    fn store(dir: &std::path::Path, db: &IndexDb) -> SealedStore {
        std::fs::create_dir_all(dir.join(".meshsync")).unwrap();
        let k = ReadWriteKey::from_secret(&[4; 32]);
        let blobs = BlobStore::open(dir).unwrap();
        let _ = db;
        SealedStore {
            share: k.share_id(),
            verify: k.verify_key().clone(),
            tree_id: "sealed-test".into(),
            blobs,
            state: Mutex::default(),
            sequence: watch::channel(0).0,
        }
    }

    fn sealed(path: &str, pairs: &[(u64, u64)], chunk: Option<&[u8]>) -> SealedEntry {
        let k = ReadWriteKey::from_secret(&[4; 32]);
        let mut version = VersionVector::new();
        for &(d, c) in pairs {
            let _ = version.bump_at(ShortId(d), c);
        }
        let content = chunk.map(|c| meshsync_core::entry::Content {
            hash: Hash::of(c),
            chunk_avg: 65536,
            chunks: vec![ChunkRef {
                hash: Hash::of(c),
                len: c.len() as u32,
            }],
        });
        let e = FileEntry {
            path: RelPath::new(path).unwrap(),
            kind: FileKind::File,
            size: chunk.map_or(0, |c| c.len() as u64),
            mtime: Timestamp::default(),
            permissions: 0o644,
            symlink_target: None,
            content,
            version,
            deleted: false,
            sequence: 1,
        };
        seal_entry(&k, &e, |c| {
            chunk
                .map(|b| k.data_key().encrypt_chunk(b).cipher_hash)
                .filter(|_| c.len > 0)
        })
        .unwrap()
    }

    fn ciphertext(chunk: &[u8]) -> Vec<u8> {
        ReadWriteKey::from_secret(&[4; 32])
            .data_key()
            .encrypt_chunk(chunk)
            .ciphertext
    }

    #[test]
    fn entries_wait_for_their_chunks_and_supersede_older_versions() {
        let dir = tempfile::tempdir().unwrap();
        let db = IndexDb::open(dir.path()).unwrap();
        let s = store(dir.path(), &db);
        let peer = DeviceId::from_bytes([1; 32]);
        let v1 = sealed("p", &[(1, 1)], Some(b"one"));
        assert_eq!(s.receive(peer, vec![v1.clone()]), 1);
        // Known again: nothing.
        assert_eq!(s.receive(peer, vec![v1.clone()]), 0);
        let work = s.next_work();
        assert_eq!(work.entries.len(), 1);
        assert_eq!(work.missing.len(), 1);
        assert_eq!(work.missing[0].1, vec![peer]);
        // Without the chunk nothing is recorded.
        assert_eq!(s.commit(&db, &work.entries).unwrap(), 0);
        let ct = ciphertext(b"one");
        s.blobs.write(&Hash::of(&ct), &ct).unwrap();
        assert_eq!(s.commit(&db, &work.entries).unwrap(), 1);
        assert_eq!(s.changes_since(0).0.len(), 1);
        assert_eq!(s.local_counts(), (1, ct.len() as u64));

        // A newer version replaces it and its chunk goes.
        let v2 = sealed("p", &[(1, 2)], Some(b"two"));
        assert_eq!(s.receive(peer, vec![v2]), 1);
        let ct2 = ciphertext(b"two");
        s.blobs.write(&Hash::of(&ct2), &ct2).unwrap();
        let work = s.next_work();
        assert_eq!(s.commit(&db, &work.entries).unwrap(), 1);
        let (entries, last) = s.changes_since(0);
        assert_eq!((entries.len(), last), (1, 2));
        assert_eq!(entries[0].sequence, 2);
        assert!(!s.blobs.has(&Hash::of(&ct), ct.len() as u32));
        assert!(s.blobs.has(&Hash::of(&ct2), ct2.len() as u32));
        // The older one arriving late is dominated.
        assert_eq!(s.receive(peer, vec![v1]), 0);

        // A concurrent version is kept beside it.
        let other = sealed("p", &[(2, 9)], None);
        assert_eq!(s.receive(peer, vec![other]), 1);
        let work = s.next_work();
        assert_eq!(s.commit(&db, &work.entries).unwrap(), 1);
        assert_eq!(s.changes_since(0).0.len(), 2);

        // Everything survives a restart.
        let stored = db.load_sealed("sealed-test").unwrap();
        assert_eq!(stored.last_sequence, 3);
        assert_eq!(stored.entries.len(), 2);
    }

    #[test]
    fn a_damaged_chunk_is_dropped_and_queued_for_repair() {
        let dir = tempfile::tempdir().unwrap();
        let db = IndexDb::open(dir.path()).unwrap();
        let s = store(dir.path(), &db);
        let ct = ciphertext(b"data");
        let h = Hash::of(&ct);
        s.blobs.write(&h, &ct).unwrap();
        let blob = s.blobs.dir().join(&h.to_hex()[..2]).join(h.to_hex());
        let mut tampered = ct.clone();
        tampered[3] ^= 0x40;
        std::fs::write(&blob, &tampered).unwrap();
        assert_eq!(s.read_chunk(&h, ct.len() as u32), None);
        assert!(!blob.exists());
        let work = s.next_work();
        assert_eq!(work.missing.len(), 1);
        assert_eq!(work.missing[0].0.hash, h);
    }
}
