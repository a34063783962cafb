//! `meshsync sync SRC DST`: a local delta sync of two trees (or two files).
//!
//! The run: scan both trees against their stored indexes (stat only: a
//! changed file is read once, by the copy that needs it), hash the few files
//! the planner cannot judge without content, ask the core planner for a
//! plan, carry it out, flush, and only then record the new indexes.
//!
//! Copies are crash-safe ([`crate::write`]) and take every chunk the
//! destination already holds from the destination ([`crate::chunkmap`]),
//! so a renamed or slightly edited file costs only its new bytes. Writes run
//! on a pool of threads; durability is batched (one `syncfs` per batch of
//! temporary files, renames after it).
//!
//! Semantics: a directory SRC is synced *into* DST (DST becomes a copy of
//! SRC's contents: `rsync -a SRC/ DST/`). A file SRC is copied to DST, or
//! into DST when DST is a directory.
//!
//! This module must never: write into SRC in one-way mode, delete in one-way
//! mode without `delete`, overwrite a file that changed after it was
//! scanned, or record in the database what is not durable on disk.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use meshsync_core::chunking::ChunkParams;
use meshsync_core::entry::{CompareMode, Content, FileEntry, FileKind};
use meshsync_core::ignore::{IGNORE_FILE, IgnoreRules};
use meshsync_core::path::{META_DIR, RelPath};
use meshsync_core::plan::{self, Action, Direction, Plan, PlanInput, Side};
use meshsync_core::version::VersionVector;
use serde::Serialize;

use crate::apply;
use crate::chunkmap::{ChunkMap, ChunkReader};
use crate::db::{self, IndexDb, LocalStat, StoredEntry, StoredIndex, TreeMeta, TreeUpdate};
use crate::hashing::read_chunks;
use crate::scan::{self, HashPolicy, Observed, ScanOptions, ScanOutcome};
use crate::write::{self, TempFile, WriteError};

/// How to sync.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// One-way (with or without deletes) or two-way.
    pub direction: Direction,
    /// Metadata (size + mtime) or checksum comparison.
    pub compare: CompareMode,
    /// Plan and report, change nothing (not even the index).
    pub dry_run: bool,
    /// Worker threads for scanning and copying.
    pub threads: usize,
    /// Where the index database lives.
    pub state_dir: PathBuf,
    /// The current time (for conflict-copy names).
    pub now_unix_secs: i64,
}

/// Why a sync could not run at all (per-file failures are in the report).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The source does not exist.
    #[error("source {0} does not exist")]
    MissingSource(PathBuf),
    /// Source and destination overlap.
    #[error("{inner} is inside {outer}: syncing a tree into itself would never end")]
    Nested {
        /// The enclosing path.
        outer: PathBuf,
        /// The enclosed path.
        inner: PathBuf,
    },
    /// A directory cannot be synced onto a file (or the other way round).
    #[error("{0}")]
    KindMismatch(String),
    /// A tree that was synced two-way before lost its `.meshsync` marker:
    /// probably an unmounted disk. Nothing is done, so nothing is deleted.
    #[error(
        "{0} was synced before but its {META_DIR} marker is missing (unmounted disk?); refusing to sync. Recreate the folder '{0}/{META_DIR}' if the folder is really there."
    )]
    MarkerMissing(PathBuf),
    /// The ignore file has a bad pattern.
    #[error("{path}: {source}")]
    Ignore {
        /// The ignore file.
        path: PathBuf,
        /// The bad line.
        source: meshsync_core::ignore::IgnoreError,
    },
    /// The index database failed.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// A setup step failed (creating DST, reading a root).
    #[error("{path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SyncError + '_ {
    move |source| SyncError::Io {
        path: path.into(),
        source,
    }
}

/// What a sync did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SyncReport {
    /// Live files in the source (both trees, in two-way mode).
    pub files_total: u64,
    /// Files written (new or changed).
    pub files_copied: u64,
    /// Paths deleted.
    pub files_deleted: u64,
    /// Directories created.
    pub dirs_created: u64,
    /// Symlinks written.
    pub symlinks_written: u64,
    /// Paths whose permissions or mtime were updated in place.
    pub metadata_updated: u64,
    /// Conflicts resolved by keeping a conflict copy.
    pub conflicts: u64,
    /// Bytes taken from the source side.
    pub bytes_from_source: u64,
    /// Bytes taken from chunks the destination already held.
    pub bytes_reused: u64,
    /// Bytes written to files on the destination.
    pub bytes_written: u64,
    /// Seconds from start to a durable result.
    pub duration_s: f64,
    /// Seconds spent scanning.
    pub scan_s: f64,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Per-path failures (the rest of the sync went on).
    pub errors: Vec<String>,
    /// Things worth knowing that did not stop anything.
    pub warnings: Vec<String>,
    /// The plan, one line per action (dry runs only).
    pub planned: Vec<String>,
}

/// Receives progress; every method may be called from several threads.
pub trait Progress: Sync {
    /// The work ahead: files to write and their bytes.
    fn begin(&self, _files: u64, _bytes: u64) {}
    /// Work done since the last call.
    fn advance(&self, _files: u64, _bytes: u64) {}
    /// A phase has started ("scanning", "copying", …).
    fn phase(&self, _name: &str) {}
}

/// Progress that goes nowhere.
pub struct NoProgress;
impl Progress for NoProgress {}

/// One tree: its root on disk and its index bookkeeping.
struct Tree {
    root: PathBuf,
    tree_id: String,
    meta: TreeMeta,
}

