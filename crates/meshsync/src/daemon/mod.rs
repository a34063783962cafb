//! `meshsync run`: the daemon that keeps shared folders in sync with peers.
//!
//! One tokio runtime holds:
//! - a QUIC [`Transport`] (meshsync-net) that accepts peers and dials the
//!   configured static addresses, retrying;
//! - per connection, a task driving the sans-IO protocol machine
//!   (meshsync-proto) over the control stream, and a chunk server
//!   ([`peer`]);
//! - per folder, a loop: scan → announce → plan against the swarm → apply
//!   ([`folder`], [`pull`]), woken by file-system events ([`watcher`], debounced),
//!   by index updates from peers, and by a slow periodic rescan;
//! - the REST API and web UI on a loopback address ([`api`]).
//!
//! The daemon must never listen for its API on a non-loopback address, never
//! talk to a peer that has not proven the folder key, and never apply a
//! change to a folder whose marker is missing.

pub mod admission;
pub mod api;
pub mod bandwidth;
pub mod control;
pub mod deltas;
pub mod discovery;
pub mod folder;
pub mod held;
pub mod peer;
pub mod pull;
pub mod runs;
pub mod storage;
pub mod watcher;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use meshsync_core::ids::{DeviceId, ShareId};
use meshsync_net::{Transport, TransportOptions};
use meshsync_store::db::IndexDb;
use meshsync_store::identity::DeviceIdentity;
use tokio::sync::{Notify, broadcast, watch};

use crate::config::Config;
use control::{Control, ControlError, Event, FolderStatus, Metrics, Status};
use folder::{Folder, FolderStateKind};
use peer::PeerRegistry;

/// The most watcher-reported paths a folder keeps for checking against its
/// index; past this, the folder is simply scanned.
const WATCHED_PATHS_MAX: usize = 100_000;

/// A folder and what runs it.
pub struct FolderRuntime {
    /// The folder.
    pub folder: Arc<Folder>,
    /// Wakes the folder's loop.
    pub wake: Notify,
    /// A scan was asked for (command, timer, retry, start).
    pub scan_requested: AtomicBool,
    /// A peer's last index batch said more of its burst follows
    /// (`ReceivedBatch::more_follows`), so the folder waits for it before
    /// planning a pull ([`settle`]).
    pub index_burst: AtomicBool,
    /// Paths the file-system watcher reported since the last scan (at most
    /// [`WATCHED_PATHS_MAX`]; `None` past that: scan whatever they are).
    /// The folder's loop scans unless every one is exactly as the index
    /// recorded it, which is what the daemon's own writes look like once
    /// recorded (see [`Folder::stored_matches_disk`]).
    pub watched: Mutex<Option<Vec<PathBuf>>>,
    /// The folder's latest local sequence number (connections send what
    /// peers have not seen when it moves).
    pub sequence: watch::Sender<u64>,
    /// What storage-only links need (the whole folder, if it is one).
    pub storage: storage::FolderStorage,
}

/// Counters behind `/metrics`.
#[derive(Default)]
pub struct Counters {
    /// Chunk bytes sent.
    pub bytes_sent: AtomicU64,
    /// Of those, bytes read from files still downloading here.
    pub partial_bytes_sent: AtomicU64,
    /// Files written.
    pub files_synced: AtomicU64,
    /// Chunks refused (bad hash).
    pub chunks_rejected: AtomicU64,
    /// Scans done.
    pub scans: AtomicU64,
    /// Index entries that arrived as chunk-list patches.
    pub entries_patched: AtomicU64,
    /// Connections closed by the bounds on strangers ([`admission`],
    /// incoming) or the hello timeout (either way).
    pub connections_refused: AtomicU64,
}

