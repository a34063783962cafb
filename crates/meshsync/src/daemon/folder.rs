//! One shared folder inside the daemon: its index, what peers announced, and
//! the work of bringing the folder in line with the swarm.
//!
//! The cycle: scan (stat everything, hash what changed), announce the new
//! entries to peers, fold the local and every authoritative remote index
//! into the global view ([`meshsync_core::global`]), plan this folder
//! against it, and carry out the actions on this side only: chunks come
//! from local files first, then from every peer that announced them.
//!
//! Rules enforced here, with the reasons:
//! - The folder marker (`.meshsync/`) must exist; without it the folder
//!   stops (an unmounted disk looks like an empty folder, and scanning it
//!   would announce everything as deleted).
//! - `send-only` applies nothing; `receive-only` and read-only keys apply
//!   remote changes but their own changes are never signed, so peers treat
//!   them as availability only; `backup` never deletes: files it would delete
//!   or replace are moved to `.meshsync/versions/` first.
//!
//! It must never apply a remote change that no authoritative peer signed, or
//! delete anything while the marker is missing.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use meshsync_core::entry::{FileEntry, FileKind};
use meshsync_core::global::{ChunkSources, global_view};
use meshsync_core::ids::{DeviceId, ShareId, ShortId};
use meshsync_core::ignore::{IGNORE_FILE, IgnoreRules};
use meshsync_core::keys::{FolderKey, KeyKind};
use meshsync_core::path::{META_DIR, RelPath};
use meshsync_core::plan::{Action, EntryMap, Index};
use meshsync_core::pull::{PullInput, Stagger};
use meshsync_store::chunkmap::ChunkMap;
use meshsync_store::db::{IndexDb, StoredEntry, StoredIndex, TreeMeta, TreeUpdate};
use meshsync_store::scan::{self, HashPolicy, ScanChanges, ScanOptions};
use serde::Serialize;

use crate::config::{FolderConfig, FolderMode};

/// What a folder is doing, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FolderStateKind {
    /// In sync with what peers announced.
    Idle,
    /// Reading the disk.
    Scanning,
    /// Fetching or applying changes.
    Syncing,
    /// Stopped by an error (the reason is in `error`).
    Error,
    /// Paused by the user.
    Stopped,
}

/// A peer's announced index of this folder.
#[derive(Debug, Default, Clone)]
pub struct RemoteIndex {
    /// Its entries by path.
    pub entries: Index,
    /// The highest sequence number received.
    pub max_sequence: u64,
    /// Whether its batches were signed with the folder key (it may change
    /// the folder); otherwise its entries only say which chunks it holds.
    pub authoritative: bool,
}

/// The local index and the on-disk spellings of names the last scan saw.
#[derive(Default)]
pub struct LocalTree {
    /// Entries with their local stat facts. A scan reads a snapshot of it
    /// outside the lock (scans and pulls of one folder never overlap), and
    /// its changes are then made in place: the index exists once, not once
    /// more per scan.
    pub index: Arc<StoredIndex>,
    /// Names whose spelling on disk is not their NFC form.
    pub disk_names: BTreeMap<RelPath, PathBuf>,
}

impl LocalTree {
    /// The index, to change (copied only if a scan still holds a snapshot).
    fn index_mut(&mut self) -> &mut StoredIndex {
        Arc::make_mut(&mut self.index)
    }
}

/// Everything mutable about a folder.
pub struct FolderState {
    /// The local index (entries + local stat facts) and on-disk names.
    pub local: LocalTree,
    /// Index bookkeeping (sequence numbers).
    pub meta: TreeMeta,
    /// What each connected (or once connected) peer announced.
    pub remotes: HashMap<DeviceId, RemoteIndex>,
    /// What the folder is doing.
    pub state: FolderStateKind,
    /// The last error, if `state` is `Error` (or a per-file problem).
    pub error: Option<String>,
    /// Files and bytes still to fetch, as of the last plan.
    pub need_files: u64,
    /// See `need_files`.
    pub need_bytes: u64,
    /// Paths changed here that the swarm does not take (receive-only,
    /// read-only key).
    pub local_only_changes: u64,
    /// Paths the last plan left alone, with the planner's reasons.
    pub refused: Vec<String>,
}

/// Who holds which chunk of a folder, as the peers announced it: rebuilt
/// when a pull is planned, then fed by every index update, so the running
/// pull can fetch from a peer that got a file after the plan was made.
pub type LiveSources = Arc<std::sync::RwLock<ChunkSources<DeviceId>>>;