/// Runs `meshsync sync SRC DST` (see the module docs for the semantics).
pub fn sync_paths(
    src: &Path,
    dst: &Path,
    opts: &SyncOptions,
    progress: &dyn Progress,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    // The roots themselves may be symlinks (followed, as `rsync SRC/ DST/`
    // does); nothing below them ever is.
    let src_md = fs::metadata(src).map_err(|_| SyncError::MissingSource(src.into()))?;
    if src_md.is_file() {
        let mut report = sync_single_file(src, dst, opts, progress)?;
        report.duration_s = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    if !src_md.is_dir() {
        return Err(SyncError::KindMismatch(format!(
            "{} is neither a directory nor a regular file",
            src.display()
        )));
    }
    let dst_exists = match fs::metadata(dst) {
        Ok(md) if md.is_dir() => true,
        Ok(_) => {
            return Err(SyncError::KindMismatch(format!(
                "{} is a directory but {} is not",
                src.display(),
                dst.display()
            )));
        }
        Err(_) => false,
    };
    let src_root = fs::canonicalize(src).map_err(io_err(src))?;
    let dst_root = resolve_maybe_missing(dst).map_err(io_err(dst))?;
    for (outer, inner) in [(&src_root, &dst_root), (&dst_root, &src_root)] {
        if inner.starts_with(outer) {
            return Err(SyncError::Nested {
                outer: outer.clone(),
                inner: inner.clone(),
            });
        }
    }
    if !dst_exists && !opts.dry_run {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(src_md.permissions().mode() & 0o7777 | 0o700)
            .create(&dst_root)
            .map_err(io_err(dst))?;
    }

    fs::create_dir_all(&opts.state_dir).map_err(io_err(&opts.state_dir))?;
    let db = IndexDb::open(&opts.state_dir)?;
    let mut trees = [open_tree(&db, src_root)?, open_tree(&db, dst_root)?];
    let two_way = opts.direction == Direction::TwoWay;
    if two_way {
        for t in &trees {
            let marker_ok = write::marker_present(&t.root);
            if t.meta.two_way && !marker_ok {
                return Err(SyncError::MarkerMissing(t.root.clone()));
            }
        }
    }
    let ignore = load_ignore_rules(&trees, two_way)?;

    progress.phase("scanning");
    let scan_started = Instant::now();
    let [stored_a, stored_b] = [db.load(&trees[0].tree_id)?, db.load(&trees[1].tree_id)?];
    let policy = match opts.compare {
        CompareMode::Checksum => HashPolicy::All,
        CompareMode::Metadata => HashPolicy::Deferred,
    };
    let scan_opts = ScanOptions {
        hash: policy,
        threads: opts.threads.div_ceil(2).max(2),
        clock: 0,
    };
    let (scan_a, scan_b) = std::thread::scope(|s| {
        let opts_for = |t: &Tree| ScanOptions {
            clock: t.meta.clock(opts.now_unix_secs),
            ..scan_opts.clone()
        };
        let (opts_a, opts_b) = (opts_for(&trees[0]), opts_for(&trees[1]));
        let (tree_a, rules) = (&trees[0], &ignore);
        let a = s.spawn(move || scan_tree(tree_a, stored_a, rules, &opts_a));
        let b = scan_tree(&trees[1], stored_b, &ignore, &opts_b);
        (a.join().expect("scan thread panicked"), b)
    });
    let mut report = SyncReport {
        dry_run: opts.dry_run,
        scan_s: scan_started.elapsed().as_secs_f64(),
        ..SyncReport::default()
    };
    let mut scans = [scan_a, scan_b];
    for (i, s) in scans.iter().enumerate() {
        for p in &s.problems {
            let line = format!("{}: {}", trees[i].root.join(&p.path).display(), p.reason);
            if p.is_error {
                report.errors.push(line);
            } else {
                report.warnings.push(line);
            }
        }
        // Only in trees this sync writes to: one-way never touches SRC.
        let written = two_way || i == 1;
        if written && !opts.dry_run {
            write::remove_stale_temps(&s.stale_temps);
        }
    }
    for i in 0..2 {
        trees[i].meta.sequence = scans[i].sequence;
        trees[i].meta.last_counter = trees[i].meta.last_counter.max(scans[i].last_counter);
    }

    let plan = plan_with_content(&trees, &mut scans, opts, &mut report);
    report.files_total = scans
        .iter()
        .take(if two_way { 2 } else { 1 })
        .flat_map(|s| s.index.values())
        .filter(|e| e.entry.is_live() && e.entry.kind == FileKind::File)
        .count() as u64;
    for r in &plan.refused {
        report.errors.push(format!("{}: {}", r.path, r.reason));
    }
    if opts.dry_run {
        report.planned = plan.actions.iter().filter_map(describe).collect();
        report.duration_s = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    tracing::debug!(elapsed_s = started.elapsed().as_secs_f64(), "planned");
    let run = Run::new(&trees, &scans, opts, progress);
    run.execute(&plan);
    tracing::debug!(elapsed_s = started.elapsed().as_secs_f64(), "executed");
    let (mut report, mut run_updates, mut run_removals) = run.finish(report);

    // Record what is now durable: scan changes plus what the run did.
    let [scan_a, scan_b] = scans;
    let mut indexes: [StoredIndex; 2] = Default::default();
    let mut changed: [Vec<RelPath>; 2] = Default::default();
    let mut removals: [Vec<RelPath>; 2] = Default::default();
    for (i, s) in [scan_a, scan_b].into_iter().enumerate() {
        let mut index = s.index;
        let mut paths: std::collections::BTreeSet<RelPath> = s.changed.into_iter().collect();
        // Forgotten names first: a conflict loser's old name is forgotten and
        // then (usually) taken by the winner's copy, which must stay.
        for path in std::mem::take(&mut run_removals[i]) {
            paths.remove(&path);
            index.remove(&path);
            removals[i].push(path);
        }
        for (path, entry) in std::mem::take(&mut run_updates[i]) {
            index.insert(path.clone(), entry);
            removals[i].retain(|p| p != &path);
            paths.insert(path);
        }
        removals[i].extend(s.forgotten);
        changed[i] = paths.into_iter().collect();
        indexes[i] = index;
    }
    if two_way {
        for t in trees.iter_mut() {
            t.meta.two_way = true;
            let marker = t.root.join(META_DIR);
            if let Err(e) = fs::create_dir_all(&marker) {
                report.errors.push(format!("{}: {e}", marker.display()));
            }
        }
    }
    let upserts: [Vec<&StoredEntry>; 2] = [0, 1].map(|i| {
        changed[i]
            .iter()
            .filter_map(|p| indexes[i].get(p))
            .collect()
    });
    db.commit(&[
        TreeUpdate {
            tree_id: &trees[0].tree_id,
            meta: &trees[0].meta,
            upserts: &upserts[0],
            removals: &removals[0],
        },
        TreeUpdate {
            tree_id: &trees[1].tree_id,
            meta: &trees[1].meta,
            upserts: &upserts[1],
            removals: &removals[1],
        },
    ])?;
    report.duration_s = started.elapsed().as_secs_f64();
    tracing::debug!(elapsed_s = report.duration_s, "recorded");
    Ok(report)
}

/// The absolute, symlink-resolved form of `path`, which need not exist yet:
/// its longest existing ancestor is resolved and the rest appended.
fn resolve_maybe_missing(path: &Path) -> io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        match fs::canonicalize(existing) {
            Ok(resolved) => {
                return Ok(rest.iter().rev().fold(resolved, |p, c| p.join(c)));
            }
            Err(_) => {
                let Some(name) = existing.file_name() else {
                    return Ok(absolute);
                };
                rest.push(name.to_os_string());
                existing = existing.parent().unwrap_or(Path::new("/"));
            }
        }
    }
}

