//! A storage-only folder: ciphertext and sealed entries, nothing else.
//!
//! [`SealedStore`] keeps, per encrypted path, every version no other kept
//! version dominates ([`admit`]), each under a sequence number of this
//! device (so peers receive it incrementally, exactly like a read-write
//! device's own changes). An entry arrives verified (its signature) from any
//! peer; it waits as *pending* while its pack (one file per entry version,
//! [`BlobStore`]) is filled: each chunk copied from a kept pack that holds
//! it, or fetched from the peers that announced it. It is recorded only
//! after its pack is complete, in place and durable. A version that is
//! superseded takes its pack with it.
//!
//! The folder's directory is never scanned and nothing in it is ever read
//! as plaintext; a storage-only device has no key to read it with.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use meshsync_core::encrypted_index::{Admission, SealedEntry, admit};
use meshsync_core::entry::{ChunkRef, FileKind};
use meshsync_core::ids::{DeviceId, Hash, ShareId};
use meshsync_core::keys::VerifyKey;
use meshsync_core::path::RelPath;
use meshsync_core::version::VersionVector;
use meshsync_proto::sealed::ChunkHint;
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
/// Ciphertext fetched for hints in one round (after the pending entries').
const HINT_ROUND_BYTES: u64 = 64 << 20;
/// Ciphertext held for hints no entry claimed yet, at most.
const HINT_BYTES: u64 = 2 << 30;
/// How long a pack filled for hints waits for its entry after the last hint.
const HINT_TTL: Duration = Duration::from_secs(120);

/// The pack of an entry: BLAKE3 of its signed encoding (unique per entry
/// version, path included), or `None` for an entry without chunks.
fn pack_id(e: &SealedEntry) -> Option<Hash> {
    (!e.chunks.is_empty()).then(|| Hash::of(&e.signed_encoding()))
}

/// Where each chunk of `e` starts in its pack.
fn offsets(e: &SealedEntry) -> impl Iterator<Item = (ChunkRef, u64)> + '_ {
    e.chunks.iter().scan(0u64, |at, c| {
        let here = *at;
        *at += u64::from(c.len);
        Some((*c, here))
    })
}

/// Where a chunk of a kept entry is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Location {
    pack: Hash,
    offset: u64,
}

/// A pending entry's pack being filled.
struct Fill {
    file: Arc<File>,
    /// Each chunk, where it goes, and whether it is in.
    slots: Vec<(ChunkRef, u64, bool)>,
    missing: usize,
    /// For a pack filled ahead of its entry, from hints (not signed: see
    /// [`SealedStore::hint`]): when the last hint came (an unclaimed pack
    /// is dropped [`HINT_TTL`] after it).
    hinted: Option<Instant>,
}

impl Fill {
    /// The pack's length so far.
    fn len(&self) -> u64 {
        self.slots
            .last()
            .map_or(0, |(c, at, _)| at + u64::from(c.len))
    }
}

/// The key of the partial pack filled for hints of the entry at `path` and
/// `version` (the entry's own pack id is known only when it comes).
fn hint_key(path: &RelPath, version: &VersionVector) -> Hash {
    let mut bytes = b"meshsync hinted pack\0".to_vec();
    bytes.extend_from_slice(path.as_str().as_bytes());
    bytes.push(0);
    for (device, counter) in version.counters() {
        bytes.extend_from_slice(&device.0.to_be_bytes());
        bytes.extend_from_slice(&counter.to_be_bytes());
    }
    Hash::of(&bytes)
}

/// One place fetched bytes of a chunk go: a slot of a pack being filled
/// (`slot`: its pack and index), or a kept pack whose copy was damaged.
struct Target {
    file: Arc<File>,
    offset: u64,
    slot: Option<(Hash, usize)>,
}

/// Every place the bytes of one chunk go.
type Targets = Vec<Target>;

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
    /// Admitted entries whose packs are not complete yet, by path.
    pending: HashMap<RelPath, Vec<SealedEntry>>,
    /// Which peers announced each chunk.
    sources: HashMap<Hash, Vec<DeviceId>>,
    /// Where the chunks of kept entries are.
    located: HashMap<Hash, Vec<Location>>,
    /// Packs of pending entries being filled, by pack id.
    filling: HashMap<Hash, Fill>,
    /// Chunks of kept packs found damaged: fetched again, written in place.
    repair: HashMap<ChunkRef, Vec<Location>>,
    /// Bytes of the packs filled for hints that no entry claimed yet.
    hinted_bytes: u64,
}

impl StoreState {
    fn kept_versions(&self, path: &RelPath) -> Vec<&SealedEntry> {
        self.by_path
            .get(path)
            .map(|seqs| seqs.iter().filter_map(|s| self.by_seq.get(s)).collect())
            .unwrap_or_default()
    }

    fn locate(&mut self, e: &SealedEntry) {
        let Some(pack) = pack_id(e) else { return };
        for (c, offset) in offsets(e) {
            self.located
                .entry(c.hash)
                .or_default()
                .push(Location { pack, offset });
        }
    }