/// A shared folder.
pub struct Folder {
    /// Its configuration.
    pub config: FolderConfig,
    /// The canonical root.
    pub root: PathBuf,
    /// The key this device holds.
    pub key: FolderKey,
    /// The share id.
    pub share: ShareId,
    /// This device's version-vector key.
    pub device: ShortId,
    tree_id: String,
    /// Held: not scanned, not synced (starts from the config, set by the API).
    pub paused: std::sync::atomic::AtomicBool,
    /// The mutable part.
    pub state: std::sync::Mutex<FolderState>,
    /// Who holds which chunk (locked after `state` when both are).
    sources: LiveSources,
    /// Where the local index's chunks are on disk, for serving peers and
    /// for copies that reuse local data (locked after `state` when both
    /// are). Rebuilt by every scan that finds a change; between scans,
    /// each batch a pull records is added in place, copied first only if
    /// a reader still holds the map. A full rebuild per batch held the
    /// folder's lock for 7–20 ms with 20,000 files and kept two maps in
    /// memory meanwhile. Entries that a later record made stale only cost
    /// a miss: every chunk read checks the file's stat and the chunk's
    /// hash.
    chunks: std::sync::RwLock<Arc<ChunkMap>>,
    /// Chunks of big files being downloaded that this device holds.
    pub held: super::held::HeldChunks,
}

impl Folder {
    /// Opens a configured folder: checks the key and the root, loads its index.
    pub fn open(config: FolderConfig, device: DeviceId, db: &IndexDb) -> Result<Arc<Self>> {
        let key: FolderKey = config
            .key
            .trim()
            .parse()
            .with_context(|| format!("folder {}: bad key", config.path.display()))?;
        let root = std::fs::canonicalize(&config.path)
            .with_context(|| format!("folder {} does not exist", config.path.display()))?;
        let share = key.share_id();
        let tree_id = format!("share-{share}");
        let meta = db.tree(&tree_id)?.unwrap_or(TreeMeta {
            root: root.clone(),
            short_id: device.short(),
            sequence: 0,
            two_way: true,
            last_counter: 0,
        });
        let stored = db.load(&tree_id)?;
        let chunks = ChunkMap::from_index(&root, &stored, &BTreeMap::new());
        let paused = config.paused;
        Ok(Arc::new(Folder {
            config,
            root,
            key,
            share,
            device: device.short(),
            tree_id,
            paused: std::sync::atomic::AtomicBool::new(paused),
            state: std::sync::Mutex::new(FolderState {
                local: LocalTree {
                    index: Arc::new(stored),
                    disk_names: BTreeMap::new(),
                },
                meta,
                remotes: HashMap::new(),
                state: FolderStateKind::Idle,
                error: None,
                need_files: 0,
                need_bytes: 0,
                local_only_changes: 0,
                refused: Vec::new(),
            }),
            sources: Arc::new(std::sync::RwLock::new(ChunkSources::new())),
            chunks: std::sync::RwLock::new(Arc::new(chunks)),
            held: Default::default(),
        }))
    }

    /// Whether this device's changes go to peers (it signs its index).
    pub fn announces_changes(&self) -> bool {
        self.key.kind() == KeyKind::ReadWrite && self.config.mode != FolderMode::ReceiveOnly
    }

    /// Whether the folder marker is there.
    pub fn marker_present(&self) -> bool {
        // A real directory: a symlink there could lead partial files and
        // versions out of the folder.
        meshsync_store::write::marker_present(&self.root)
    }