fn open_tree(db: &IndexDb, root: PathBuf) -> Result<Tree, SyncError> {
    let tree_id = db::tree_id_for(&root);
    let stored = db.tree(&tree_id)?;
    let meta = stored.unwrap_or_else(|| TreeMeta {
        root: root.clone(),
        short_id: db::short_id_for(&tree_id),
        sequence: 0,
        two_way: false,
        last_counter: 0,
    });
    Ok(Tree {
        root,
        tree_id,
        meta,
    })
}

/// The source's `.meshsyncignore` (both trees' in two-way mode).
fn load_ignore_rules(trees: &[Tree; 2], two_way: bool) -> Result<IgnoreRules, SyncError> {
    let mut text = String::new();
    let mut source = trees[0].root.join(IGNORE_FILE);
    for t in trees.iter().take(if two_way { 2 } else { 1 }) {
        let path = t.root.join(IGNORE_FILE);
        match fs::read_to_string(&path) {
            Ok(s) => {
                text.push_str(&s);
                text.push('\n');
                source = path;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    IgnoreRules::parse(&text).map_err(|e| SyncError::Ignore {
        path: source,
        source: e,
    })
}

fn scan_tree(
    tree: &Tree,
    stored: StoredIndex,
    ignore: &IgnoreRules,
    opts: &ScanOptions,
) -> ScanOutcome {
    if !tree.root.is_dir() {
        // A dry run to a destination that does not exist yet.
        return ScanOutcome {
            sequence: tree.meta.sequence,
            ..ScanOutcome::default()
        };
    }
    scan::scan(
        &tree.root,
        stored,
        ignore,
        tree.meta.short_id,
        tree.meta.sequence,
        opts,
    )
}

/// Plans, first hashing the files whose content decides between "equal" and
/// "conflict".
fn plan_with_content(
    trees: &[Tree; 2],
    scans: &mut [ScanOutcome; 2],
    opts: &SyncOptions,
    report: &mut SyncReport,
) -> Plan {
    let needed = plan::content_needed(&plan_input(trees, &scans[0].index, &scans[1].index, opts));
    for (side, path) in needed {
        let i = side_index(side);
        let abs = trees[i].root.join(path.as_str());
        match scan::hash_stable(&abs, None) {
            Ok((obs, content)) => {
                // Only if the file is still what the scan saw.
                if let Some(e) = scans[i].index.get_mut(&path)
                    && e.entry.size == obs.size
                    && e.entry.mtime == obs.mtime
                {
                    e.entry.content = Some(content);
                    if !scans[i].changed.contains(&path) {
                        scans[i].changed.push(path.clone());
                    }
                }
            }
            Err(reason) => report.warnings.push(format!("{}: {reason}", abs.display())),
        }
    }
    plan::plan(&plan_input(trees, &scans[0].index, &scans[1].index, opts))
}

fn plan_input<'a>(
    trees: &[Tree; 2],
    a: &'a StoredIndex,
    b: &'a StoredIndex,
    opts: &SyncOptions,
) -> PlanInput<'a> {
    PlanInput {
        a,
        b,
        a_device: trees[0].meta.short_id,
        b_device: trees[1].meta.short_id,
        direction: opts.direction,
        compare: opts.compare,
        now_unix_secs: opts.now_unix_secs,
    }
}

fn side_index(side: Side) -> usize {
    match side {
        Side::A => 0,
        Side::B => 1,
    }
}

/// One line of a dry run's plan.
fn describe(action: &Action) -> Option<String> {
    let arrow = |from: &Side| if *from == Side::A { "->" } else { "<-" };
    Some(match action {
        Action::KeepConflictCopy { side, entry, to } => {
            format!(
                "conflict  {} (keeping {:?}'s copy as {to})",
                entry.path, side
            )
        }
        Action::MakeDir { entry, .. } => format!("mkdir     {}", entry.path),
        Action::Copy {
            from,
            source,
            replaces,
            ..
        } => format!(
            "{} {} {} ({} bytes)",
            if replaces.is_some() {
                "update   "
            } else {
                "copy     "
            },
            arrow(from),
            source.path,
            source.size
        ),
        Action::Symlink { from, source, .. } => format!(
            "symlink {} {} -> {}",
            arrow(from),
            source.path,
            source.symlink_target.as_deref().unwrap_or("")
        ),
        Action::SetMetadata { entry, .. } => format!("metadata  {}", entry.path),
        Action::Delete { side, expected, .. } => {
            format!("delete    {} (on {:?})", expected.path, side)
        }
        Action::RecordVersion { .. } => return None,
    })
}

/// The smallest target worth reading for chunks before it is replaced (a
/// smaller file is about one chunk: nothing to gain).
const TARGET_DELTA_MIN: u64 = 64 * 1024;

/// Bytes of temporary files written before a flush and rename batch.
const BATCH_BYTES: u64 = 512 << 20;
/// Files written before a flush and rename batch.
const BATCH_FILES: usize = 8192;
/// Target directories one batch holds open before it is flushed: each
/// waiting temporary file keeps its directory open (it is renamed relative
/// to it). While one batch is flushed the next one fills, so two batches'
/// directories can be open at once: a quarter of the process's descriptor
/// limit each, at most 256 (the usual limit is 1,024).
fn batch_dirs() -> usize {
    // SAFETY: getrlimit with a valid out pointer.
    let soft = unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur
        } else {
            1024
        }
    };
    usize::try_from(soft / 4)
        .unwrap_or(usize::MAX)
        .clamp(16, 256)
}