/// The running daemon.
pub struct Daemon {
    /// The state directory.
    pub home: PathBuf,
    /// The configuration.
    pub config: Mutex<Config>,
    /// This device.
    pub identity: DeviceIdentity,
    /// Its id.
    pub device_id: DeviceId,
    /// The index database.
    pub db: Arc<IndexDb>,
    /// Folders by share id.
    pub folders: RwLock<HashMap<ShareId, Arc<FolderRuntime>>>,
    /// Connected peers.
    pub peers: Arc<PeerRegistry>,
    /// Incoming connections that share no folder yet, counted and bounded.
    pub admission: Arc<admission::Admission>,
    /// Addresses discovery found.
    pub book: Arc<discovery::AddressBook>,
    /// Signalled when a folder's local index moved (a scan or a pull
    /// recorded changes): connections send the new entries at once.
    pub index_moved: Notify,
    /// LAN discovery's counters.
    pub lan_stats: discovery::lan::LanStats,
    /// Events for the API.
    pub events: broadcast::Sender<Event>,
    /// Counters.
    pub counters: Counters,
    /// Set when the daemon should stop.
    pub stopping: watch::Sender<bool>,
    /// The transport, once bound.
    pub transport: tokio::sync::OnceCell<Arc<Transport>>,
    /// File-system notifications (folders opened later are added to it).
    watcher: Mutex<Option<watcher::TreeWatcher>>,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Daemon {
    fn load(home: &Path) -> Result<Arc<Self>> {
        let config = Config::load(home)?;
        let identity =
            DeviceIdentity::load_or_create(home).context("loading the device identity")?;
        let device_id = identity.device_id();
        let db = Arc::new(IndexDb::open(home)?);
        let (events, _) = broadcast::channel(1024);
        let peers = PeerRegistry::default();
        peers.configure(&config.device);
        let daemon = Arc::new(Daemon {
            home: home.to_path_buf(),
            config: Mutex::new(config),
            identity,
            device_id,
            db,
            folders: RwLock::new(HashMap::new()),
            peers: Arc::new(peers),
            admission: Arc::default(),
            book: Arc::new(discovery::AddressBook::default()),
            index_moved: Notify::new(),
            lan_stats: discovery::lan::LanStats::default(),
            events,
            counters: Counters::default(),
            stopping: watch::channel(false).0,
            transport: tokio::sync::OnceCell::new(),
            watcher: Mutex::new(None),
        });
        Ok(daemon)
    }

    fn discovery_status(&self, cfg: &crate::config::DiscoveryConfig) -> control::DiscoveryStatus {
        let methods = [
            ("lan", cfg.lan),
            ("tracker", !cfg.trackers.is_empty()),
            ("relay", cfg.relay && !cfg.trackers.is_empty()),
            ("dht", cfg.dht),
            ("pex", cfg.pex),
            ("upnp", cfg.upnp),
        ];
        control::DiscoveryStatus {
            methods: methods
                .iter()
                .filter(|(_, on)| *on)
                .map(|(m, _)| (*m).to_owned())
                .collect(),
            own_addresses: self.book.own().iter().map(ToString::to_string).collect(),
            candidates: self
                .book
                .all()
                .iter()
                .map(|c| control::CandidateStatus {
                    address: c.addr.to_string(),
                    device_id: c.device.map(|d| d.to_string()),
                    via: c.found.as_str().to_owned(),
                    path: c.path.as_str().to_owned(),
                })
                .collect(),
            lan: self.lan_stats.snapshot(),
        }
    }

    /// Opens configured folders that are not open yet; returns the new ones.
    fn open_new_folders(self: &Arc<Self>) -> Vec<Arc<FolderRuntime>> {
        let configs = self.config.lock().expect("poisoned").folders.clone();
        let mut opened = Vec::new();
        for fc in configs {
            let path = fc.path.clone();
            // Already running: nothing to load.
            let share = fc
                .key
                .trim()
                .parse::<meshsync_core::keys::FolderKey>()
                .map(|k| k.share_id());
            if share.is_ok_and(|s| self.folders.read().expect("poisoned").contains_key(&s)) {
                continue;
            }
            let loaded = Folder::open(fc, self.device_id, &self.db).and_then(|f| {
                let storage = storage::FolderStorage::open(&f, &self.db)?;
                Ok((f, storage))
            });
            match loaded {
                Ok((folder, storage)) => {
                    let mut folders = self.folders.write().expect("poisoned");
                    if folders.contains_key(&folder.share) {
                        continue;
                    }
                    let rt = Arc::new(FolderRuntime {
                        sequence: watch::channel(folder.max_sequence()).0,
                        folder: Arc::clone(&folder),
                        wake: Notify::new(),
                        scan_requested: AtomicBool::new(true),
                        index_burst: AtomicBool::new(false),
                        watched: Mutex::new(Some(Vec::new())),
                        storage,
                    });
                    folders.insert(folder.share, Arc::clone(&rt));
                    opened.push(rt);
                }
                Err(e) => tracing::error!("folder {}: {e:#}", path.display()),
            }
        }
        opened
    }

    /// The runtime of a folder.
    pub fn folder(&self, share: &ShareId) -> Option<Arc<FolderRuntime>> {
        self.folders.read().expect("poisoned").get(share).cloned()
    }

    /// Every folder runtime.
    pub fn all_folders(&self) -> Vec<Arc<FolderRuntime>> {
        self.folders
            .read()
            .expect("poisoned")
            .values()
            .cloned()
            .collect()
    }

    fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    fn set_state(&self, folder: &Folder, state: FolderStateKind) {
        let changed = {
            let mut st = folder.state.lock().expect("poisoned");
            let changed = st.state != state;
            st.state = state;
            changed
        };
        if changed {
            self.emit(Event::FolderState {
                path: folder.config.path.clone(),
                state: state.as_str().into(),
            });
        }
    }

    /// The folder loop: scan when asked, then bring the folder in line with
    /// the swarm, until the daemon stops.
    async fn run_folder(self: Arc<Self>, rt: Arc<FolderRuntime>) {
        let folder = Arc::clone(&rt.folder);
        let mut stopping = self.stopping.subscribe();
        let rescan_every = Duration::from_secs(
            self.config
                .lock()
                .expect("poisoned")
                .device
                .rescan_interval_secs
                .max(1),
        );
        let mut next_rescan = tokio::time::Instant::now() + rescan_every;
        const RETRY_FIRST: Duration = Duration::from_secs(5);
        const RETRY_MAX: Duration = Duration::from_secs(300);
        let mut retry_after = Duration::ZERO;
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            if *stopping.borrow() {
                return;
            }
            if folder.paused.load(Ordering::SeqCst) {
                self.set_state(&folder, FolderStateKind::Stopped);
            } else if let Some(store) = rt.storage.store() {
                storage::store::run_round(&self, &rt, store).await;
            } else {
                let asked = rt.scan_requested.swap(false, Ordering::SeqCst);
                if asked || self.watched_paths_changed(&rt).await {
                    self.scan_folder(&rt).await;
                }
                if folder.marker_present() {
                    if self.pull_folder(&rt).await {
                        // A write failed (a full or read-only disk, a file
                        // in use): try again later even if nothing wakes
                        // the folder, backing off to once in five minutes.
                        retry_after = (retry_after * 2).clamp(RETRY_FIRST, RETRY_MAX);
                        retry_at = Some(tokio::time::Instant::now() + retry_after);
                    } else {
                        retry_after = Duration::ZERO;
                        retry_at = None;
                    }
                }
            }
            let retry = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = rt.wake.notified() => settle(&rt.wake, &rt.index_burst).await,
                _ = retry => {
                    retry_at = None;
                    rt.scan_requested.store(true, Ordering::SeqCst);
                }
                _ = tokio::time::sleep_until(next_rescan) => {
                    rt.scan_requested.store(true, Ordering::SeqCst);
                    next_rescan = tokio::time::Instant::now() + rescan_every;
                }
                _ = stopping.changed() => {}
            }
        }
    }

    /// Whether any path the watcher reported since the last look differs
    /// from the index (checked now, after the pull round that may have
    /// written it has recorded it: at the watcher's own time, a file being
    /// renamed into place was not recorded yet).
    async fn watched_paths_changed(&self, rt: &Arc<FolderRuntime>) -> bool {
        let paths = rt.watched.lock().expect("poisoned").replace(Vec::new());
        match paths {
            None => true,
            Some(paths) if paths.is_empty() => false,
            Some(paths) => {
                let folder = Arc::clone(&rt.folder);
                tokio::task::spawn_blocking(move || {
                    paths.iter().any(|p| !folder.stored_matches_disk(p))
                })
                .await
                .unwrap_or(true)
            }
        }
    }

    async fn scan_folder(self: &Arc<Self>, rt: &Arc<FolderRuntime>) {
        let folder = Arc::clone(&rt.folder);
        self.set_state(&folder, FolderStateKind::Scanning);
        let db = Arc::clone(&self.db);
        let now = now_secs();
        let f = Arc::clone(&folder);
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let r = f.scan(&db, now);
            release_free_memory();
            r
        })
        .await;
        self.counters.scans.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(Ok(changed)) => {
                tracing::debug!(
                    changed,
                    elapsed_s = started.elapsed().as_secs_f64(),
                    "scan done"
                );
                let _ = rt.sequence.send(folder.max_sequence());
                self.index_moved.notify_waiters();
                self.set_state(&folder, FolderStateKind::Idle);
            }
            Ok(Err(e)) => {
                tracing::warn!("folder {}: {e:#}", folder.config.path.display());
                self.set_state(&folder, FolderStateKind::Error);
            }
            Err(e) => tracing::error!("scan task failed: {e}"),
        }
    }

    /// After a pull recorded changes (whose chunks are served from then
    /// on, see `Folder::record`): sends the new entries to every peer.
    fn local_index_moved(&self, rt: &FolderRuntime) {
        let _ = rt.sequence.send(rt.folder.max_sequence());
        self.index_moved.notify_waiters();
    }

    /// Plans and applies until nothing is left to do (bounded rounds).
    /// Returns whether the last round left errors (worth a retry later).
    async fn pull_folder(self: &Arc<Self>, rt: &Arc<FolderRuntime>) -> bool {
        let mut failed = false;
        let folder = Arc::clone(&rt.folder);
        for _round in 0..8 {
            // Every connected device, whether it opened this folder yet.
            let connected = pull::ChunkSource::connected(&*self.peers);
            let (actions, sources, stagger) = folder.plan_pull(now_secs(), &connected);
            release_free_memory();
            if actions.is_empty() {
                let f = Arc::clone(&folder);
                let _ = tokio::task::spawn_blocking(move || f.remove_abandoned_partials()).await;
                break;
            }
            self.set_state(&folder, FolderStateKind::Syncing);
            tracing::debug!(actions = actions.len(), "pull round starts");
            // Each batch the round records is served and announced at once.
            let recorded = || self.local_index_moved(rt);
            let report = pull::apply(
                Arc::clone(&folder),
                actions,
                sources,
                stagger,
                Arc::clone(&self.peers),
                Arc::clone(&self.db),
                recorded,
            )
            .await;
            self.counters
                .files_synced
                .fetch_add(report.files, Ordering::Relaxed);
            let progressed = report.files + report.deleted + report.conflicts > 0;
            tracing::debug!(
                files = report.files,
                bytes = report.bytes_fetched,
                "pull round done"
            );
            for e in &report.errors {
                tracing::warn!("folder {}: {e}", folder.config.path.display());
            }
            self.emit(Event::FolderSynced {
                path: folder.config.path.clone(),
                files: report.files,
                bytes_fetched: report.bytes_fetched,
                deleted: report.deleted,
                conflicts: report.conflicts,
                errors: report.errors.clone(),
            });
            {
                let mut st = folder.state.lock().expect("poisoned");
                st.error = report
                    .errors
                    .first()
                    .or_else(|| st.refused.first())
                    .cloned();
            }
            failed = !report.errors.is_empty();
            if !progressed {
                break;
            }
        }
        let state = if folder.state.lock().expect("poisoned").need_files > 0 {
            FolderStateKind::Syncing
        } else {
            FolderStateKind::Idle
        };
        self.set_state(&folder, state);
        failed
    }

    /// Connects to every configured static peer address and every due
    /// candidate of the address book that is not connected yet; woken by
    /// new candidates, else every few seconds.
    async fn dial_peers(self: Arc<Self>, transport: Arc<Transport>) {
        use discovery::{Candidate, Found, PathKind};
        let mut stopping = self.stopping.subscribe();
        let mut static_due: HashMap<std::net::SocketAddr, std::time::Instant> = HashMap::new();
        loop {
            let now = std::time::Instant::now();
            let statics: Vec<std::net::SocketAddr> = {
                let cfg = self.config.lock().expect("poisoned");
                let mut a: Vec<_> = cfg
                    .folders
                    .iter()
                    .flat_map(|f| f.peers.iter().copied())
                    .collect();
                a.sort();
                a.dedup();
                a
            };
            let mut dials: Vec<Candidate> = Vec::new();
            for addr in statics {
                if static_due.get(&addr).is_none_or(|t| *t <= now) {
                    static_due.insert(addr, now + Duration::from_secs(3));
                    dials.push(Candidate {
                        addr,
                        device: None,
                        found: Found::Static,
                        path: PathKind::Direct,
                    });
                }
            }
            dials.extend(self.book.due());
            for c in dials {
                let connected = match c.device {
                    Some(d) => d == self.device_id || self.peers.get(&d).is_some(),
                    None => self.peers.has_address(&c.addr),
                };
                if connected {
                    continue;
                }
                let d = Arc::clone(&self);
                let t = Arc::clone(&transport);
                tokio::spawn(async move {
                    match t.connect(c.addr, c.device).await {
                        Ok(pc) => {
                            d.book.dialled(c.addr, true);
                            // A hole punch may have opened the path while
                            // the dial was retrying: the book knows.
                            let path = d.book.get(&c.addr).map_or(c.path, |b| b.path);
                            peer::run_connection(d, pc, c.found, path).await;
                        }
                        Err(e) => {
                            d.book.dialled(c.addr, false);
                            tracing::debug!("connecting to {} ({}): {e}", c.addr, c.found.as_str());
                        }
                    }
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(3)) => {}
                _ = self.book.changed.notified() => {}
                _ = stopping.changed() => return,
            }
        }
    }

    async fn accept_peers(self: Arc<Self>, transport: Arc<Transport>) {
        use discovery::{Found, PathKind};
        while let Some(incoming) = transport.accept().await {
            match incoming {
                Ok(pc) => {
                    // A connection from an address discovery knows (a hole
                    // punch, a relay tunnel) keeps what the book says of it,
                    // unless the book expected another device there.
                    let known = self
                        .book
                        .get(&pc.connection.remote_address())
                        .filter(|c| c.device.is_none_or(|d| d == pc.peer));
                    let (found, path) = match known {
                        Some(c) => (c.found, c.path),
                        None => (Found::Incoming, PathKind::Direct),
                    };
                    let d = Arc::clone(&self);
                    tokio::spawn(peer::run_connection(d, pc, found, path));
                }
                Err(e) => tracing::info!("refused a connection: {e}"),
            }
        }
    }

    /// Watches folder roots and asks for a scan (debounced) when they change.
    fn watch_folders(self: &Arc<Self>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<PathBuf>>();
        let watcher = watcher::TreeWatcher::start(move |paths| {
            let _ = tx.send(paths);
        })
        .map_err(|e| {
            tracing::warn!(
                "file-system notifications unavailable: {e}; relying on periodic rescans"
            )
        })
        .ok();
        let Some(watcher) = watcher else { return };
        for rt in self.all_folders() {
            watcher.watch(&rt.folder.root);
        }
        *self.watcher.lock().expect("poisoned") = Some(watcher);
        let d = Arc::clone(self);
        tokio::spawn(async move {
            // Debounce: collect events for a moment, then wake the folders.
            while let Some(first) = rx.recv().await {
                let mut paths: Vec<PathBuf> = first;
                let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
                while let Ok(Some(more)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                    paths.extend(more);
                }
                paths.sort_unstable();
                paths.dedup();
                if paths.first().is_some_and(|p| p.as_os_str().is_empty()) {
                    // Events were lost: every folder scans in full.
                    for rt in d.all_folders() {
                        *rt.watched.lock().expect("poisoned") = None;
                        rt.wake.notify_one();
                    }
                    continue;
                }
                for rt in d.all_folders() {
                    let meta = rt.folder.root.join(meshsync_core::path::META_DIR);
                    let mut relevant = paths
                        .iter()
                        .filter(|p| {
                            p.starts_with(&rt.folder.root)
                                && !p.starts_with(&meta)
                                && !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                                    n.starts_with(meshsync_core::path::TEMP_PREFIX)
                                })
                        })
                        .peekable();
                    if relevant.peek().is_none() {
                        continue;
                    }
                    {
                        let mut watched = rt.watched.lock().expect("poisoned");
                        if let Some(list) = watched.as_mut() {
                            list.extend(relevant.cloned());
                            if list.len() > WATCHED_PATHS_MAX {
                                *watched = None;
                            }
                        }
                    }
                    rt.wake.notify_one();
                }
            }
        });
    }

    /// Adds a folder opened after start to the file-system watch.
    fn watch(&self, root: &Path) {
        if let Some(w) = self.watcher.lock().expect("poisoned").as_ref() {
            w.watch(root);
        }
    }

    fn reload_config(self: &Arc<Self>) -> Vec<Arc<FolderRuntime>> {
        {
            // Read and taken under the lock: a command that changes the
            // config (pause, resume) saves it under the same lock, so a
            // read from before it cannot overwrite it.
            let mut config = self.config.lock().expect("poisoned");
            match Config::load(&self.home) {
                Ok(c) => {
                    self.peers.configure(&c.device);
                    *config = c;
                }
                Err(e) => tracing::warn!("config not reloaded: {e:#}"),
            }
        }
        self.open_new_folders()
    }
}