    /// Scans the folder (blocking) and stores the changes, and builds the
    /// chunk map again if anything moved. Returns how many entries changed.
    /// Without the marker, nothing is scanned.
    pub fn scan(&self, db: &IndexDb, now_unix_secs: i64) -> Result<usize> {
        if !self.marker_present() {
            let mut st = self.state.lock().expect("poisoned");
            st.state = FolderStateKind::Error;
            st.error = Some(format!(
                "folder marker {}/{META_DIR} is missing (unmounted disk?): folder stopped, nothing is deleted",
                self.root.display()
            ));
            bail!("{}", st.error.clone().unwrap_or_default());
        }
        let ignore = match std::fs::read_to_string(self.root.join(IGNORE_FILE)) {
            Ok(text) => IgnoreRules::parse(&text)?,
            Err(_) => IgnoreRules::none(),
        };
        let (previous, last_seq, clock) = {
            let st = self.state.lock().expect("poisoned");
            // A snapshot: peers and the API keep reading the current index
            // while the scan runs (scans and pulls of one folder never
            // overlap, so nothing else changes it meanwhile).
            (
                Arc::clone(&st.local.index),
                st.meta.sequence,
                st.meta.clock(now_unix_secs),
            )
        };
        let outcome = scan::scan_changes(
            &self.root,
            &previous,
            &ignore,
            self.device,
            last_seq,
            &ScanOptions {
                hash: HashPolicy::Changed,
                threads: scan::default_threads(),
                clock,
            },
        );
        drop(previous);
        meshsync_store::write::remove_stale_temps(&outcome.stale_temps);
        let changed = outcome.updates.len();
        let mut st = self.state.lock().expect("poisoned");
        st.meta.sequence = outcome.sequence;
        st.meta.last_counter = st.meta.last_counter.max(outcome.last_counter);
        let upserts: Vec<&StoredEntry> = outcome.updates.iter().collect();
        db.commit(&[TreeUpdate {
            tree_id: &self.tree_id,
            meta: &st.meta,
            upserts: &upserts,
            removals: &outcome.forgotten,
        }])?;
        st.error = outcome
            .problems
            .iter()
            .find(|p| p.is_error)
            .map(|p| format!("{}: {}", p.path.display(), p.reason));
        let ScanChanges {
            updates,
            forgotten,
            disk_names,
            ..
        } = outcome;
        let moved = changed > 0 || !forgotten.is_empty() || st.local.disk_names != disk_names;
        ScanChanges::apply_to(updates, &forgotten, st.local.index_mut());
        st.local.disk_names = disk_names;
        if moved {
            // Also drops what records since the last scan made stale.
            let map = ChunkMap::from_index(&self.root, &st.local.index, &st.local.disk_names);
            *self.chunks.write().expect("poisoned") = Arc::new(map);
        }
        Ok(changed)
    }

    /// Local entries with a sequence number above `since`, in order.
    pub fn changes_since(&self, since: u64) -> Vec<FileEntry> {
        let st = self.state.lock().expect("poisoned");
        let mut out: Vec<FileEntry> = st
            .local
            .index
            .values()
            .filter(|s| s.entry.sequence > since)
            .map(|s| s.entry.clone())
            .collect();
        out.sort_by_key(|e| e.sequence);
        out
    }

    /// The highest local sequence number.
    pub fn max_sequence(&self) -> u64 {
        self.state.lock().expect("poisoned").meta.sequence
    }

    /// Takes in index entries a peer announced. Returns whether they may
    /// change what this device pulls (else there is nothing to plan again:
    /// [`meshsync_core::pull::may_change_pull`]).
    pub fn receive_index(
        &self,
        peer: DeviceId,
        entries: Vec<FileEntry>,
        last_sequence: u64,
        signed: bool,
    ) -> bool {
        tracing::debug!(
            entries = entries.len(),
            last_sequence,
            "index batch received"
        );
        let mut st = self.state.lock().expect("poisoned");
        // A running pull may fetch these chunks from the peer at once.
        self.sources
            .write()
            .expect("poisoned")
            .add_entries(peer, &entries);
        let st = &mut *st;
        let news = match st.remotes.get(&peer) {
            Some(r) if r.authoritative == signed => {
                meshsync_core::pull::may_change_pull(&*st.local.index, &r.entries, &entries)
            }
            _ => true,
        };
        let remote = st.remotes.entry(peer).or_default();
        remote.authoritative = signed;
        remote.max_sequence = remote.max_sequence.max(last_sequence);
        meshsync_core::plan::insert_batch(
            &mut remote.entries,
            entries.into_iter().map(|e| (e.path.clone(), e)),
        );
        news
    }