/// A written temporary file waiting for its flush and rename.
struct Pending {
    temp: TempFile,
    target_side: usize,
    expected: Option<StoredEntry>,
    entry: FileEntry,
    from_side: usize,
}

/// The execution of one plan.
struct Run<'a> {
    trees: &'a [Tree; 2],
    scans: &'a [ScanOutcome; 2],
    opts: &'a SyncOptions,
    progress: &'a dyn Progress,
    chunk_maps: [ChunkMap; 2],
    updates: [Mutex<BTreeMap<RelPath, StoredEntry>>; 2],
    removals: [Mutex<Vec<RelPath>>; 2],
    sequences: [AtomicU64; 2],
    pending: Mutex<(Vec<Pending>, u64)>,
    flush_lock: Mutex<()>,
    counters: Counters,
    errors: Mutex<Vec<String>>,
    /// Directories made by this run, with the mtime and mode they get at the end.
    created_dirs: Mutex<Vec<(PathBuf, meshsync_core::entry::Timestamp, u32)>>,
    /// Target directories opened (without following links) for the current
    /// batch, by path on disk: shared by its temporary files.
    open_dirs: Mutex<HashMap<PathBuf, Arc<File>>>,
    /// How many directories a batch may hold open ([`batch_dirs`]).
    batch_dirs: usize,
}

#[derive(Default)]
struct Counters {
    files_copied: AtomicU64,
    files_deleted: AtomicU64,
    dirs_created: AtomicU64,
    symlinks_written: AtomicU64,
    metadata_updated: AtomicU64,
    conflicts: AtomicU64,
    bytes_from_source: AtomicU64,
    bytes_reused: AtomicU64,
    bytes_written: AtomicU64,
}

impl<'a> Run<'a> {
    fn new(
        trees: &'a [Tree; 2],
        scans: &'a [ScanOutcome; 2],
        opts: &'a SyncOptions,
        progress: &'a dyn Progress,
    ) -> Self {
        Run {
            trees,
            scans,
            opts,
            progress,
            chunk_maps: [
                ChunkMap::from_index(&trees[0].root, &scans[0].index, &scans[0].disk_names),
                ChunkMap::from_index(&trees[1].root, &scans[1].index, &scans[1].disk_names),
            ],
            updates: Default::default(),
            removals: Default::default(),
            sequences: [
                AtomicU64::new(scans[0].sequence),
                AtomicU64::new(scans[1].sequence),
            ],
            pending: Mutex::new((Vec::new(), 0)),
            flush_lock: Mutex::new(()),
            counters: Counters::default(),
            errors: Mutex::new(Vec::new()),
            created_dirs: Mutex::new(Vec::new()),
            open_dirs: Mutex::new(HashMap::new()),
            batch_dirs: batch_dirs(),
        }
    }

    /// Where `path` is on `side`'s disk (its own spelling, if not NFC).
    fn abs(&self, side: usize, path: &RelPath) -> PathBuf {
        self.scans[side].disk_path(&self.trees[side].root, path)
    }

    /// Makes sure `path`'s parent directories on `side` exist and are real
    /// directories (never symlinks).
    fn ensure_parent(&self, side: usize, path: &RelPath) -> Result<(), WriteError> {
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        let root = &self.trees[side].root;
        let abs_parent = self.abs(side, &parent);
        let relative = abs_parent.strip_prefix(root).expect("below the root");
        write::ensure_real_dirs(root, relative, 0o755)
    }