impl Control for Daemon {
    fn status(&self) -> Status {
        let cfg = self.config.lock().expect("poisoned").clone();
        let peers = self.peers.status();
        let mut folders: Vec<FolderStatus> = self
            .all_folders()
            .iter()
            .map(|rt| {
                let f = &rt.folder;
                let (local_files, local_bytes) = rt
                    .storage
                    .local_counts()
                    .unwrap_or_else(|| f.local_counts());
                let st = f.state.lock().expect("poisoned");
                let share = f.share.to_string();
                FolderStatus {
                    path: f.config.path.clone(),
                    share_id: share.clone(),
                    mode: f.config.mode.as_str().into(),
                    key_type: f.key.kind().as_str().into(),
                    state: st.state.as_str().into(),
                    need_files: st.need_files,
                    need_bytes: st.need_bytes,
                    local_files,
                    local_bytes,
                    local_only_changes: st.local_only_changes,
                    peers: peers.iter().filter(|p| p.folders.contains(&share)).count() as u64,
                    error: st.error.clone(),
                }
            })
            .collect();
        folders.sort_by(|a, b| a.path.cmp(&b.path));
        Status {
            device_id: self.device_id.to_string(),
            device_name: cfg.device.name.clone(),
            listen: self
                .transport
                .get()
                .map(|t| t.local_addr())
                .map_or_else(|| cfg.device.listen.to_string(), |a| a.to_string()),
            folders,
            peers,
            discovery: self.discovery_status(&cfg.discovery),
        }
    }