    /// Takes in a peer's word that it holds the chunks numbered `spans` of
    /// the version `file` of `path` it is downloading: a running pull may
    /// fetch them from it. Numbers are looked up in the chunk list of that
    /// version as another peer announced it; what no known entry has is
    /// ignored (a hint, like an unsigned index).
    pub fn receive_held(
        &self,
        peer: DeviceId,
        path: &RelPath,
        file: meshsync_core::ids::Hash,
        spans: &[meshsync_proto::message::ChunkSpan],
    ) {
        let st = self.state.lock().expect("poisoned");
        let chunks = st
            .remotes
            .values()
            .filter_map(|r| r.entries.get(path))
            .filter_map(|e| e.content.as_ref())
            .find(|c| c.hash == file);
        let Some(content) = chunks else {
            return;
        };
        let len = content.chunks.len() as u64;
        let hashes = spans
            .iter()
            .flat_map(|s| s.numbers().start.min(len)..s.numbers().end.min(len))
            .map(|n| content.chunks[n as usize].hash);
        self.sources
            .write()
            .expect("poisoned")
            .add_chunks(peer, hashes);
    }

    /// Whether `peer` announced holding the version `file` of `path` whole.
    pub fn peer_has(
        &self,
        peer: &DeviceId,
        path: &RelPath,
        file: &meshsync_core::ids::Hash,
    ) -> bool {
        let st = self.state.lock().expect("poisoned");
        st.remotes
            .get(peer)
            .and_then(|r| r.entries.get(path))
            .and_then(|e| e.content.as_ref())
            .is_some_and(|c| c.hash == *file)
    }

    /// Forgets a peer's index (it disconnected and will resend on reconnect).
    pub fn forget_peer(&self, peer: &DeviceId) {
        self.state.lock().expect("poisoned").remotes.remove(peer);
        self.sources.write().expect("poisoned").remove_peer(peer);
    }

    /// Plans this folder against the global view
    /// ([`meshsync_core::pull::plan_pull`] decides); returns the actions on
    /// this side, who holds which chunk (kept up to date while the actions
    /// run), and where this device starts in the list of writes and in each
    /// big file's chunks. `connected`: the peers connected now (the swarm
    /// it is staggered across, with those that sent an index).
    pub fn plan_pull(
        &self,
        now_unix_secs: i64,
        connected: &[DeviceId],
    ) -> (Vec<Action>, LiveSources, Stagger) {
        let mut st = self.state.lock().expect("poisoned");
        let sources = Arc::clone(&self.sources);
        if self.config.mode == FolderMode::SendOnly
            || self.paused.load(std::sync::atomic::Ordering::SeqCst)
        {
            return (Vec::new(), sources, Stagger::NONE);
        }
        let mut authoritative: Vec<&dyn EntryMap> = vec![&*st.local.index];
        let mut peers: Vec<(&DeviceId, &RemoteIndex)> =
            st.remotes.iter().filter(|(_, r)| r.authoritative).collect();
        peers.sort_by_key(|(d, _)| **d);
        authoritative.extend(peers.iter().map(|(_, r)| &r.entries as &dyn EntryMap));
        let global = global_view(&authoritative);
        let plan = meshsync_core::pull::plan_pull(&PullInput {
            local: &*st.local.index,
            global: &global,
            device: self.device,
            clock: st.meta.clock(now_unix_secs),
            now_unix_secs,
        });
        let mut actions = plan.actions;
        // Peers pulling the same files now start at different places, so
        // they have something to give each other.
        let swarm = st.remotes.keys().chain(connected).map(DeviceId::short);
        let stagger = Stagger::among(self.device, swarm);
        meshsync_core::pull::stagger_writes(&mut actions, stagger);
        let refused: Vec<String> = plan
            .refused
            .iter()
            .map(|r| {
                format!(
                    "{}: {}",
                    self.root.join(r.path.as_str()).display(),
                    r.reason
                )
            })
            .collect();
        for r in &refused {
            tracing::warn!("left alone: {r}");
        }
        let local_only = if self.announces_changes() {
            0
        } else {
            // Changes here that no authoritative peer has.
            let theirs = global_view(&authoritative[1..]);
            meshsync_core::pull::local_only_changes(&*st.local.index, &theirs)
        };
        st.local_only_changes = local_only;
        st.refused = refused;
        st.need_files = actions
            .iter()
            .filter(|a| matches!(a, Action::Copy { .. } | Action::Symlink { .. }))
            .count() as u64;
        st.need_bytes = actions
            .iter()
            .map(|a| match a {
                Action::Copy { source, .. } => source.size,
                _ => 0,
            })
            .sum();
        if st.need_files > 0 {
            // Rebuilt from what the peers hold now: chunks they announced
            // and no longer have are dropped. Updates take the state lock
            // first too, so none falls between the two.
            let mut sources = self.sources.write().expect("poisoned");
            *sources = ChunkSources::new();
            for (peer, remote) in &st.remotes {
                sources.add_index(*peer, &remote.entries);
            }
        }
        (actions, sources, stagger)
    }