    /// `path`'s parent directory on `side`, made if missing and opened
    /// without following links ([`Self::ensure_parent`], then
    /// [`write::open_dir_nofollow`]) once per batch.
    fn open_parent(&self, side: usize, path: &RelPath) -> Result<Arc<File>, WriteError> {
        let root = &self.trees[side].root;
        let abs_parent = match path.parent() {
            Some(parent) => self.abs(side, &parent),
            None => root.clone(),
        };
        if let Some(dir) = self.open_dirs.lock().expect("poisoned").get(&abs_parent) {
            return Ok(Arc::clone(dir));
        }
        self.ensure_parent(side, path)?;
        let relative = abs_parent.strip_prefix(root).expect("below the root");
        let dir = Arc::new(write::open_dir_nofollow(root, relative)?);
        let mut open = self.open_dirs.lock().expect("poisoned");
        Ok(Arc::clone(open.entry(abs_parent).or_insert(dir)))
    }

    fn stored(&self, side: usize, path: &RelPath) -> Option<&StoredEntry> {
        self.scans[side].index.get(path)
    }

    fn fail(&self, e: impl std::fmt::Display) {
        self.errors.lock().expect("poisoned").push(e.to_string());
    }

    /// Records `entry` on `side` with the next sequence number.
    fn record(&self, side: usize, mut entry: FileEntry, local: Option<LocalStat>) {
        entry.sequence = self.sequences[side].fetch_add(1, Ordering::Relaxed) + 1;
        self.updates[side]
            .lock()
            .expect("poisoned")
            .insert(entry.path.clone(), StoredEntry { entry, local });
    }

    /// Gives the other side's entry for `path` the agreed `version` (and
    /// `content`, when it is now known), if that changes anything.
    fn record_version(
        &self,
        side: usize,
        path: &RelPath,
        version: &VersionVector,
        content: Option<&Content>,
    ) {
        let pending = self.updates[side]
            .lock()
            .expect("poisoned")
            .get(path)
            .cloned();
        let Some(mut current) = pending.or_else(|| self.stored(side, path).cloned()) else {
            return;
        };
        let content_new =
            current.entry.content.is_none() && content.is_some() && current.entry.is_live();
        if current.entry.version == *version && !content_new {
            return;
        }
        current.entry.version = version.clone();
        if content_new {
            current.entry.content = content.cloned();
        }
        self.record(side, current.entry, current.local);
    }