    fn unlocate(&mut self, e: &SealedEntry) {
        let Some(pack) = pack_id(e) else { return };
        for c in &e.chunks {
            if let Some(locs) = self.located.get_mut(&c.hash) {
                locs.retain(|l| l.pack != pack);
                if locs.is_empty() {
                    self.located.remove(&c.hash);
                }
            }
        }
        self.repair.retain(|_, locs| {
            locs.retain(|l| l.pack != pack);
            !locs.is_empty()
        });
    }
}

/// One round's work: entries to complete and the chunks they miss, with
/// who announced them and where their bytes go.
struct Work {
    entries: Vec<SealedEntry>,
    missing: Vec<(ChunkRef, Vec<DeviceId>, Targets)>,
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
            state.locate(&e);
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
        let mut dropped = Vec::new();
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
                            dropped.extend(pack_id(&pending.remove(p)));
                        }
                    }
                    pending.push(e);
                    admitted += 1;
                }
            }
        }
        st.pending.retain(|_, v| !v.is_empty());
        for id in dropped {
            if st.filling.remove(&id).is_some() {
                self.blobs.discard_partial(&id);
            }
        }
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

    /// Reads a stored chunk, verified, from any kept pack that holds it. A
    /// damaged copy is logged, never served, and queued to be fetched again.
    /// Blocking.
    pub fn read_chunk(&self, hash: &Hash, len: u32) -> Option<Vec<u8>> {
        let locations = self
            .state
            .lock()
            .expect("poisoned")
            .located
            .get(hash)
            .cloned()
            .unwrap_or_default();
        for loc in locations {
            match self.blobs.read_chunk(&loc.pack, loc.offset, hash, len) {
                Ok(Some(bytes)) => return Some(bytes),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("folder {}: {e}", self.share);
                    if matches!(e, BlobError::Damaged { .. }) {
                        let mut st = self.state.lock().expect("poisoned");
                        let locs = st.repair.entry(ChunkRef { hash: *hash, len }).or_default();
                        if !locs.contains(&loc) {
                            locs.push(loc);
                        }
                    }
                }
            }
        }
        None
    }

    /// Opens the packs of `entries` that are not being filled yet (taking
    /// up what an earlier run left, each chunk checked).
    fn start_fills(&self, entries: &[SealedEntry]) {
        let new: Vec<(Hash, &SealedEntry)> = {
            let st = self.state.lock().expect("poisoned");
            entries
                .iter()
                .filter_map(|e| pack_id(e).map(|id| (id, e)))
                .filter(|(id, _)| !st.filling.contains_key(id))
                .collect()
        };
        for (id, e) in new {
            if self.adopt_hinted(id, e) {
                continue;
            }
            let partial = match self.blobs.open_partial(&id, e.cipher_bytes()) {
                Ok(p) => p,
                Err(err) => {
                    tracing::warn!("folder {}: {err}", self.share);
                    continue;
                }
            };
            let slots: Vec<(ChunkRef, u64, bool)> = offsets(e)
                .map(|(c, at)| {
                    let had =
                        partial.reused && BlobStore::check_chunk(&partial.file, at, &c.hash, c.len);
                    (c, at, had)
                })
                .collect();
            let missing = slots.iter().filter(|s| !s.2).count();
            let fill = Fill {
                file: Arc::new(partial.file),
                slots,
                missing,
                hinted: None,
            };
            self.state
                .lock()
                .expect("poisoned")
                .filling
                .insert(id, fill);
        }
    }

    /// Takes the pack filled for hints of `e` (same path and version) as
    /// its pack `id`: a chunk counts where the hint listed the same chunk at
    /// the same place and it is in; the rest is fetched. Returns whether
    /// there was one.
    fn adopt_hinted(&self, id: Hash, e: &SealedEntry) -> bool {
        let key = hint_key(&e.path, &e.version);
        let hinted = {
            let mut st = self.state.lock().expect("poisoned");
            if st.filling.get(&key).is_none_or(|f| f.hinted.is_none()) {
                return false;
            }
            let fill = st.filling.remove(&key).expect("present");
            st.hinted_bytes -= fill.len();
            fill
        };
        let adopted = self.blobs.adopt_hinted(&key, &id).and_then(|()| {
            hinted
                .file
                .set_len(e.cipher_bytes())
                .map_err(|source| BlobError::Io {
                    path: self.blobs.dir().join("partial").join(id.to_hex()),
                    source,
                })
        });
        if let Err(err) = adopted {
            tracing::warn!("folder {}: {err}", self.share);
            self.blobs.discard_hinted(&key);
            return false;
        }
        let slots: Vec<(ChunkRef, u64, bool)> = offsets(e)
            .enumerate()
            .map(|(i, (c, at))| {
                let had = hinted
                    .slots
                    .get(i)
                    .is_some_and(|&(hc, hat, had)| had && hc == c && hat == at);
                (c, at, had)
            })
            .collect();
        let missing = slots.iter().filter(|s| !s.2).count();
        tracing::info!(
            "folder {}: an entry takes up the pack filled ahead from its hints ({} of {} chunks in)",
            self.share,
            slots.len() - missing,
            slots.len()
        );
        let fill = Fill {
            file: hinted.file,
            slots,
            missing,
            hinted: None,
        };
        self.state
            .lock()
            .expect("poisoned")
            .filling
            .insert(id, fill);
        true
    }

    /// Takes in a hint from `peer`: chunks of an entry it is still sealing.
    /// They are fetched into a partial pack of their own, ahead of the
    /// entry; nothing in it is served or recorded, and it counts for the
    /// entry only where the signed entry lists the same chunks at the same
    /// places ([`SealedStore::adopt_hinted`]). A hint for an entry this store
    /// has or does not want, one that does not follow the previous hints of
    /// its entry, or one over [`HINT_BYTES`] is ignored; a pack no entry
    /// claims within [`HINT_TTL`] is dropped. Returns whether there is
    /// something new to fetch. Blocking (creates or grows a file).
    pub fn hint(&self, peer: DeviceId, hint: ChunkHint, now: Instant) -> bool {
        let mut st = self.state.lock().expect("poisoned");
        let kept: Vec<VersionVector> = st
            .kept_versions(&hint.path)
            .into_iter()
            .map(|k| k.version.clone())
            .chain(
                st.pending
                    .get(&hint.path)
                    .into_iter()
                    .flatten()
                    .map(|p| p.version.clone()),
            )
            .collect();
        if !matches!(admit(&kept, &hint.version), Admission::Admit { .. }) {
            return false;
        }
        let key = hint_key(&hint.path, &hint.version);
        let added: u64 = hint.chunks.iter().map(|c| u64::from(c.len)).sum();
        if st.hinted_bytes + added > HINT_BYTES {
            return false;
        }
        let start = match st.filling.get(&key) {
            Some(fill) if fill.hinted.is_some() => {
                if fill.slots.len() != hint.first as usize {
                    return false;
                }
                fill.len()
            }
            Some(_) => return false,
            None if hint.first == 0 => {
                let file = match self.blobs.open_hinted(&key) {
                    Ok(f) => f,
                    Err(err) => {
                        tracing::debug!("folder {}: {err}", self.share);
                        return false;
                    }
                };
                st.filling.insert(
                    key,
                    Fill {
                        file: Arc::new(file),
                        slots: Vec::new(),
                        missing: 0,
                        hinted: Some(now),
                    },
                );
                0
            }
            None => return false,
        };
        for c in &hint.chunks {
            let holders = st.sources.entry(c.hash).or_default();
            if !holders.contains(&peer) {
                holders.push(peer);
            }
        }
        let fill = st.filling.get_mut(&key).expect("inserted above");
        if fill.file.set_len(start + added).is_err() {
            return false;
        }
        let mut at = start;
        for c in hint.chunks {
            fill.slots.push((c, at, false));
            at += u64::from(c.len);
        }
        fill.missing += fill.slots.len() - hint.first as usize;
        fill.hinted = Some(now);
        st.hinted_bytes += added;
        true
    }

    /// Drops the packs filled for hints that no entry claimed in time.
    fn expire_hints(&self, now: Instant) {
        let mut st = self.state.lock().expect("poisoned");
        let stale: Vec<Hash> = st
            .filling
            .iter()
            .filter(|(_, f)| f.hinted.is_some_and(|at| now.duration_since(at) > HINT_TTL))
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            if let Some(fill) = st.filling.remove(&key) {
                st.hinted_bytes -= fill.len();
                self.blobs.discard_hinted(&key);
            }
        }
    }

    /// Copies the chunks that `targets` want from kept packs that hold them
    /// (verified); returns the chunks still wanted. Blocking.
    fn copy_local(&self, wanted: Vec<(ChunkRef, Targets)>) -> Vec<(ChunkRef, Targets)> {
        let mut left = Vec::new();
        for (c, targets) in wanted {
            let copied = self
                .read_chunk(&c.hash, c.len)
                .is_some_and(|bytes| self.put_chunk(&c, &bytes, &targets).is_ok());
            if !copied {
                left.push((c, targets));
            }
        }
        left
    }

    /// Writes a chunk's bytes to `targets` if they hash to its name (one
    /// hash for every target), and counts it in where it was wanted.
    /// Blocking (small `pwrite`s).
    fn put_chunk(
        &self,
        chunk: &ChunkRef,
        bytes: &[u8],
        targets: &Targets,
    ) -> Result<(), BlobError> {
        BlobStore::write_chunk(
            targets.iter().map(|t| (&*t.file, t.offset)),
            &chunk.hash,
            bytes,
        )?;
        let mut st = self.state.lock().expect("poisoned");
        for (pack, i) in targets.iter().filter_map(|t| t.slot) {
            if let Some(fill) = st.filling.get_mut(&pack)
                && let Some(slot) = fill.slots.get_mut(i)
                && !slot.2
                && slot.0 == *chunk
            {
                slot.2 = true;
                fill.missing -= 1;
            }
        }
        if targets.iter().any(|t| t.slot.is_none()) {
            st.repair.remove(chunk);
        }
        Ok(())
    }

    /// The next group of pending entries (by path, bounded in bytes and
    /// count), their packs opened, chunks kept elsewhere copied in, and the
    /// chunks still missing with who announced them and where they go, plus
    /// damaged chunks to fetch again. Blocking.
    fn next_work(&self, now: Instant) -> Work {
        self.expire_hints(now);
        let (mut candidates, sources) = {
            let st = self.state.lock().expect("poisoned");
            let c: Vec<SealedEntry> = st.pending.values().flatten().cloned().collect();
            (c, st.sources.clone())
        };
        candidates.sort_by(|a, b| a.path.cmp(&b.path).then(a.sequence.cmp(&b.sequence)));
        let mut entries = Vec::new();
        let mut bytes = 0u64;
        for e in candidates {
            if entries.len() >= GROUP_ENTRIES || bytes >= GROUP_BYTES {
                break;
            }
            bytes += e.cipher_bytes();
            entries.push(e);
        }
        self.start_fills(&entries);
        // Each missing chunk once, with every place it goes.
        let mut order: Vec<ChunkRef> = Vec::new();
        let mut wanted: HashMap<ChunkRef, Targets> = HashMap::new();
        {
            let st = self.state.lock().expect("poisoned");
            for e in &entries {
                let Some((id, fill)) =
                    pack_id(e).and_then(|id| st.filling.get(&id).map(|f| (id, f)))
                else {
                    continue;
                };
                for (i, (c, at, _)) in fill.slots.iter().enumerate().filter(|(_, s)| !s.2) {
                    let t = wanted.entry(*c).or_insert_with(|| {
                        order.push(*c);
                        Vec::new()
                    });
                    t.push(Target {
                        file: Arc::clone(&fill.file),
                        offset: *at,
                        slot: Some((id, i)),
                    });
                }
            }
            // Then chunks of entries not received yet, as far as hinted.
            let mut hinted: Vec<(&Hash, &Fill)> = st
                .filling
                .iter()
                .filter(|(_, f)| f.hinted.is_some() && f.missing > 0)
                .collect();
            hinted.sort_by_key(|(_, f)| f.hinted);
            let mut hint_bytes = 0u64;
            for (key, fill) in hinted {
                for (i, (c, at, _)) in fill.slots.iter().enumerate().filter(|(_, s)| !s.2) {
                    if hint_bytes >= HINT_ROUND_BYTES {
                        break;
                    }
                    hint_bytes += u64::from(c.len);
                    let t = wanted.entry(*c).or_insert_with(|| {
                        order.push(*c);
                        Vec::new()
                    });
                    t.push(Target {
                        file: Arc::clone(&fill.file),
                        offset: *at,
                        slot: Some((*key, i)),
                    });
                }
            }
            for (c, locs) in &st.repair {
                for loc in locs {
                    let Ok(Some(file)) = self.blobs.open_pack(&loc.pack) else {
                        continue;
                    };
                    let t = wanted.entry(*c).or_insert_with(|| {
                        order.push(*c);
                        Vec::new()
                    });
                    t.push(Target {
                        file: Arc::new(file),
                        offset: loc.offset,
                        slot: None,
                    });
                }
            }
        }
        let wanted: Vec<(ChunkRef, Targets)> = order
            .into_iter()
            .filter_map(|c| wanted.remove(&c).map(|t| (c, t)))
            .collect();
        let missing = self
            .copy_local(wanted)
            .into_iter()
            .map(|(c, targets)| {
                let from = sources.get(&c.hash).cloned().unwrap_or_default();
                (c, from, targets)
            })
            .collect();
        Work { entries, missing }
    }

    /// Records the entries of `group` whose packs are complete: moves the
    /// packs into place, makes them durable (one `syncfs`), then records
    /// the entries, dropping the kept versions they supersede and their
    /// packs. Returns how many were recorded. Blocking.
    fn record(&self, db: &IndexDb, group: &[SealedEntry]) -> Result<usize> {
        let mut complete: Vec<&SealedEntry> = Vec::new();
        {
            let st = self.state.lock().expect("poisoned");
            for e in group {
                match pack_id(e) {
                    None => complete.push(e),
                    Some(id) if st.filling.get(&id).is_some_and(|f| f.missing == 0) => {
                        complete.push(e)
                    }
                    Some(_) => {}
                }
            }
        }
        let mut moved = Vec::new();
        complete.retain(|e| match pack_id(e) {
            None => true,
            Some(id) => match self.blobs.finish(&id) {
                Ok(()) => {
                    moved.push(id);
                    true
                }
                Err(err) => {
                    tracing::warn!("folder {}: {err}", self.share);
                    self.state.lock().expect("poisoned").filling.remove(&id);
                    false
                }
            },
        });
        self.blobs.sync()?;
        let mut st = self.state.lock().expect("poisoned");
        for id in &moved {
            st.filling.remove(id);
        }
        let mut upserts: Vec<SealedEntry> = Vec::new();
        let mut removed: Vec<u64> = Vec::new();
        let mut dropped_packs: Vec<Hash> = Vec::new();
        let mut last = st.last_sequence;
        // The pack of an entry that is not recorded now goes, unless it is
        // the pack of a kept version (the same entry, recorded already).
        let unwanted = |st: &StoreState, e: &SealedEntry| {
            pack_id(e).filter(|id| {
                !st.kept_versions(&e.path)
                    .iter()
                    .any(|k| pack_id(k).as_ref() == Some(id))
            })
        };
        for e in complete {
            // Out of pending (whatever happens to it now).
            let Some(pos) = st
                .pending
                .get(&e.path)
                .and_then(|pending| pending.iter().position(|p| p == e))
            else {
                dropped_packs.extend(unwanted(&st, e));
                continue;
            };
            let pending = st.pending.get_mut(&e.path).expect("found above");
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
                Admission::Known | Admission::Dominated => {
                    dropped_packs.extend(unwanted(&st, e));
                    continue;
                }
                Admission::Admit { supersedes } => supersedes,
            };
            for i in supersedes {
                let (seq, old) = &kept[i];
                st.by_seq.remove(seq);
                if let Some(seqs) = st.by_path.get_mut(&e.path) {
                    seqs.retain(|s| s != seq);
                }
                st.unlocate(old);
                removed.push(*seq);
                dropped_packs.extend(pack_id(old));
            }
            last += 1;
            let mut entry = e.clone();
            entry.sequence = last;
            st.by_path.entry(e.path.clone()).or_default().push(last);
            st.locate(&entry);
            st.by_seq.insert(last, entry.clone());
            upserts.push(entry);
        }
        st.pending.retain(|_, v| !v.is_empty());
        st.by_path.retain(|_, v| !v.is_empty());
        if !upserts.is_empty() || !removed.is_empty() {
            let refs: Vec<&SealedEntry> = upserts.iter().collect();
            // Bookkeeping first in memory, then durably; a failed commit
            // leaves the entries pending again (their packs are fetched
            // again).
            if let Err(e) = db.commit_sealed(&self.tree_id, last, &refs, &removed) {
                for u in &upserts {
                    st.by_seq.remove(&u.sequence);
                    if let Some(seqs) = st.by_path.get_mut(&u.path) {
                        seqs.retain(|s| *s != u.sequence);
                    }
                    st.unlocate(u);
                    if let Some(id) = pack_id(u) {
                        let _ = self.blobs.remove(&id);
                    }
                    st.pending
                        .entry(u.path.clone())
                        .or_default()
                        .push(u.clone());
                }
                return Err(e.into());
            }
            st.last_sequence = last;
        }
        drop(st);
        for id in dropped_packs {
            if let Err(e) = self.blobs.remove(&id) {
                tracing::warn!("folder {}: {e}", self.share);
            }
        }
        if !upserts.is_empty() || !removed.is_empty() {
            let _ = self.sequence.send(last);
        }
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
        let Ok(work) = tokio::task::spawn_blocking(move || s.next_work(Instant::now())).await
        else {
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
        // At most one recording in flight; a round that completes no entry
        // (chunks fetched ahead from hints) does not wait for it.
        let mut recorded = 0;
        if !work.entries.is_empty() {
            if let Some(task) = recording.take() {
                recorded = finish_recording(daemon, &folder, task).await;
            }
            let (s, db) = (Arc::clone(store), Arc::clone(&daemon.db));
            let entries = work.entries;
            recording = Some(tokio::task::spawn_blocking(move || s.record(&db, &entries)));
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
    missing: Vec<(ChunkRef, Vec<DeviceId>, Targets)>,
) -> usize {
    let inflight: Arc<Mutex<HashMap<DeviceId, usize>>> = Arc::default();
    let mut tasks = JoinSet::new();
    let (mut stored, mut bytes) = (0, 0u64);
    for (chunk, holders, targets) in missing {
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
        tasks.spawn(async move {
            let ok = fetch_one(&d, &s, chunk, holders, targets, &inf).await;
            (ok, chunk.len)
        });
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
    targets: Targets,
    inflight: &Mutex<HashMap<DeviceId, usize>>,
) -> bool {
    let targets = Arc::new(targets);
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
        daemon.peers.recv_limit.take(u64::from(chunk.len)).await;
        let result = super::super::peer::fetch_chunk(
            &link.conn,
            store.share,
            chunk,
            daemon.peers.stall_after(),
        )
        .await;
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
            Ok(store.put_chunk(&chunk, &bytes, &targets))
        } else {
            let (s, t) = (Arc::clone(store), Arc::clone(&targets));
            tokio::task::spawn_blocking(move || s.put_chunk(&chunk, &bytes, &t)).await
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

    /// Serves `work`'s missing chunks from `have` (ciphertexts) as a peer
    /// would; returns how many it had.
    fn serve(s: &SealedStore, work: Work, have: &[&[u8]]) -> usize {
        let mut n = 0;
        for (c, _, targets) in work.missing {
            let cts: Vec<Vec<u8>> = have.iter().map(|p| ciphertext(p)).collect();
            if let Some(ct) = cts.iter().find(|ct| Hash::of(ct) == c.hash) {
                s.put_chunk(&c, ct, &targets).unwrap();
                n += 1;
            }
        }
        n
    }

    fn pack_len(e: &SealedEntry) -> u64 {
        e.cipher_bytes()
    }

    #[test]
    fn entries_wait_for_their_packs_and_supersede_older_versions() {
        let dir = tempfile::tempdir().unwrap();
        let db = IndexDb::open(dir.path()).unwrap();
        let s = store(dir.path(), &db);
        let peer = DeviceId::from_bytes([1; 32]);
        let v1 = sealed("p", &[(1, 1)], Some(b"one"));
        assert_eq!(s.receive(peer, vec![v1.clone()]), 1);
        // Known again: nothing.
        assert_eq!(s.receive(peer, vec![v1.clone()]), 0);
        let work = s.next_work(Instant::now());
        assert_eq!(work.entries.len(), 1);
        assert_eq!(work.missing.len(), 1);
        assert_eq!(work.missing[0].1, vec![peer]);
        // Without the chunk nothing is recorded, and nothing is served.
        assert_eq!(s.record(&db, &work.entries).unwrap(), 0);
        let ct = ciphertext(b"one");
        assert_eq!(s.read_chunk(&Hash::of(&ct), ct.len() as u32), None);
        let entries = work.entries.clone();
        assert_eq!(serve(&s, work, &[b"one"]), 1);
        assert_eq!(s.record(&db, &entries).unwrap(), 1);
        assert_eq!(s.changes_since(0).0.len(), 1);
        assert_eq!(s.local_counts(), (1, ct.len() as u64));
        let p1 = pack_id(&v1).unwrap();
        assert!(s.blobs.has_pack(&p1, pack_len(&v1)));
        assert_eq!(s.read_chunk(&Hash::of(&ct), ct.len() as u32), Some(ct));

        // A newer version replaces it and its pack goes.
        let v2 = sealed("p", &[(1, 2)], Some(b"two"));
        assert_eq!(s.receive(peer, vec![v2.clone()]), 1);
        let work = s.next_work(Instant::now());
        let entries = work.entries.clone();
        assert_eq!(serve(&s, work, &[b"two"]), 1);
        assert_eq!(s.record(&db, &entries).unwrap(), 1);
        let (kept, last) = s.changes_since(0);
        assert_eq!((kept.len(), last), (1, 2));
        assert_eq!(kept[0].sequence, 2);
        assert!(!s.blobs.has_pack(&p1, pack_len(&v1)));
        assert!(s.blobs.has_pack(&pack_id(&v2).unwrap(), pack_len(&v2)));
        // The older one arriving late is dominated.
        assert_eq!(s.receive(peer, vec![v1]), 0);

        // A concurrent version is kept beside it.
        let other = sealed("p", &[(2, 9)], None);
        assert_eq!(s.receive(peer, vec![other]), 1);
        let work = s.next_work(Instant::now());
        assert_eq!(s.record(&db, &work.entries).unwrap(), 1);
        assert_eq!(s.changes_since(0).0.len(), 2);

        // A chunk kept already is copied into a new pack, not fetched.
        let copy = sealed("q", &[(1, 3)], Some(b"two"));
        assert_eq!(s.receive(peer, vec![copy.clone()]), 1);
        let work = s.next_work(Instant::now());
        assert!(work.missing.is_empty());
        assert_eq!(s.record(&db, &work.entries).unwrap(), 1);
        assert!(s.blobs.has_pack(&pack_id(&copy).unwrap(), pack_len(&copy)));

        // Everything survives a restart.
        let stored = db.load_sealed("sealed-test").unwrap();
        assert_eq!(stored.last_sequence, 4);
        assert_eq!(stored.entries.len(), 3);
    }

    #[test]
    fn a_superseded_pending_entry_takes_its_partial_pack_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = IndexDb::open(dir.path()).unwrap();
        let s = store(dir.path(), &db);
        let peer = DeviceId::from_bytes([1; 32]);
        let v1 = sealed("p", &[(1, 1)], Some(b"one"));
        s.receive(peer, vec![v1.clone()]);
        let work = s.next_work(Instant::now());
        assert_eq!(work.missing.len(), 1);
        let partial = s
            .blobs
            .dir()
            .join("partial")
            .join(pack_id(&v1).unwrap().to_hex());
        assert!(partial.exists());
        s.receive(peer, vec![sealed("p", &[(1, 2)], Some(b"two"))]);
        assert!(!partial.exists());
        // A late write for it changes nothing.
        assert_eq!(serve(&s, work, &[b"one"]), 1);
        assert_eq!(s.record(&db, &[v1]).unwrap(), 0);
    }

    #[test]
    fn a_restart_takes_up_the_partial_pack_and_fetches_only_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let db = IndexDb::open(dir.path()).unwrap();
        let peer = DeviceId::from_bytes([1; 32]);
        let k = ReadWriteKey::from_secret(&[4; 32]);
        let (one, two) = (b"first".as_slice(), b"second".as_slice());
        let content = meshsync_core::entry::Content {
            hash: Hash::of(b"firstsecond"),
            chunk_avg: 65536,
            chunks: vec![
                ChunkRef {
                    hash: Hash::of(one),
                    len: 5,
                },
                ChunkRef {
                    hash: Hash::of(two),
                    len: 6,
                },
            ],
        };
        let mut version = VersionVector::new();
        let _ = version.bump_at(ShortId(1), 1);
        let plain = FileEntry {
            path: RelPath::new("two-chunks").unwrap(),
            kind: FileKind::File,
            size: 11,
            mtime: Timestamp::default(),
            permissions: 0o644,
            symlink_target: None,
            content: Some(content),
            version,
            deleted: false,
            sequence: 1,
        };
        let e = seal_entry(&k, &plain, |c| {
            Some(
                k.data_key()
                    .encrypt_chunk(if c.len == 5 { one } else { two })
                    .cipher_hash,
            )
        })
        .unwrap();
        {
            let s = store(dir.path(), &db);
            s.receive(peer, vec![e.clone()]);
            let work = s.next_work(Instant::now());
            assert_eq!(work.missing.len(), 2);
            // Only the first chunk arrives before the restart.
            let first = work.missing.into_iter().next().unwrap();
            let ct = ciphertext(one);
            assert_eq!(first.0.hash, Hash::of(&ct));
            s.put_chunk(&first.0, &ct, &first.2).unwrap();
        }
        let s = store(dir.path(), &db);
        s.receive(peer, vec![e.clone()]);
        let work = s.next_work(Instant::now());
        assert_eq!(work.missing.len(), 1, "the chunk written before is kept");
        assert_eq!(work.missing[0].0.hash, Hash::of(&ciphertext(two)));
        let entries = work.entries.clone();
        assert_eq!(serve(&s, work, &[two]), 1);
        assert_eq!(s.record(&db, &entries).unwrap(), 1);
    }

    /// A sealed file of `chunks` (plaintexts), and its chunks' hint.
    fn hinted_file(path: &str, pairs: &[(u64, u64)], chunks: &[&[u8]]) -> (SealedEntry, ChunkHint) {
        let k = ReadWriteKey::from_secret(&[4; 32]);
        let mut version = VersionVector::new();
        for &(d, c) in pairs {
            let _ = version.bump_at(ShortId(d), c);
        }
        let refs: Vec<ChunkRef> = chunks
            .iter()
            .map(|c| ChunkRef {
                hash: Hash::of(c),
                len: c.len() as u32,
            })
            .collect();
        let plain = FileEntry {
            path: RelPath::new(path).unwrap(),
            kind: FileKind::File,
            size: refs.iter().map(|c| u64::from(c.len)).sum(),
            mtime: Timestamp::default(),
            permissions: 0o644,
            symlink_target: None,
            content: Some(meshsync_core::entry::Content {
                hash: Hash::of(&chunks.concat()),
                chunk_avg: 65536,
                chunks: refs,
            }),
            version,
            deleted: false,
            sequence: 1,
        };
        let e = seal_entry(&k, &plain, |c| {
            let bytes = chunks.iter().find(|b| Hash::of(b) == c.hash)?;
            Some(k.data_key().encrypt_chunk(bytes).cipher_hash)
        })
        .unwrap();
        let hint = ChunkHint {
            path: e.path.clone(),
            version: e.version.clone(),
            first: 0,
            chunks: e.chunks.clone(),
        };
        (e, hint)
    }

    #[test]
    fn hinted_chunks_are_fetched_ahead_and_count_only_where_the_entry_agrees() {
        let dir = tempfile::tempdir().unwrap();
        let db = IndexDb::open(dir.path()).unwrap();
        let s = store(dir.path(), &db);
        let peer = DeviceId::from_bytes([1; 32]);
        let now = Instant::now();
        let parts: [&[u8]; 3] = [b"one", b"two", b"three"];
        let (e, hint) = hinted_file("big", &[(1, 1)], &parts);
        // The hint comes in two pieces; a piece out of order is ignored.
        let mut second = hint.clone();
        second.first = 2;
        second.chunks = hint.chunks[2..].to_vec();
        assert!(!s.hint(peer, second.clone(), now));
        let mut first = hint.clone();
        first.chunks.truncate(2);
        assert!(s.hint(peer, first, now));
        assert!(s.hint(peer, second, now));
        let work = s.next_work(now);
        assert!(work.entries.is_empty());
        assert_eq!(work.missing.len(), 3);
        assert_eq!(work.missing[0].1, vec![peer]);
        // Nothing of it is served or recorded before the entry.
        assert_eq!(serve(&s, work, &parts[..2]), 2);
        let ct = ciphertext(b"one");
        assert_eq!(s.read_chunk(&Hash::of(&ct), ct.len() as u32), None);
        assert_eq!(s.changes_since(0).1, 0);
        // The signed entry takes up the pack: only the chunk not in yet is
        // fetched.
        assert_eq!(s.receive(peer, vec![e.clone()]), 1);
        let work = s.next_work(now);
        assert_eq!(work.entries.len(), 1);
        assert_eq!(work.missing.len(), 1);
        assert_eq!(work.missing[0].0, e.chunks[2]);
        let entries = work.entries.clone();
        assert_eq!(serve(&s, work, &parts), 1);
        assert_eq!(s.record(&db, &entries).unwrap(), 1);
        assert_eq!(s.read_chunk(&Hash::of(&ct), ct.len() as u32), Some(ct));
        assert_eq!(s.state.lock().unwrap().hinted_bytes, 0);
        // A hint for what is kept now is ignored.
        assert!(!s.hint(peer, hint, now));

        // A hint that lied about a chunk: that place is fetched again.
        let others: [&[u8]; 3] = [b"four", b"five", b"six"];
        let (e2, mut lie) = hinted_file("other", &[(1, 2)], &others);
        lie.chunks[1] = ChunkRef {
            hash: Hash::of(&ciphertext(b"fake")),
            len: e2.chunks[1].len,
        };
        assert!(s.hint(peer, lie, now));
        let work = s.next_work(now);
        assert_eq!(serve(&s, work, &[b"four", b"fake", b"six"]), 3);
        s.receive(peer, vec![e2.clone()]);
        let work = s.next_work(now);
        assert_eq!(work.missing.len(), 1);
        assert_eq!(work.missing[0].0, e2.chunks[1]);
        let entries = work.entries.clone();
        serve(&s, work, &others);
        assert_eq!(s.record(&db, &entries).unwrap(), 1);
        let pack = std::fs::read(s.blobs.pack_path(&pack_id(&e2).unwrap())).unwrap();
        let expected: Vec<u8> = others.iter().flat_map(|p| ciphertext(p)).collect();
        assert_eq!(pack, expected);
    }

    #[test]
    fn unclaimed_hints_expire_and_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let db = IndexDb::open(dir.path()).unwrap();
        let s = store(dir.path(), &db);
        let peer = DeviceId::from_bytes([1; 32]);
        let now = Instant::now();
        let (_, hint) = hinted_file("never", &[(1, 1)], &[b"x"]);
        assert!(s.hint(peer, hint.clone(), now));
        let partial = s.blobs.dir().join("partial");
        assert_eq!(std::fs::read_dir(&partial).unwrap().count(), 1);
        let work = s.next_work(now + HINT_TTL + Duration::from_secs(1));
        assert!(work.missing.is_empty());
        assert_eq!(std::fs::read_dir(&partial).unwrap().count(), 0);
        assert_eq!(s.state.lock().unwrap().hinted_bytes, 0);
        // Over the budget: ignored.
        s.state.lock().unwrap().hinted_bytes = HINT_BYTES;
        assert!(!s.hint(peer, hint, now));
    }

    #[test]
    fn a_damaged_chunk_is_never_served_and_is_repaired_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let db = IndexDb::open(dir.path()).unwrap();
        let s = store(dir.path(), &db);
        let peer = DeviceId::from_bytes([1; 32]);
        let e = sealed("p", &[(1, 1)], Some(b"data"));
        s.receive(peer, vec![e.clone()]);
        let work = s.next_work(Instant::now());
        let entries = work.entries.clone();
        serve(&s, work, &[b"data"]);
        assert_eq!(s.record(&db, &entries).unwrap(), 1);
        let ct = ciphertext(b"data");
        let h = Hash::of(&ct);
        let pack = s.blobs.pack_path(&pack_id(&e).unwrap());
        let mut tampered = std::fs::read(&pack).unwrap();
        tampered[3] ^= 0x40;
        std::fs::write(&pack, &tampered).unwrap();
        assert_eq!(s.read_chunk(&h, ct.len() as u32), None);
        assert!(s.needs_repair());
        let work = s.next_work(Instant::now());
        assert_eq!(work.missing.len(), 1);
        assert_eq!(work.missing[0].0.hash, h);
        assert_eq!(serve(&s, work, &[b"data"]), 1);
        assert!(!s.needs_repair());
        assert_eq!(s.read_chunk(&h, ct.len() as u32), Some(ct));
    }
}