    /// Removes partial downloads that no known version of any file needs
    /// any more (the file was deleted or replaced on its source before it
    /// arrived). Only when a signed peer's index is at hand: right after a
    /// restart nothing is known yet, and a partial file must survive to
    /// resume. Returns how many were removed.
    pub fn remove_abandoned_partials(&self) -> usize {
        let wanted: std::collections::HashSet<String> = {
            let st = self.state.lock().expect("poisoned");
            if !st.remotes.values().any(|r| r.authoritative) {
                return 0;
            }
            let local = st.local.index.values().map(|s| &s.entry);
            let remote = st.remotes.values().flat_map(|r| r.entries.values());
            local
                .chain(remote)
                .filter(|e| e.is_live())
                .filter_map(|e| e.content.as_ref().map(|c| c.hash.to_hex()))
                .collect()
        };
        let dir = self.root.join(META_DIR).join("partial");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return 0;
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let hash = name.split('-').next().unwrap_or_default();
            if !wanted.contains(hash) && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Where `path` is on disk.
    pub fn abs(&self, path: &RelPath) -> PathBuf {
        let st = self.state.lock().expect("poisoned");
        scan::disk_path(&self.root, &st.local.disk_names, path)
    }

    /// Whether the file, directory or symlink at `abs` (in this folder) is
    /// exactly as the index recorded it: same kind, size, mtime, mode,
    /// inode and ctime (which moves on any write). A watcher event for such
    /// a path is this daemon's own doing (a file it just put in place and
    /// recorded), not a change to scan for. Anything else, a path the index
    /// does not have or one that cannot be read, is `false`.
    pub fn stored_matches_disk(&self, abs: &std::path::Path) -> bool {
        let Some(rel) = abs
            .strip_prefix(&self.root)
            .ok()
            .and_then(|rel| rel.to_str())
            .and_then(|rel| RelPath::new(rel).ok())
        else {
            return false;
        };
        let Some(stored) = self.stored(&rel) else {
            return false;
        };
        matches!(
            meshsync_store::scan::Observed::of(abs),
            Ok(Some(seen)) if seen.matches(&stored)
        )
    }

    /// What the index says of `path`.
    pub fn stored(&self, path: &RelPath) -> Option<StoredEntry> {
        self.state
            .lock()
            .expect("poisoned")
            .local
            .index
            .get(path)
            .cloned()
    }

    /// Records entries this device now has (after applying actions), each
    /// with a new local sequence number, and stores them. Nothing is ever
    /// removed: peers would not learn of it (see `pull.rs`).
    pub fn record(&self, db: &IndexDb, changes: Vec<StoredEntry>) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut st = self.state.lock().expect("poisoned");
        let mut paths = Vec::with_capacity(changes.len());
        let mut batch = Vec::with_capacity(changes.len());
        for mut c in changes {
            st.meta.sequence += 1;
            c.entry.sequence = st.meta.sequence;
            paths.push(c.entry.path.clone());
            batch.push((c.entry.path.clone(), c));
        }
        meshsync_core::plan::insert_batch(st.local.index_mut(), batch);
        let upserts: Vec<&StoredEntry> =
            paths.iter().filter_map(|p| st.local.index.get(p)).collect();
        db.commit(&[TreeUpdate {
            tree_id: &self.tree_id,
            meta: &st.meta,
            upserts: &upserts,
            removals: &[],
        }])?;
        let mut served = self.chunks.write().expect("poisoned");
        let map = Arc::make_mut(&mut served);
        for stored in upserts {
            map.add_stored(stored, &st.local.disk_names);
        }
        Ok(())
    }

    /// Live files in the local index (for status).
    pub fn local_counts(&self) -> (u64, u64) {
        let st = self.state.lock().expect("poisoned");
        st.local
            .index
            .values()
            .filter(|s| s.entry.is_live() && s.entry.kind == FileKind::File)
            .fold((0, 0), |(n, b), s| (n + 1, b + s.entry.size))
    }

    /// Where the local index's chunks are now (a snapshot: hold it only
    /// while reading, or the next recorded batch copies the map).
    pub fn chunk_map(&self) -> Arc<ChunkMap> {
        Arc::clone(&self.chunks.read().expect("poisoned"))
    }
}