    fn execute(&self, plan: &Plan) {
        let writes: Vec<&Action> = plan.actions.iter().filter(|a| a.phase() == 3).collect();
        let (files, bytes) = writes.iter().fold((0u64, 0u64), |(f, b), a| match a {
            Action::Copy { source, .. } => (f + 1, b + source.size),
            _ => (f + 1, b),
        });
        self.progress.begin(files, bytes);
        self.progress.phase("syncing");
        let mut phase_start = 0;
        while phase_start < plan.actions.len() {
            let phase = plan.actions[phase_start].phase();
            let end = plan.actions[phase_start..]
                .iter()
                .position(|a| a.phase() != phase)
                .map_or(plan.actions.len(), |n| phase_start + n);
            let group = &plan.actions[phase_start..end];
            if phase == 3 {
                self.run_parallel(group);
                self.flush_pending();
            } else {
                for action in group {
                    self.run_one(action);
                }
            }
            phase_start = end;
        }
        // Directory mtimes last, deepest first: writing into a directory
        // changes its mtime.
        // Their final modes too: a read-only directory is filled first.
        let mut dirs = std::mem::take(&mut *self.created_dirs.lock().expect("poisoned"));
        dirs.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.components().count()));
        for (path, mtime, permissions) in dirs {
            let result = fs::set_permissions(&path, fs::Permissions::from_mode(permissions))
                .and_then(|()| write::set_mtime_nofollow(&path, mtime));
            if let Err(e) = result {
                self.fail(format!("{}: setting mode and mtime: {e}", path.display()));
            }
        }
    }

    fn run_parallel(&self, actions: &[Action]) {
        let next = AtomicUsize::new(0);
        let threads = self.opts.threads.clamp(1, actions.len().max(1));
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    while let Some(a) = actions.get(next.fetch_add(1, Ordering::Relaxed)) {
                        self.run_one(a);
                    }
                });
            }
        });
    }

    fn run_one(&self, action: &Action) {
        let result = match action {
            Action::KeepConflictCopy { side, entry, to } => {
                self.keep_conflict_copy(side_index(*side), entry, to)
            }
            Action::MakeDir { side, entry } => self.make_dir(side_index(*side), entry),
            Action::Copy {
                from,
                source,
                replaces,
                version,
            } => self.copy(side_index(*from), source, replaces.is_some(), version),
            Action::Symlink {
                from,
                source,
                replaces,
                version,
            } => self.symlink(side_index(*from), source, replaces.is_some(), version),
            Action::SetMetadata { side, entry, .. } => self.set_metadata(side_index(*side), entry),
            Action::Delete {
                side,
                expected,
                version,
                making_room,
            } => self.delete(side_index(*side), expected, version, *making_room),
            Action::RecordVersion { path, version } => {
                self.record_version(0, path, version, None);
                self.record_version(1, path, version, None);
                Ok(())
            }
        };
        if let Err(e) = result {
            self.fail(e);
        }
    }

    fn keep_conflict_copy(
        &self,
        side: usize,
        entry: &FileEntry,
        to: &RelPath,
    ) -> Result<(), WriteError> {
        let from_abs = self.abs(side, &entry.path);
        self.ensure_parent(side, to)?;
        let obs = apply::keep_conflict_copy(
            &from_abs,
            &self.abs(side, to),
            self.stored(side, &entry.path),
        )?;
        let mut moved = entry.clone();
        moved.path = to.clone();
        self.record(side, moved, Some(obs.local));
        // Forget the old name here until the winner's copy lands, so a failed
        // copy can never look like a deletion of the winner.
        self.removals[side]
            .lock()
            .expect("poisoned")
            .push(entry.path.clone());
        self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn make_dir(&self, side: usize, entry: &FileEntry) -> Result<(), WriteError> {
        let abs = self.abs(side, &entry.path);
        self.ensure_parent(side, &entry.path)?;
        // Owner-writable until the end, so its files can be written into it.
        let obs = apply::make_dir(&abs, entry.permissions | 0o700)?;
        self.created_dirs
            .lock()
            .expect("poisoned")
            .push((abs, entry.mtime, entry.permissions));
        self.record(side, entry.clone(), Some(obs.local));
        self.record_version(1 - side, &entry.path, &entry.version, None);
        self.counters.dirs_created.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn copy(
        &self,
        from: usize,
        source: &FileEntry,
        replacing: bool,
        version: &VersionVector,
    ) -> Result<(), WriteError> {
        let to = 1 - from;
        let path = &source.path;
        let target = self.abs(to, path);
        let target_dir = self.open_parent(to, path)?;
        let mut expected = if replacing {
            self.stored(to, path).cloned()
        } else {
            None
        };
        // A target this index never hashed (a first sync onto an old copy)
        // is read for its chunks, as rsync reads the file it updates.
        let mut target_chunks = ChunkMap::default();
        if let Some(exp) = expected.as_mut()
            && exp.entry.content.is_none()
            && exp.entry.size >= TARGET_DELTA_MIN
            && let Ok((obs, content)) = scan::hash_stable(&target, None)
            && obs.matches(exp)
        {
            target_chunks.add(target.clone(), &obs.local, obs.size, obs.mtime, &content);
            exp.entry.content = Some(content);
        }
        let previous_avg = expected
            .as_ref()
            .and_then(|e| e.entry.content.as_ref())
            .or(source.content.as_ref())
            .map(|c| c.chunk_avg);
        let src_stored = self.stored(from, path);
        let copied = copy_file(
            &self.abs(from, path),
            src_stored,
            source,
            &target,
            Some(target_dir),
            previous_avg,
            [&self.chunk_maps[to], &target_chunks],
        )?;
        self.counters
            .bytes_from_source
            .fetch_add(copied.from_source, Ordering::Relaxed);
        self.counters
            .bytes_reused
            .fetch_add(copied.reused, Ordering::Relaxed);
        self.progress.advance(1, source.size);
        let mut entry = source.clone();
        entry.content = Some(copied.content);
        entry.version = version.clone();
        let size = entry.size;
        let mut pending = self.pending.lock().expect("poisoned");
        pending.0.push(Pending {
            temp: copied.temp,
            target_side: to,
            expected,
            entry,
            from_side: from,
        });
        pending.1 += size;
        let full = pending.0.len() >= BATCH_FILES
            || pending.1 >= BATCH_BYTES
            || self.open_dirs.lock().expect("poisoned").len() >= self.batch_dirs;
        drop(pending);
        if full {
            self.flush_pending();
        }
        Ok(())
    }

    /// Makes written temporary files durable, then renames them into place.
    fn flush_pending(&self) {
        let _one_flusher = self.flush_lock.lock().expect("poisoned");
        let batch = {
            let mut pending = self.pending.lock().expect("poisoned");
            pending.1 = 0;
            // The batch's files hold their directories; the next batch
            // opens its own.
            self.open_dirs.lock().expect("poisoned").clear();
            std::mem::take(&mut pending.0)
        };
        if batch.is_empty() {
            return;
        }
        let flush_started = Instant::now();
        let mut synced = [false, false];
        for p in &batch {
            if !synced[p.target_side] {
                if let Err(e) = write::sync_filesystem(&self.trees[p.target_side].root) {
                    self.fail(e);
                    // Dropping the batch removes its temporary files; the
                    // targets stay as they were.
                    return;
                }
                synced[p.target_side] = true;
            }
        }
        tracing::debug!(
            files = batch.len(),
            syncfs_s = flush_started.elapsed().as_secs_f64(),
            "batch flushed"
        );
        let next = AtomicUsize::new(0);
        let batch: Vec<Mutex<Option<Pending>>> =
            batch.into_iter().map(|p| Mutex::new(Some(p))).collect();
        std::thread::scope(|s| {
            for _ in 0..self.opts.threads.clamp(1, batch.len()) {
                s.spawn(|| {
                    while let Some(slot) = batch.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let p = slot.lock().expect("poisoned").take().expect("taken once");
                        self.commit_pending(p);
                    }
                });
            }
        });
    }

    /// Renames one flushed temporary file into place and records it.
    fn commit_pending(&self, p: Pending) {
        let Pending {
            temp,
            target_side,
            expected,
            entry,
            from_side,
        } = p;
        match temp.commit(expected.as_ref()) {
            Ok(obs) => {
                self.counters.files_copied.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .bytes_written
                    .fetch_add(entry.size, Ordering::Relaxed);
                self.record_version(
                    from_side,
                    &entry.path,
                    &entry.version,
                    entry.content.as_ref(),
                );
                self.record(target_side, entry, Some(obs.local));
            }
            Err(e) => self.fail(e),
        }
    }

    fn symlink(
        &self,
        from: usize,
        source: &FileEntry,
        replacing: bool,
        version: &VersionVector,
    ) -> Result<(), WriteError> {
        let to = 1 - from;
        let path = &source.path;
        let target = self.abs(to, path);
        self.ensure_parent(to, path)?;
        let expected = if replacing {
            self.stored(to, path)
        } else {
            None
        };
        let link = source.symlink_target.as_deref().unwrap_or_default();
        let obs = write::write_symlink(&target, link, source.mtime, expected)?;
        let mut entry = source.clone();
        entry.version = version.clone();
        self.record(to, entry, Some(obs.local));
        self.record_version(from, path, version, None);
        self.counters
            .symlinks_written
            .fetch_add(1, Ordering::Relaxed);
        self.progress.advance(1, 0);
        Ok(())
    }

    fn set_metadata(&self, side: usize, entry: &FileEntry) -> Result<(), WriteError> {
        let abs = self.abs(side, &entry.path);
        let obs = apply::set_metadata(&abs, self.stored(side, &entry.path), entry)?;
        let mut recorded = entry.clone();
        if recorded.content.is_none() {
            recorded.content = self
                .stored(side, &entry.path)
                .and_then(|s| s.entry.content.clone());
        }
        if entry.kind == FileKind::Directory {
            recorded.mtime = obs.mtime;
        }
        self.record(side, recorded, Some(obs.local));
        self.record_version(1 - side, &entry.path, &entry.version, None);
        self.counters
            .metadata_updated
            .fetch_add(1, Ordering::Relaxed);
        self.progress.advance(1, 0);
        Ok(())
    }

    fn delete(
        &self,
        side: usize,
        expected: &FileEntry,
        version: &VersionVector,
        making_room: bool,
    ) -> Result<(), WriteError> {
        let abs = self.abs(side, &expected.path);
        apply::delete(&abs, self.stored(side, &expected.path), expected.kind, None)?;
        self.counters.files_deleted.fetch_add(1, Ordering::Relaxed);
        if making_room {
            // No tombstone (see `Action::Delete::making_room`): forgotten
            // here; the write that follows records the path.
            self.removals[side]
                .lock()
                .expect("poisoned")
                .push(expected.path.clone());
            return Ok(());
        }
        let mut tomb = expected.clone();
        tomb.deleted = true;
        tomb.content = None;
        tomb.size = 0;
        tomb.version = version.clone();
        self.record(side, tomb, None);
        self.record_version(1 - side, &expected.path, version, None);
        Ok(())
    }

    /// Flushes everything and returns the report with the index changes
    /// (per side: entries to store, paths to forget).
    fn finish(
        self,
        mut report: SyncReport,
    ) -> (
        SyncReport,
        [BTreeMap<RelPath, StoredEntry>; 2],
        [Vec<RelPath>; 2],
    ) {
        // One flush makes every rename and directory change durable before
        // the index records them.
        for t in self.trees.iter() {
            if let Err(e) = write::sync_filesystem(&t.root) {
                self.fail(e);
            }
        }
        let c = &self.counters;
        report.files_copied = c.files_copied.load(Ordering::Relaxed);
        report.files_deleted = c.files_deleted.load(Ordering::Relaxed);
        report.dirs_created = c.dirs_created.load(Ordering::Relaxed);
        report.symlinks_written = c.symlinks_written.load(Ordering::Relaxed);
        report.metadata_updated = c.metadata_updated.load(Ordering::Relaxed);
        report.conflicts = c.conflicts.load(Ordering::Relaxed);
        report.bytes_from_source = c.bytes_from_source.load(Ordering::Relaxed);
        report.bytes_reused = c.bytes_reused.load(Ordering::Relaxed);
        report.bytes_written = c.bytes_written.load(Ordering::Relaxed);
        report
            .errors
            .extend(self.errors.into_inner().expect("poisoned"));
        let updates = self.updates.map(|m| m.into_inner().expect("poisoned"));
        let removals = self.removals.map(|m| m.into_inner().expect("poisoned"));
        (report, updates, removals)
    }
}