    fn rescan(&self, folder: Option<PathBuf>) -> Result<(), ControlError> {
        let mut any = false;
        for rt in self.all_folders() {
            let matches = folder
                .as_ref()
                .is_none_or(|p| std::fs::canonicalize(p).is_ok_and(|c| c == rt.folder.root));
            if matches {
                any = true;
                rt.scan_requested.store(true, Ordering::SeqCst);
                rt.wake.notify_one();
            }
        }
        if any || folder.is_none() {
            Ok(())
        } else {
            Err(ControlError {
                status: 404,
                message: "no such folder".into(),
            })
        }
    }

    fn set_paused(&self, folder: PathBuf, paused: bool) -> Result<(), ControlError> {
        let mut cfg = self.config.lock().expect("poisoned");
        let i = cfg.folder_index(&folder).ok_or(ControlError {
            status: 404,
            message: format!("{} is not a shared folder", folder.display()),
        })?;
        cfg.folders[i].paused = paused;
        cfg.save(&self.home).map_err(|e| ControlError {
            status: 500,
            message: format!("{e:#}"),
        })?;
        drop(cfg);
        // The running folder keeps its config copy; restart takes the new
        // value. Pause is applied at once by stopping the folder's loop work.
        for rt in self.all_folders() {
            if std::fs::canonicalize(&folder).is_ok_and(|c| c == rt.folder.root) {
                set_folder_paused(&rt.folder, paused);
                rt.wake.notify_one();
            }
        }
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn metrics(&self) -> Metrics {
        let c = &self.counters;
        Metrics {
            bytes_received: self.peers.bytes_received.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            partial_bytes_sent: c.partial_bytes_sent.load(Ordering::Relaxed),
            files_synced: c.files_synced.load(Ordering::Relaxed),
            chunks_rejected: c.chunks_rejected.load(Ordering::Relaxed),
            peers_connected: self.peers.count() as u64,
            folders: self.folders.read().expect("poisoned").len() as u64,
            scans: c.scans.load(Ordering::Relaxed),
            entries_patched: c.entries_patched.load(Ordering::Relaxed),
            connections_refused: c.connections_refused.load(Ordering::Relaxed),
            strangers_connected: self.admission.strangers() as u64,
        }
    }

    fn shutdown(&self) {
        let _ = self.stopping.send(true);
    }
}

/// While a peer's index arrives in a burst of batches ([`FolderRuntime::index_burst`]),
/// waits for the rest: until a batch ends the burst, or none has come for
/// [`SETTLE_QUIET`], at most [`SETTLE_MAX`] in all. A pull round planned
/// after a burst's first batch plans only its files (`small`: a round of
/// 4,096 files, then one of 16,124, each with its own tail and flush). Any
/// other wake-up (one batch, a scan request) is acted on at once.
async fn settle(wake: &tokio::sync::Notify, burst: &AtomicBool) {
    let until = tokio::time::Instant::now() + SETTLE_MAX;
    while burst.load(Ordering::SeqCst) {
        let quiet_until = (tokio::time::Instant::now() + SETTLE_QUIET).min(until);
        if tokio::time::timeout_at(quiet_until, wake.notified())
            .await
            .is_err()
            || tokio::time::Instant::now() >= until
        {
            return;
        }
    }
}

/// How long a burst of index batches may pause before the folder acts.
const SETTLE_QUIET: Duration = Duration::from_millis(40);
/// The longest a burst of index batches delays the folder.
const SETTLE_MAX: Duration = Duration::from_millis(500);

/// Hands the allocator's free memory back to the system. A scan or a
/// plan of a large folder frees tens of MiB in small pieces, which glibc
/// keeps (fragmented) and the next phase then adds to; trimming between
/// phases keeps the peak resident size near the largest single phase.
fn release_free_memory() {
    // SAFETY: malloc_trim only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Pausing flips the folder's own copy of its config flag.
fn set_folder_paused(folder: &Folder, paused: bool) {
    folder.paused.store(paused, Ordering::SeqCst);
}

/// Runs the daemon until Ctrl-C, SIGTERM or `POST /rest/shutdown`.
pub async fn run(home: &Path) -> Result<()> {
    let daemon = Daemon::load(home)?;
    let (listen, api_addr, api_key) = {
        let c = daemon.config.lock().expect("poisoned");
        (c.device.listen, c.device.api, c.device.api_key.clone())
    };
    let transport = Arc::new(
        Transport::bind(listen, &daemon.identity, TransportOptions::default())
            .with_context(|| format!("listening on {listen}"))?,
    );
    let _ = daemon.transport.set(Arc::clone(&transport));
    if !transport.local_addr().ip().is_unspecified() {
        daemon.book.set_own("listen", vec![transport.local_addr()]);
    }
    let api_listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("API address {api_addr}"))?;
    println!(
        "meshsync {} running: device {}, peers on {}, API http://{}/",
        env!("CARGO_PKG_VERSION"),
        daemon.device_id,
        transport.local_addr(),
        api_listener.local_addr()?,
    );
    let folders = daemon.open_new_folders();
    for rt in folders {
        tokio::spawn(Arc::clone(&daemon).run_folder(rt));
    }
    daemon.watch_folders();
    tokio::spawn(Arc::clone(&daemon).accept_peers(Arc::clone(&transport)));
    tokio::spawn(Arc::clone(&daemon).dial_peers(Arc::clone(&transport)));
    if daemon.config.lock().expect("poisoned").discovery.lan {
        discovery::lan::spawn(&daemon, &transport);
    }
    let (dht, upnp) = {
        let c = daemon.config.lock().expect("poisoned");
        (c.discovery.dht, c.discovery.upnp)
    };
    if dht {
        discovery::dht::spawn(&daemon, &transport);
    }
    discovery::tracker::spawn(&daemon, &transport);
    let port_mapping = upnp
        .then(|| discovery::upnp::spawn(&daemon, &transport))
        .flatten();
    let control: Arc<dyn Control> = daemon.clone();
    let router = api::router(control, api_key);
    let mut stop_api = daemon.stopping.subscribe();
    tokio::spawn(api::serve(api_listener, router, async move {
        let _ = stop_api.changed().await;
    }));
    // Config changes (share/join while running, edits by hand) are read
    // every 2 s. (A timer restarted by every event never fired while a busy
    // folder kept the events coming.)
    let reloader = Arc::clone(&daemon);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(2));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await; // the first tick is at once
        let mut stopping = reloader.stopping.subscribe();
        loop {
            tokio::select! {
                _ = every.tick() => {
                    for rt in reloader.reload_config() {
                        reloader.watch(&rt.folder.root);
                        tokio::spawn(Arc::clone(&reloader).run_folder(rt));
                    }
                }
                _ = stopping.changed() => return,
            }
        }
    });
    let mut stopping = daemon.stopping.subscribe();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = stopping.changed() => {}
    }
    let _ = daemon.stopping.send(true);
    if let Some(task) = port_mapping {
        // Removes the router's port mapping (bounded inside).
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    // Tell the peers, but do not wait out a connection that never drains
    // (seen when a peer vanished mid-handshake: the endpoint stayed busy
    // until its 30 s idle timeout).
    if tokio::time::timeout(Duration::from_secs(5), transport.close())
        .await
        .is_err()
    {
        tracing::info!("some connections did not close within 5 s");
    }
    println!("meshsync stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{SETTLE_MAX, SETTLE_QUIET, settle};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    use tokio::sync::Notify;
    use tokio::time::{Instant, sleep};

    /// Feeds `batches` wake-ups `every` apart; the last `ends` the burst or not.
    async fn feed(wake: &Notify, burst: &AtomicBool, batches: u32, every: Duration, ends: bool) {
        for i in 1..=batches {
            sleep(every).await;
            burst.store(i < batches || !ends, Ordering::SeqCst);
            wake.notify_one();
        }
    }

    /// How long `settle` waits for a burst fed `batches` wake-ups 20 ms
    /// apart, the last of which `ends` the burst or not.
    async fn settled_after(
        wake: &Notify,
        burst: &AtomicBool,
        batches: u32,
        ends: bool,
    ) -> Duration {
        burst.store(true, Ordering::SeqCst);
        let t0 = Instant::now();
        let (settled, ()) = tokio::join!(
            async {
                settle(wake, burst).await;
                t0.elapsed()
            },
            feed(wake, burst, batches, Duration::from_millis(20), ends)
        );
        settled
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_index_batches_is_waited_for_and_anything_else_is_not() {
        let (wake, burst) = (Notify::new(), AtomicBool::new(false));
        // A lone batch or a scan request: at once.
        let t0 = Instant::now();
        settle(&wake, &burst).await;
        assert_eq!(t0.elapsed(), Duration::ZERO);
        // Five batches, the last ending the burst: until it.
        assert_eq!(
            settled_after(&wake, &burst, 5, true).await,
            Duration::from_millis(100)
        );
        // A burst whose end never comes: given up after a quiet spell.
        assert_eq!(
            settled_after(&wake, &burst, 2, false).await,
            Duration::from_millis(40) + SETTLE_QUIET
        );
        // Batches that never stop coming: bounded.
        assert_eq!(settled_after(&wake, &burst, 40, false).await, SETTLE_MAX);
    }
}