/// A copied file: its temporary file (not yet renamed) and what it took.
struct Copied {
    temp: TempFile,
    content: Content,
    from_source: u64,
    reused: u64,
}

/// Writes `source`'s bytes to a temporary file beside `target`, taking every
/// chunk that `local_chunks` holds from there. The result is verified
/// against the source's hash before it is handed back.
fn copy_file(
    src_abs: &Path,
    src_stored: Option<&StoredEntry>,
    source: &FileEntry,
    target: &Path,
    target_dir: Option<Arc<File>>,
    previous_avg: Option<u32>,
    local_chunks: [&ChunkMap; 2],
) -> Result<Copied, WriteError> {
    let changed = || WriteError::SourceChanged {
        path: src_abs.into(),
    };
    let mut src = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(src_abs)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                changed()
            } else {
                WriteError::io(src_abs, e)
            }
        })?;
    let before = src.metadata().map_err(|e| WriteError::io(src_abs, e))?;
    let unchanged = |md: &fs::Metadata| {
        md.is_file()
            && md.size() == source.size
            && md.mtime() == source.mtime.secs
            && md.mtime_nsec() as u32 == source.mtime.nanos
            && src_stored
                .and_then(|s| s.local)
                .is_none_or(|l| l.inode == md.ino())
    };
    if !unchanged(&before) {
        return Err(changed());
    }
    let params = ChunkParams::for_file(source.size, previous_avg);
    // Inside a tree, the temporary file is made in the target's directory
    // opened without following links (a directory swapped for a symlink
    // after the parent check cannot redirect the write).
    let mut temp = match target_dir {
        Some(dir) => TempFile::in_dir(dir, target)?,
        None => TempFile::beside(target)?,
    };
    temp.preallocate(source.size)?;
    if source.size >= write::SMALL_FILE {
        advise_sequential(&src);
    }
    let mut reader = ChunkReader::new(local_chunks);
    let (mut at, mut from_source, mut reused) = (0u64, 0u64, 0u64);
    let mut flushed_to = 0u64;
    let content = read_chunks(&mut src, source.size, params, |bytes, hash| {
        let out = temp.file();
        if at - flushed_to >= write::WRITEBACK_STEP {
            write::start_writeback(out, flushed_to, at - flushed_to);
            flushed_to = at;
        }
        // A chunk the destination holds is taken (and verified) from there.
        if reader.copy(&hash, bytes.len(), out, at)? {
            reused += bytes.len() as u64;
        } else {
            out.write_all_at(bytes, at)?;
            from_source += bytes.len() as u64;
        }
        at += bytes.len() as u64;
        Ok(())
    })
    .map_err(|e| WriteError::io(target, e))?;
    temp.finish(source.permissions, source.mtime)?;
    let after = src.metadata().map_err(|e| WriteError::io(src_abs, e))?;
    let total: u64 = content.chunks.iter().map(|c| u64::from(c.len)).sum();
    if !unchanged(&after) || total != source.size {
        return Err(changed());
    }
    Ok(Copied {
        temp,
        content,
        from_source,
        reused,
    })
}

/// Tells the kernel a file will be read front to back (a larger readahead).
fn advise_sequential(f: &File) {
    // SAFETY: a valid descriptor; the advice has no effect on correctness.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    }
}

/// Syncs one file: SRC to DST, or into DST when DST is a directory. No index
/// is kept; the existing target (if any) is read for chunks to reuse.
fn sync_single_file(
    src: &Path,
    dst: &Path,
    opts: &SyncOptions,
    progress: &dyn Progress,
) -> Result<SyncReport, SyncError> {
    let name = src
        .file_name()
        .ok_or_else(|| SyncError::KindMismatch(format!("{} has no file name", src.display())))?;
    // `sync FILE newdir/`: a trailing slash names a directory to create.
    if dst.as_os_str().as_encoded_bytes().ends_with(b"/") && !dst.exists() && !opts.dry_run {
        fs::create_dir_all(dst).map_err(io_err(dst))?;
    }
    let target = if fs::metadata(dst).is_ok_and(|m| m.is_dir()) {
        dst.join(name)
    } else {
        dst.to_path_buf()
    };
    let src_abs = fs::canonicalize(src).map_err(io_err(src))?;
    if fs::canonicalize(&target).is_ok_and(|t| t == src_abs) {
        return Err(SyncError::Nested {
            outer: src_abs.clone(),
            inner: src_abs,
        });
    }
    let src_obs = Observed::of(&src_abs)
        .map_err(io_err(&src_abs))?
        .ok_or_else(|| {
            SyncError::KindMismatch(format!("{} is not a regular file", src.display()))
        })?;
    let rel = RelPath::new(&name.to_string_lossy())
        .map_err(|e| SyncError::KindMismatch(e.to_string()))?;
    let source = FileEntry {
        path: rel,
        kind: FileKind::File,
        size: src_obs.size,
        mtime: src_obs.mtime,
        permissions: src_obs.permissions,
        symlink_target: None,
        content: None,
        version: VersionVector::new(),
        deleted: false,
        sequence: 0,
    };
    let mut report = SyncReport {
        dry_run: opts.dry_run,
        files_total: 1,
        ..SyncReport::default()
    };
    let existing = Observed::of(&target).ok().flatten();
    if let Some(t) = &existing {
        if t.kind != FileKind::File {
            return Err(SyncError::KindMismatch(format!(
                "{} exists and is not a regular file",
                target.display()
            )));
        }
        let quick_equal = t.size == src_obs.size
            && t.mtime == src_obs.mtime
            && opts.compare == CompareMode::Metadata;
        if quick_equal {
            return Ok(report);
        }
    }
    // Learn the existing target's chunks (and, in checksum mode, compare).
    let mut local = ChunkMap::default();
    let mut expected = None;
    if let Some(t) = &existing
        && let Ok((obs, content)) = scan::hash_stable(&target, None)
    {
        if opts.compare == CompareMode::Checksum {
            let (_, src_content) =
                scan::hash_stable(&src_abs, Some(content.chunk_avg)).map_err(|e| {
                    SyncError::Io {
                        path: src_abs.clone(),
                        source: io::Error::other(e),
                    }
                })?;
            if src_content.hash == content.hash
                && t.permissions == src_obs.permissions
                && t.mtime == src_obs.mtime
            {
                return Ok(report);
            }
        }
        local.add(target.clone(), &obs.local, obs.size, obs.mtime, &content);
        expected = Some(StoredEntry {
            entry: FileEntry {
                size: obs.size,
                mtime: obs.mtime,
                permissions: obs.permissions,
                content: Some(content),
                ..source.clone()
            },
            local: Some(obs.local),
        });
    }
    if opts.dry_run {
        report.planned.push(format!(
            "{} {} ({} bytes)",
            if existing.is_some() {
                "update   "
            } else {
                "copy     "
            },
            target.display(),
            source.size
        ));
        return Ok(report);
    }
    progress.begin(1, source.size);
    let prev_avg = expected
        .as_ref()
        .and_then(|e| e.entry.content.as_ref())
        .map(|c| c.chunk_avg);
    let stored_src = StoredEntry {
        entry: source.clone(),
        local: Some(src_obs.local),
    };
    let result = copy_file(
        &src_abs,
        Some(&stored_src),
        &source,
        &target,
        None,
        prev_avg,
        [&local, &ChunkMap::default()],
    )
    .and_then(|copied| {
        let parent = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        write::sync_filesystem(parent)?;
        let (from_source, reused) = (copied.from_source, copied.reused);
        copied.temp.commit(expected.as_ref())?;
        write::sync_filesystem(parent)?;
        Ok((from_source, reused))
    });
    match result {
        Ok((from_source, reused)) => {
            report.files_copied = 1;
            report.bytes_from_source = from_source;
            report.bytes_reused = reused;
            report.bytes_written = source.size;
            progress.advance(1, source.size);
        }
        Err(e) => report.errors.push(e.to_string()),
    }
    Ok(report)
}
