//! Carrying out a folder's planned actions on this device, fetching content
//! from the swarm.
//!
//! Files are put together with [`Assembly`]: chunks this device already has
//! anywhere are copied locally (and verified); the rest are requested from
//! every connected peer that announced them, each chunk from the holder with
//! the fewest bytes in flight, with a bounded window per peer, so a faster
//! peer is asked more often. Holders are looked up per request in the
//! folder's [`LiveSources`], which index updates keep feeding while the
//! round runs: a peer that finishes a file after the plan was made is asked
//! for its chunks too, and relieves the device it got them from. For that
//! to happen, peers pulling the same files at once start at different
//! places in the plan (`folder::plan_pull` staggers the writes with
//! [`meshsync_core::pull::Stagger`]), so each soon has files the others
//! still need; in a big file each also starts at its own place among the
//! chunks, and announces the chunks it verified while the file is still
//! downloading (`held`, protocol version 3), so peers can take parts of the
//! file from each other before any has it whole. A chunk that fails its hash gets its peer
//! dropped for this folder and is fetched elsewhere; a peer that stops
//! answering (runs.rs, `Stalled`) is left out for the rest of the round.
//! Files with one content are fetched once per round: later copies wait
//! for the first and are put together from it. Partial files live in
//! `.meshsync/partial/` (opened once per round) and survive a disconnect
//! or a restart.
//!
//! Finished files are flushed in batches (one `syncfs`) and then renamed
//! into place only if the target is still what the scan saw; a change made
//! meanwhile is kept and the incoming version waits for the next round.
//! Each batch is recorded in the index as soon as its renames are durable
//! (a second `syncfs`), and the daemon then announces it to peers: a batch
//! closes [`RECORD_AFTER`] after its first file finished (or at
//! [`BATCH_FILES`] files), so peers hear of this device's files while the
//! round is still running and can fetch them from here instead of from the
//! device they came from. What other actions did (deletes, directories,
//! conflict copies, versions) is recorded with the next batch.
//!
//! A conflict this device's copy lost keeps that copy at its name until
//! the winner's bytes are all here and verified: the plan's
//! `KeepConflictCopy` for a path the plan fetches a file to runs in the
//! commit, right before that file's rename (two renames, each never over
//! an existing name). A winner that never arrives (a peer gone, a liar)
//! leaves the loser where it was, and the next round plans the conflict
//! again. A crash between the two renames leaves the loser under its
//! conflict name and the name empty: the loser's bytes are always at one
//! of the two. A winner that needs no fetch (a symlink, a directory) takes
//! the name at once, as before.
//!
//! The index never forgets a path here: peers learn of this device's index
//! by sequence number, and a path that vanished from it would stay in
//! their views as it was last announced (a stale version that could win,
//! come back, or be fetched forever). A conflict loser's old name, and a
//! path deleted to make room for a write of the same plan, keep their entry
//! until that write records the path, or a scan finds the path gone and
//! records the delete. Such a delete records no tombstone of its own: its
//! version includes the write's, and would claim it if the write never
//! landed (a concurrent change elsewhere would then beat it, and the
//! write be lost without a conflict copy).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow};
use meshsync_core::entry::{ChunkRef, FileEntry, FileKind};
use meshsync_core::ids::{DeviceId, ShareId};
use meshsync_core::plan::{Action, Side};
use meshsync_core::pull::Stagger;
use meshsync_store::apply::{self, Assembly, PartialDir};
use meshsync_store::chunkmap::{ChunkMap, ChunkReader};
use meshsync_store::db::{IndexDb, StoredEntry};
use meshsync_store::write::{self, WriteError};
use tokio::task::JoinSet;

use super::folder::{Folder, LiveSources};
use super::held::HeldChunks;
use crate::config::FolderMode;

/// Where chunks come from: the connected peers.
pub trait ChunkSource: Send + Sync + 'static {
    /// Fetches one chunk from `peer` (the bytes are verified by the caller).
    fn fetch(
        &self,
        peer: DeviceId,
        share: ShareId,
        chunk: ChunkRef,
    ) -> impl Future<Output = Result<Vec<u8>>> + Send;
    /// Fetches one chunk from `peer` as a delta against `base`, bytes this
    /// device has that probably resemble it (the caller verifies the result,
    /// and a mismatch may be the base's fault). A source without deltas
    /// fetches the whole chunk.
    fn fetch_near(
        &self,
        peer: DeviceId,
        share: ShareId,
        chunk: ChunkRef,
        base: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>>> + Send {
        let _ = base;
        self.fetch(peer, share, chunk)
    }
    /// Peers connected now.
    fn connected(&self) -> Vec<DeviceId>;
    /// Stops asking `peer` for this folder's chunks (it sent a bad one).
    fn mark_bad(&self, peer: DeviceId, share: ShareId);
}

/// Requests in flight per peer.
const WINDOW_PER_PEER: usize = 64;
/// Files assembled at once.
const PARALLEL_FILES: usize = 64;
/// Finished files flushed and renamed together, at most.
const BATCH_FILES: usize = 4096;
/// How long a finished file waits, at most, for its batch to be renamed
/// into place, recorded and announced (a batch costs two `syncfs`).
const RECORD_AFTER: Duration = Duration::from_secs(1);
/// Files and chunks up to this size are written on the async task itself
/// (a hash and a `pwrite` into the page cache take microseconds); larger
/// ones go to the blocking pool.
const INLINE_BYTES: u64 = 128 * 1024;

/// What one apply round did.
#[derive(Debug, Default, Clone)]
pub struct ApplyReport {
    /// Files written.
    pub files: u64,
    /// Bytes fetched from peers.
    pub bytes_fetched: u64,
    /// Bytes taken from local files.
    pub bytes_local: u64,
    /// Paths deleted (or moved to versions).
    pub deleted: u64,
    /// Conflict copies kept.
    pub conflicts: u64,
    /// Per-path failures.
    pub errors: Vec<String>,
}

struct Finished {
    partial: PathBuf,
    target: PathBuf,
    expected: Option<StoredEntry>,
    entry: FileEntry,
}

/// A lost conflict's loser, to move to its conflict name right before the
/// winner's fetched file takes the name (see the module docs).
struct Loser {
    entry: FileEntry,
    to: meshsync_core::path::RelPath,
}

/// Carries out `actions` (this side's, in plan order) for `folder`.
/// `recorded` runs each time a batch of changes is in the index, so the
/// daemon can announce it while the round goes on.
pub async fn apply<S: ChunkSource>(
    folder: Arc<Folder>,
    actions: Vec<Action>,
    sources: LiveSources,
    stagger: Stagger,
    peers: Arc<S>,
    db: Arc<IndexDb>,
    recorded: impl Fn() + Send + Sync,
) -> ApplyReport {
    let report = Arc::new(Mutex::new(ApplyReport::default()));
    let fail = |r: &Mutex<ApplyReport>, e: String| r.lock().expect("poisoned").errors.push(e);
    let inflight: Arc<Mutex<HashMap<DeviceId, usize>>> = Arc::default();
    let bad: Arc<Mutex<HashSet<DeviceId>>> = Arc::default();
    let stalled: Arc<Mutex<HashSet<DeviceId>>> = Arc::default();
    let mut made_dirs: Vec<(PathBuf, FileEntry)> = Vec::new();
    // The paths this plan writes: a delete that makes room for one of them
    // records nothing (see the module docs).
    let writes: HashSet<meshsync_core::path::RelPath> = actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::Copy { .. } | Action::Symlink { .. } | Action::MakeDir { .. }
            )
        })
        .map(|a| a.path().clone())
        .collect();
    // Losers whose winner is fetched: they keep their name until it is here.
    let fetched: HashSet<&meshsync_core::path::RelPath> = actions
        .iter()
        .filter(|a| matches!(a, Action::Copy { from: Side::B, .. }))
        .map(Action::path)
        .collect();
    let losers: HashMap<meshsync_core::path::RelPath, Loser> = actions
        .iter()
        .filter_map(|a| match a {
            Action::KeepConflictCopy { entry, to, .. } if fetched.contains(&entry.path) => Some((
                entry.path.clone(),
                Loser {
                    entry: (**entry).clone(),
                    to: to.clone(),
                },
            )),
            _ => None,
        })
        .collect();
    let backup = folder.config.mode == FolderMode::Backup;
    let mut batch = Batch {
        folder: &folder,
        db: &db,
        report: &report,
        recorded: &recorded,
        finished: Vec::new(),
        records: Vec::new(),
        losers,
        since: None,
        keep_replaced: backup,
    };
    let mut copies = JoinSet::new();
    // The first copy of each content this round fetches, by content hash;
    // later copies of the same content wait and take it from that file.
    let mut fetching: HashMap<meshsync_core::ids::Hash, meshsync_core::path::RelPath> =
        HashMap::new();
    let mut duplicates: Vec<(FileEntry, bool)> = Vec::new();
    let no_map = Arc::new(ChunkMap::default());
    let known_dirs: Arc<KnownDirs> = Arc::default();
    // Opened once for the round; if it cannot be, each copy reports why.
    let partial_dir = actions
        .iter()
        .any(|a| matches!(a, Action::Copy { from: Side::B, .. }))
        .then(|| PartialDir::open(&folder.root).ok().map(Arc::new))
        .flatten();
    let new_job = |entry: FileEntry, replacing: bool, fetched_map: &Arc<ChunkMap>| CopyJob {
        folder: Arc::clone(&folder),
        replacing,
        entry,
        stagger,
        fetched_map: Arc::clone(fetched_map),
        known_dirs: Arc::clone(&known_dirs),
        partial_dir: partial_dir.clone(),
        sources: Arc::clone(&sources),
        peers: Arc::clone(&peers),
        inflight: Arc::clone(&inflight),
        bad: Arc::clone(&bad),
        stalled: Arc::clone(&stalled),
        report: Arc::clone(&report),
    };

    // The phase of the file writes in flight, if any.
    let mut writes_phase = None;
    for action in actions {
        // Writes run concurrently; what may not run among them waits
        // (`Action::may_run_among_writes`). Draining before every other
        // action cut a `small` update's 150 writes, mixed with 50 metadata
        // changes, to a few at a time.
        let phase = action.phase();
        if !matches!(action, Action::Copy { .. })
            && !writes_phase.is_some_and(|p| action.may_run_among_writes(p))
        {
            batch.drain(&mut copies).await;
        }
        let result: Result<(), WriteError> = (|| -> Result<(), WriteError> {
            match &action {
                Action::KeepConflictCopy { entry, .. }
                    if batch.losers.contains_key(&entry.path) =>
                {
                    // Moved in the commit, once the winner is here.
                }
                Action::KeepConflictCopy { entry, to, .. } => {
                    batch.record(keep_loser(&folder, entry, to, &report)?);
                }
                Action::MakeDir { entry, .. } => {
                    let abs = folder.abs(&entry.path);
                    ensure_parent(&folder, &abs)?;
                    let obs = apply::make_dir(&abs, entry.permissions | 0o700)?;
                    known_dirs.insert(&abs);
                    batch.record(StoredEntry {
                        entry: (**entry).clone(),
                        local: Some(obs.local),
                    });
                    made_dirs.push((abs, (**entry).clone()));
                }
                Action::Symlink {
                    source,
                    replaces,
                    version,
                    ..
                } => {
                    let abs = folder.abs(&source.path);
                    ensure_parent(&folder, &abs)?;
                    let expected = replaces.as_ref().and_then(|_| folder.stored(&source.path));
                    let obs = write::write_symlink(
                        &abs,
                        source.symlink_target.as_deref().unwrap_or_default(),
                        source.mtime,
                        expected.as_ref(),
                    )?;
                    let mut entry = (**source).clone();
                    entry.version = version.clone();
                    batch.record(StoredEntry {
                        entry,
                        local: Some(obs.local),
                    });
                }
                Action::SetMetadata { entry, .. } => {
                    let abs = folder.abs(&entry.path);
                    let stored = folder.stored(&entry.path);
                    let obs = apply::set_metadata(&abs, stored.as_ref(), entry)?;
                    let mut recorded = (**entry).clone();
                    if recorded.content.is_none() {
                        recorded.content = stored.and_then(|s| s.entry.content);
                    }
                    batch.record(StoredEntry {
                        entry: recorded,
                        local: Some(obs.local),
                    });
                }
                Action::Delete {
                    expected,
                    version,
                    making_room,
                    ..
                } => {
                    let abs = folder.abs(&expected.path);
                    let stored = folder.stored(&expected.path);
                    let root = folder.root.clone();
                    let rel = expected.path.clone();
                    let keep = |p: &Path| archive(&root, &rel, p);
                    let keep_ref: Option<apply::KeepFile<'_>> =
                        (backup || versioning_on(&folder)).then_some(&keep);
                    apply::delete(&abs, stored.as_ref(), expected.kind, keep_ref)?;
                    report.lock().expect("poisoned").deleted += 1;
                    if *making_room && writes.contains(&expected.path) {
                        // The write that follows records the path.
                        return Ok(());
                    }
                    let mut tomb = (**expected).clone();
                    tomb.deleted = true;
                    tomb.content = None;
                    tomb.size = 0;
                    tomb.version = version.clone();
                    batch.record(StoredEntry {
                        entry: tomb,
                        local: None,
                    });
                }
                Action::RecordVersion { path, version } => {
                    if let Some(mut s) = folder.stored(path)
                        && s.entry.version != *version
                    {
                        s.entry.version = version.clone();
                        batch.record(s);
                    }
                }
                Action::Copy { .. } => {}
            }
            Ok(())
        })();
        if let Err(e) = result {
            fail(&report, e.to_string());
        }
        if let Action::Copy {
            source,
            replaces,
            version,
            from: Side::B,
        } = action
        {
            let mut entry = *source;
            entry.version = version;
            if let Some(c) = entry.content.as_ref().filter(|_| entry.size > 0) {
                if fetching.contains_key(&c.hash) {
                    duplicates.push((entry, replaces.is_some()));
                    continue;
                }
                fetching.insert(c.hash, entry.path.clone());
            }
            while copies.len() >= PARALLEL_FILES {
                batch.wait_one(&mut copies).await;
            }
            copies.spawn(new_job(entry, replaces.is_some(), &no_map).run());
            writes_phase = Some(phase);
            batch.commit_if_due();
        }
    }
    batch.drain(&mut copies).await;
    if !duplicates.is_empty() {
        // The first copies are in place and recorded: the others are put
        // together from them, with nothing fetched (unless one failed).
        batch.commit();
        let fetched_map = Arc::new(fetched_chunk_map(&folder, &fetching, &duplicates));
        for (entry, replacing) in duplicates {
            while copies.len() >= PARALLEL_FILES {
                batch.wait_one(&mut copies).await;
            }
            copies.spawn(new_job(entry, replacing, &fetched_map).run());
        }
        batch.drain(&mut copies).await;
    }
    batch.rename_finished();
    for (abs, entry) in made_dirs.iter().rev() {
        let _ = std::fs::set_permissions(
            abs,
            std::os::unix::fs::PermissionsExt::from_mode(entry.permissions),
        );
        let _ = write::set_mtime_nofollow(abs, entry.mtime);
    }
    batch.commit();
    for peer in bad.lock().expect("poisoned").iter() {
        peers.mark_bad(*peer, folder.share);
    }
    report.lock().expect("poisoned").clone()
}

/// The chunks of the files this round fetched first whose content other
/// copies of the round wait for, as recorded (a file changed since is
/// skipped by the map's checks).
fn fetched_chunk_map(
    folder: &Folder,
    fetching: &HashMap<meshsync_core::ids::Hash, meshsync_core::path::RelPath>,
    duplicates: &[(FileEntry, bool)],
) -> ChunkMap {
    let mut map = ChunkMap::default();
    let wanted: HashSet<_> = duplicates
        .iter()
        .filter_map(|(e, _)| e.content.as_ref().map(|c| c.hash))
        .collect();
    for hash in wanted {
        let Some(stored) = fetching.get(&hash).and_then(|p| folder.stored(p)) else {
            continue;
        };
        if let (Some(content), Some(local)) = (&stored.entry.content, &stored.local)
            && content.hash == hash
        {
            map.add(
                folder.abs(&stored.entry.path),
                local,
                stored.entry.size,
                stored.entry.mtime,
                content,
            );
        }
    }
    map
}

/// What a round has done but not yet recorded: files fetched and waiting
/// to be renamed into place, and the records of other actions.
struct Batch<'a, R> {
    folder: &'a Folder,
    db: &'a IndexDb,
    report: &'a Mutex<ApplyReport>,
    recorded: &'a R,
    finished: Vec<Finished>,
    records: Vec<StoredEntry>,
    /// Lost conflicts whose winner is still being fetched.
    losers: HashMap<meshsync_core::path::RelPath, Loser>,
    /// When the oldest change not yet recorded was made.
    since: Option<tokio::time::Instant>,
    /// Backup mode: a replaced file goes to versions first.
    keep_replaced: bool,
}

impl<R: Fn()> Batch<'_, R> {
    /// Adds the record of an action already carried out.
    fn record(&mut self, entry: StoredEntry) {
        self.records.push(entry);
        self.since.get_or_insert_with(tokio::time::Instant::now);
    }

    fn take(&mut self, joined: Option<Result<Result<Finished, String>, tokio::task::JoinError>>) {
        match joined {
            Some(Ok(Ok(f))) => {
                self.finished.push(f);
                self.since.get_or_insert_with(tokio::time::Instant::now);
            }
            Some(Ok(Err(e))) => self.report.lock().expect("poisoned").errors.push(e),
            Some(Err(e)) => self
                .report
                .lock()
                .expect("poisoned")
                .errors
                .push(format!("copy task failed: {e}")),
            None => {}
        }
    }

    /// When the batch must be committed.
    fn due(&self) -> Option<tokio::time::Instant> {
        self.since.map(|t| t + RECORD_AFTER)
    }

    /// Commits the batch if it is old or large enough.
    fn commit_if_due(&mut self) {
        let now = tokio::time::Instant::now();
        if self.finished.len() >= BATCH_FILES || self.due().is_some_and(|d| d <= now) {
            self.commit();
        }
    }

    /// Waits until one copy ends or the batch falls due, and commits it if
    /// it is due.
    async fn wait_one(&mut self, copies: &mut JoinSet<Result<Finished, String>>) {
        let joined = match self.due() {
            // `join_next` is cancel-safe: a copy that ends meanwhile is
            // taken by the next call.
            Some(due) => tokio::time::timeout_at(due, copies.join_next()).await.ok(),
            None => Some(copies.join_next().await),
        };
        if let Some(joined) = joined {
            self.take(joined);
        }
        self.commit_if_due();
    }

    /// Waits for every copy, committing batches as they fall due.
    async fn drain(&mut self, copies: &mut JoinSet<Result<Finished, String>>) {
        while !copies.is_empty() {
            self.wait_one(copies).await;
        }
    }

    /// Renames the finished files into place (their records join the
    /// batch's).
    fn rename_finished(&mut self) {
        commit_batch(
            self.folder,
            std::mem::take(&mut self.finished),
            &mut self.losers,
            &mut self.records,
            self.report,
            self.keep_replaced,
        );
    }

    /// Renames the finished files into place, makes that durable, records
    /// everything in the index and tells the daemon.
    fn commit(&mut self) {
        self.since = None;
        self.rename_finished();
        if self.records.is_empty() {
            return;
        }
        // The index never claims what a crash could still undo.
        if let Err(e) = write::sync_filesystem(&self.folder.root) {
            self.report
                .lock()
                .expect("poisoned")
                .errors
                .push(e.to_string());
        }
        let records = std::mem::take(&mut self.records);
        match self.folder.record(self.db, records) {
            Ok(()) => (self.recorded)(),
            Err(e) => self
                .report
                .lock()
                .expect("poisoned")
                .errors
                .push(format!("recording the index: {e:#}")),
        }
    }
}

/// Moves a conflict's loser (still as the scan saw it) to its conflict
/// name; returns the copy's record. The old name keeps its entry until the
/// winner lands there, or a scan finds it gone (see the module docs).
fn keep_loser(
    folder: &Folder,
    entry: &FileEntry,
    to: &meshsync_core::path::RelPath,
    report: &Mutex<ApplyReport>,
) -> Result<StoredEntry, WriteError> {
    let to_abs = folder.abs(to);
    ensure_parent(folder, &to_abs)?;
    let obs = apply::keep_conflict_copy(
        &folder.abs(&entry.path),
        &to_abs,
        folder.stored(&entry.path).as_ref(),
    )?;
    let mut moved = entry.clone();
    moved.path = to.clone();
    report.lock().expect("poisoned").conflicts += 1;
    Ok(StoredEntry {
        entry: moved,
        local: Some(obs.local),
    })
}

/// Flushes finished files and renames them into place; a lost conflict's
/// loser moves to its conflict name right before its winner takes the name.
fn commit_batch(
    folder: &Folder,
    batch: Vec<Finished>,
    losers: &mut HashMap<meshsync_core::path::RelPath, Loser>,
    records: &mut Vec<StoredEntry>,
    report: &Mutex<ApplyReport>,
    keep_replaced: bool,
) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = write::sync_filesystem(&folder.root) {
        report.lock().expect("poisoned").errors.push(e.to_string());
        return;
    }
    let mut parent_dir: Option<(PathBuf, std::fs::File)> = None;
    for f in batch {
        if let Some(loser) = losers.remove(&f.entry.path) {
            match keep_loser(folder, &loser.entry, &loser.to, report) {
                Ok(copy) => records.push(copy),
                Err(e) => {
                    // The loser stays at its name; the winner waits in its
                    // partial file for the next round.
                    report.lock().expect("poisoned").errors.push(e.to_string());
                    continue;
                }
            }
        }
        let result = (|| -> Result<_, WriteError> {
            let mut expected = f.expected.as_ref();
            if expected.is_some() && (keep_replaced || versioning_on(folder)) {
                // The old version goes to versions first, then the new one
                // takes an empty place.
                write::check_unchanged(&f.target, expected)?;
                archive(&folder.root, &f.entry.path, &f.target)?;
                expected = None;
            }
            // Files of one directory come one after another: its opened
            // descriptor serves them all.
            let parent = f.target.parent().expect("below the root");
            if parent_dir.as_ref().is_none_or(|(p, _)| p != parent) {
                parent_dir = Some((
                    parent.to_path_buf(),
                    apply::open_parent(&folder.root, &f.target)?,
                ));
            }
            let (_, dir) = parent_dir.as_ref().expect("just opened");
            apply::commit_partial_in(&f.partial, dir, &f.target, expected)
        })();
        if let Some(c) = &f.entry.content {
            // The partial file is gone (or waits for the next round): the
            // index speaks for the file once recorded.
            folder.held.stop(&f.entry.path, &c.hash);
        }
        match result {
            Ok(obs) => {
                report.lock().expect("poisoned").files += 1;
                records.push(StoredEntry {
                    entry: f.entry,
                    local: Some(obs.local),
                });
            }
            Err(e) => report.lock().expect("poisoned").errors.push(e.to_string()),
        }
    }
}

fn versioning_on(folder: &Folder) -> bool {
    !matches!(
        folder.config.versioning,
        crate::config::VersioningConfig::None
    )
}

/// Moves a replaced or deleted file to `.meshsync/versions/`, named with
/// the time it was archived (`name~YYYYMMDD-HHMMSS.ext`).
fn archive(root: &Path, rel: &meshsync_core::path::RelPath, abs: &Path) -> Result<(), WriteError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let stamp = meshsync_core::conflict::format_utc_compact(now);
    let name = rel.file_name();
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let mut relative = PathBuf::from("versions");
    if let Some(parent) = rel.parent() {
        relative = relative.join(parent.as_str());
    }
    // Never through a symlink out of the folder, never making the marker.
    let dir = write::ensure_meta_dir(root, &relative, 0o700)?;
    let target = dir.join(format!("{stem}~{stamp}{ext}"));
    std::fs::rename(abs, &target).map_err(|e| WriteError::io(abs, e))
}

/// The directories a round made sure of (real directories inside the
/// folder), so that a thousand files of one directory check it once. A
/// directory swapped for a symlink later is still caught: files go in
/// through directories opened without following symlinks
/// ([`apply::commit_partial`]).
#[derive(Default)]
struct KnownDirs(Mutex<HashSet<PathBuf>>);

impl KnownDirs {
    /// Makes sure `abs`'s parent directories exist, unless this round did.
    fn ensure_parent(&self, folder: &Folder, abs: &Path) -> Result<(), WriteError> {
        let parent = abs.parent().expect("below the root");
        if self.0.lock().expect("poisoned").contains(parent) {
            return Ok(());
        }
        ensure_parent(folder, abs)?;
        self.insert(parent);
        Ok(())
    }

    /// Notes that `dir` and the directories above it exist.
    fn insert(&self, dir: &Path) {
        let mut known = self.0.lock().expect("poisoned");
        for d in dir.ancestors() {
            if !known.insert(d.to_path_buf()) {
                break;
            }
        }
    }
}

fn ensure_parent(folder: &Folder, abs: &Path) -> Result<(), WriteError> {
    let parent = abs.parent().expect("below the root");
    let rel = parent.strip_prefix(&folder.root).expect("below the root");
    write::ensure_real_dirs(&folder.root, rel, 0o755)
}

struct CopyJob<S> {
    folder: Arc<Folder>,
    replacing: bool,
    entry: FileEntry,
    /// Where this device starts in the file's chunks.
    stagger: Stagger,
    /// Files this round fetched already (for copies of the same content).
    fetched_map: Arc<ChunkMap>,
    /// Directories this round made sure of.
    known_dirs: Arc<KnownDirs>,
    /// The folder's partial directory, open for the round.
    partial_dir: Option<Arc<PartialDir>>,
    sources: LiveSources,
    peers: Arc<S>,
    inflight: Arc<Mutex<HashMap<DeviceId, usize>>>,
    bad: Arc<Mutex<HashSet<DeviceId>>>,
    /// Peers that stopped answering: not asked again this round.
    stalled: Arc<Mutex<HashSet<DeviceId>>>,
    report: Arc<Mutex<ApplyReport>>,
}

impl<S: ChunkSource> CopyJob<S> {
    async fn run(self) -> Result<Finished, String> {
        let path = self.entry.path.clone();
        let result = self.fetch_file().await;
        if result.is_err()
            && let Some(c) = &self.entry.content
        {
            // Given up: its chunks are no longer announced or served.
            self.folder.held.stop(&path, &c.hash);
        }
        result.map_err(|e| format!("{}: {e:#}", self.folder.root.join(path.as_str()).display()))
    }

    async fn fetch_file(&self) -> Result<Finished> {
        let entry = &self.entry;
        if entry.kind != FileKind::File {
            return Err(anyhow!("not a file"));
        }
        let content = entry
            .content
            .clone()
            .ok_or_else(|| anyhow!("the announcing peer sent no chunk list"))?;
        let target = self.folder.abs(&entry.path);
        self.known_dirs.ensure_parent(&self.folder, &target)?;
        let expected = if self.replacing {
            self.folder.stored(&entry.path)
        } else {
            None
        };
        // The local map as it is now (files this round recorded included),
        // held only while the file is started.
        let (root, map) = (self.folder.root.clone(), self.folder.chunk_map());
        let fetched = Arc::clone(&self.fetched_map);
        let partial_dir = self.partial_dir.clone();
        let content_for_start = content.clone();
        let path = entry.path.clone();
        let start = move || {
            let mut reader = ChunkReader::new([&*map, &*fetched]);
            match &partial_dir {
                Some(dir) => Assembly::start_in(dir, &path, &content_for_start, &mut reader),
                None => Assembly::start(&root, &path, &content_for_start, &mut reader),
            }
        };
        // A small file is started on this task: handing it to the blocking
        // pool costs two thread wake-ups, more than the work itself.
        let assembly = if entry.size <= INLINE_BYTES {
            start()?
        } else {
            tokio::task::spawn_blocking(start).await??
        };
        // Every chunk numbered; those the partial file holds already (a
        // resumed download, local copies) and those still to fetch.
        let missing: HashSet<u64> = assembly.missing().iter().map(|(o, _)| *o).collect();
        let (mut todo, held): (Vec<_>, Vec<_>) = content
            .offsets()
            .enumerate()
            .map(|(n, (offset, chunk))| (n as u32, offset, *chunk))
            .partition(|(_, offset, _)| missing.contains(offset));
        // A big file is announced chunk by chunk while it downloads, and
        // peers downloading it too start elsewhere in it.
        let announce = HeldChunks::worth_it(&content);
        if announce {
            let partial = assembly.partial().to_path_buf();
            self.folder
                .held
                .start(&entry.path, content.hash, partial, held);
        }
        let start = self
            .stagger
            .start(todo.iter().map(|(_, _, c)| u64::from(c.len)));
        todo.rotate_left(start);
        // Chunks that probably resemble a region of the version this file
        // replaces are asked for as deltas against that region.
        let old = expected
            .as_ref()
            .filter(|old| old.entry.kind == FileKind::File && old.entry.size > 0)
            .map(|old| &old.entry);
        let offsets: Vec<u64> = content.offsets().map(|(offset, _)| offset).collect();
        let is_held = |n: usize| offsets.get(n).is_some_and(|o| !missing.contains(o));
        let file = content.hash;
        let assembly = Arc::new(assembly);
        let mut fetches = JoinSet::new();
        let mut fetched = 0u64;
        for (n, offset, chunk) in todo {
            while fetches.len() >= WINDOW_PER_PEER {
                fetched += self.join_fetch(&mut fetches).await?;
            }
            let base = old.and_then(|old| {
                meshsync_core::pull::delta_base(&content, &offsets, n as usize, &is_held, old)
            });
            let base = base.map(|range| (target.clone(), range));
            let job = self.fetch_chunk(offset, chunk, base, Arc::clone(&assembly));
            let (folder, path) = (Arc::clone(&self.folder), entry.path.clone());
            fetches.spawn(async move {
                let got = job.await?;
                if announce {
                    folder.held.add(&path, file, n, offset, chunk);
                }
                Ok(got)
            });
        }
        while !fetches.is_empty() {
            fetched += self.join_fetch(&mut fetches).await?;
        }
        {
            let mut r = self.report.lock().expect("poisoned");
            r.bytes_fetched += fetched;
            r.bytes_local += assembly.bytes_local();
        }
        let assembly = Arc::try_unwrap(assembly).map_err(|_| anyhow!("assembly still shared"))?;
        let partial = assembly.finish(entry.permissions, entry.mtime)?;
        Ok(Finished {
            partial,
            target,
            expected,
            entry: entry.clone(),
        })
    }

    async fn join_fetch(&self, set: &mut JoinSet<Result<u64>>) -> Result<u64> {
        match set.join_next().await {
            Some(Ok(r)) => r,
            Some(Err(e)) => Err(anyhow!("fetch task failed: {e}")),
            None => Ok(0),
        }
    }

    /// Fetches one chunk from the least busy holder, trying others if one
    /// fails or sends bad bytes. With a `base` (a file and a region of it),
    /// the first try asks for a delta against those bytes; if that fails or
    /// does not verify, the same peer is asked for the whole chunk (the base
    /// may have changed under us: not the peer's fault).
    fn fetch_chunk(
        &self,
        offset: u64,
        chunk: ChunkRef,
        base: Option<(PathBuf, std::ops::Range<u64>)>,
        assembly: Arc<Assembly>,
    ) -> impl Future<Output = Result<u64>> + Send + 'static {
        let peers = Arc::clone(&self.peers);
        let sources = Arc::clone(&self.sources);
        let inflight = Arc::clone(&self.inflight);
        let bad = Arc::clone(&self.bad);
        let stalled = Arc::clone(&self.stalled);
        let share = self.folder.share;
        async move {
            let mut base = match base {
                // On the blocking pool even when small: the base is a part
                // of the file being replaced, which may not be in the page
                // cache, and a disk read on this task would hold up every
                // other copy on its worker thread.
                Some((file, range)) => {
                    tokio::task::spawn_blocking(move || read_region(&file, range))
                        .await
                        .ok()
                        .flatten()
                }
                None => None,
            };
            let mut tried: HashSet<DeviceId> = HashSet::new();
            loop {
                let connected = peers.connected();
                let candidate = {
                    // Read at every attempt: holders come and go.
                    let sources = sources.read().expect("poisoned");
                    let bad = bad.lock().expect("poisoned");
                    let stalled = stalled.lock().expect("poisoned");
                    let inflight = inflight.lock().expect("poisoned");
                    sources
                        .holders(&chunk.hash)
                        .iter()
                        .filter(|p| {
                            connected.contains(p)
                                && !bad.contains(p)
                                && !stalled.contains(p)
                                && !tried.contains(p)
                        })
                        .min_by_key(|p| inflight.get(p).copied().unwrap_or(0))
                        .copied()
                };
                let Some(peer) = candidate else {
                    return Err(anyhow!(
                        "no connected peer has chunk {} (tried {})",
                        chunk.hash.to_hex(),
                        tried.len()
                    ));
                };
                tried.insert(peer);
                *inflight.lock().expect("poisoned").entry(peer).or_default() += chunk.len as usize;
                let as_delta = base.is_some();
                let result = match base.take() {
                    Some(base) => peers.fetch_near(peer, share, chunk, base).await,
                    None => peers.fetch(peer, share, chunk).await,
                };
                *inflight.lock().expect("poisoned").entry(peer).or_default() -= chunk.len as usize;
                let bytes = match result {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::debug!("chunk {} from {peer:?}: {e:#}", chunk.hash.to_hex());
                        let stalled_peer = e.downcast_ref::<super::runs::Stalled>().is_some();
                        if as_delta && !stalled_peer {
                            // Ask the same peer for the whole chunk.
                            tried.remove(&peer);
                            continue;
                        }
                        if stalled_peer {
                            tracing::warn!(
                                "peer {peer} stopped answering; not asking it again this round"
                            );
                            stalled.lock().expect("poisoned").insert(peer);
                        }
                        continue;
                    }
                };
                let written = if chunk.len as u64 <= INLINE_BYTES {
                    assembly.write_chunk(offset, &chunk, &bytes)
                } else {
                    let a = Arc::clone(&assembly);
                    tokio::task::spawn_blocking(move || a.write_chunk(offset, &chunk, &bytes))
                        .await?
                };
                match written {
                    Ok(()) => return Ok(u64::from(chunk.len)),
                    Err(WriteError::Verify { .. }) if as_delta => {
                        tracing::debug!(
                            "chunk {} rebuilt from a delta does not verify; fetching it whole",
                            chunk.hash.to_hex()
                        );
                        tried.remove(&peer);
                    }
                    Err(WriteError::Verify { .. }) => {
                        tracing::warn!(
                            "peer {peer} sent a chunk that does not match its hash; not asking it again for this folder"
                        );
                        bad.lock().expect("poisoned").insert(peer);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

/// The bytes of `range` of `file`, if it can be read whole. A symlink put
/// in the file's place is not followed: its target's bytes would describe
/// a file outside the folder to the peer (a signature is hashes of them).
fn read_region(file: &Path, range: std::ops::Range<u64>) -> Option<Vec<u8>> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(file)
        .ok()?;
    let mut bytes = vec![0u8; usize::try_from(range.end - range.start).ok()?];
    f.read_exact_at(&mut bytes, range.start).ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use meshsync_core::entry::{Content, Timestamp};
    use meshsync_core::global::ChunkSources;
    use meshsync_core::ids::{Hash, ShortId};
    use meshsync_core::keys::ReadWriteKey;
    use meshsync_core::path::RelPath;
    use meshsync_core::version::VersionVector;

    use super::*;
    use crate::config::{FolderConfig, VersioningConfig};

    /// Two peers of a pull: `early`, the only holder when the round was
    /// planned, and `late`, which announces a file while the round asks
    /// `early` for it, and `early` then goes away.
    struct TwoPeers {
        chunks: HashMap<Hash, Vec<u8>>,
        early: DeviceId,
        late: DeviceId,
        /// The chunk `early` cannot serve.
        gone: Hash,
        sources: LiveSources,
        asked: Mutex<Vec<(DeviceId, Hash)>>,
    }

    impl ChunkSource for TwoPeers {
        async fn fetch(&self, peer: DeviceId, _: ShareId, chunk: ChunkRef) -> Result<Vec<u8>> {
            self.asked.lock().unwrap().push((peer, chunk.hash));
            if peer == self.early && chunk.hash == self.gone {
                // `late`'s index update arrives while this request runs.
                self.sources
                    .write()
                    .unwrap()
                    .add_chunks(self.late, [chunk.hash]);
                return Err(anyhow!("connection lost"));
            }
            Ok(self.chunks[&chunk.hash].clone())
        }

        fn connected(&self) -> Vec<DeviceId> {
            vec![self.early, self.late]
        }

        fn mark_bad(&self, _: DeviceId, _: ShareId) {}
    }

    /// A peer whose deltas rebuild the wrong bytes (as when this device's
    /// base changed under it) but whose whole chunks are right.
    struct BadDeltas {
        body: Vec<u8>,
        peer: DeviceId,
        near: AtomicUsize,
        whole: AtomicUsize,
        marked_bad: AtomicUsize,
    }

    impl ChunkSource for BadDeltas {
        async fn fetch(&self, _: DeviceId, _: ShareId, _: ChunkRef) -> Result<Vec<u8>> {
            self.whole.fetch_add(1, Ordering::SeqCst);
            Ok(self.body.clone())
        }

        async fn fetch_near(
            &self,
            _: DeviceId,
            _: ShareId,
            chunk: ChunkRef,
            base: Vec<u8>,
        ) -> Result<Vec<u8>> {
            self.near.fetch_add(1, Ordering::SeqCst);
            assert!(base.starts_with(b"old version"), "the base is the old file");
            Ok(vec![b'x'; chunk.len as usize])
        }

        fn connected(&self) -> Vec<DeviceId> {
            vec![self.peer]
        }

        fn mark_bad(&self, _: DeviceId, _: ShareId) {
            self.marked_bad.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A peer that answers no request until `together` of them are in
    /// flight at once.
    struct Gate {
        peer: DeviceId,
        chunks: HashMap<Hash, Vec<u8>>,
        together: tokio::sync::Barrier,
    }

    impl ChunkSource for Gate {
        async fn fetch(&self, _: DeviceId, _: ShareId, chunk: ChunkRef) -> Result<Vec<u8>> {
            self.together.wait().await;
            Ok(self.chunks[&chunk.hash].clone())
        }

        fn connected(&self) -> Vec<DeviceId> {
            vec![self.peer]
        }

        fn mark_bad(&self, _: DeviceId, _: ShareId) {}
    }

    /// A send-receive folder at `dir/folder` (marker made), its database in
    /// `dir`: the root, the folder and the database.
    fn test_folder(dir: &Path) -> (PathBuf, Arc<Folder>, Arc<IndexDb>) {
        let root = dir.join("folder");
        std::fs::create_dir_all(root.join(meshsync_core::path::META_DIR)).unwrap();
        let db = Arc::new(IndexDb::open(dir).unwrap());
        let key = ReadWriteKey::from_secret(&[4; 32]);
        let config = FolderConfig {
            path: root.clone(),
            key: key.to_key_string().to_string(),
            mode: FolderMode::SendReceive,
            versioning: VersioningConfig::None,
            peers: Vec::new(),
            paused: false,
            allowed_devices: Vec::new(),
        };
        let folder = Folder::open(config, DeviceId::from_bytes([9; 32]), &db).unwrap();
        (root, folder, db)
    }

    fn file(path: &str, body: &[u8]) -> FileEntry {
        let hash = Hash::of(body);
        let mut version = VersionVector::new();
        version.bump_at(ShortId(7), 1);
        FileEntry {
            path: RelPath::new(path).unwrap(),
            kind: FileKind::File,
            size: body.len() as u64,
            mtime: Timestamp {
                secs: 1_600_000_000,
                nanos: 0,
            },
            permissions: 0o644,
            symlink_target: None,
            content: Some(Content {
                hash,
                chunk_avg: 65536,
                chunks: vec![ChunkRef {
                    hash,
                    len: body.len() as u32,
                }],
            }),
            version,
            deleted: false,
            sequence: 1,
        }
    }

    #[test]
    fn a_delta_base_is_never_read_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let (file, link) = (dir.path().join("f"), dir.path().join("l"));
        std::fs::write(&file, b"0123456789").unwrap();
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(read_region(&file, 2..5).as_deref(), Some(&b"234"[..]));
        assert_eq!(read_region(&link, 2..5), None);
        assert_eq!(read_region(&file, 8..12), None, "past the end");
    }

    /// A metadata change among the writes of its phase does not wait for
    /// the writes before it (with a drain there, the first write would wait
    /// alone at the gate forever).
    #[tokio::test]
    async fn metadata_changes_among_writes_do_not_hold_them_up() {
        let dir = tempfile::tempdir().unwrap();
        let (root, folder, db) = test_folder(dir.path());
        std::fs::write(root.join("b"), b"kept").unwrap();
        folder.scan(&db, 1_700_000_000).unwrap();
        let b_now = folder.stored(&RelPath::new("b").unwrap()).unwrap().entry;
        let mut b_new = b_now.clone();
        b_new.permissions = 0o600;
        let (a, c) = (file("a", b"first file"), file("c", b"second file"));
        let peer = DeviceId::from_bytes([1; 32]);
        let mut sources = ChunkSources::new();
        sources.add_entries(peer, &[a.clone(), c.clone()]);
        let copy = |e: &FileEntry| Action::Copy {
            from: Side::B,
            source: Box::new(e.clone()),
            replaces: None,
            version: e.version.clone(),
        };
        let actions = vec![
            copy(&a),
            Action::SetMetadata {
                side: Side::A,
                entry: Box::new(b_new),
                expected: Box::new(b_now),
            },
            copy(&c),
        ];
        assert!(actions.iter().all(|x| x.phase() == actions[0].phase()));
        let peers = Arc::new(Gate {
            peer,
            chunks: [&a, &c]
                .iter()
                .map(|e| {
                    let body: &[u8] = if e.path.as_str() == "a" {
                        b"first file"
                    } else {
                        b"second file"
                    };
                    (e.content.as_ref().unwrap().hash, body.to_vec())
                })
                .collect(),
            together: tokio::sync::Barrier::new(2),
        });
        let round = apply(
            Arc::clone(&folder),
            actions,
            Arc::new(RwLock::new(sources)),
            Stagger::NONE,
            peers,
            db,
            || {},
        );
        let report = tokio::time::timeout(Duration::from_secs(20), round)
            .await
            .expect("both writes were in flight at once");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"first file");
        assert_eq!(std::fs::read(root.join("c")).unwrap(), b"second file");
        let mode = std::fs::metadata(root.join("b")).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[tokio::test]
    async fn a_delta_that_does_not_verify_is_fetched_whole_without_blaming_the_peer() {
        let dir = tempfile::tempdir().unwrap();
        let (root, folder, db) = test_folder(dir.path());
        let old: Vec<u8> = [&b"old version"[..], &[7u8; 5000]].concat();
        std::fs::write(root.join("doc"), &old).unwrap();
        folder.scan(&db, 1_700_000_000).unwrap();
        let replaced = folder.stored(&RelPath::new("doc").unwrap()).unwrap().entry;
        let new: Vec<u8> = [&b"new version"[..], &[7u8; 5000]].concat();
        let entry = file("doc", &new);
        let peer = DeviceId::from_bytes([1; 32]);
        let mut sources = ChunkSources::new();
        sources.add_entries(peer, std::slice::from_ref(&entry));
        let peers = Arc::new(BadDeltas {
            body: new.clone(),
            peer,
            near: AtomicUsize::new(0),
            whole: AtomicUsize::new(0),
            marked_bad: AtomicUsize::new(0),
        });
        let action = Action::Copy {
            from: Side::B,
            source: Box::new(entry.clone()),
            replaces: Some(Box::new(replaced)),
            version: entry.version.clone(),
        };
        let report = apply(
            Arc::clone(&folder),
            vec![action],
            Arc::new(RwLock::new(sources)),
            Stagger::NONE,
            Arc::clone(&peers),
            db,
            || {},
        )
        .await;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(std::fs::read(root.join("doc")).unwrap(), new);
        assert_eq!(
            peers.near.load(Ordering::SeqCst),
            1,
            "a delta was asked for"
        );
        assert_eq!(
            peers.whole.load(Ordering::SeqCst),
            1,
            "then the whole chunk"
        );
        assert_eq!(
            peers.marked_bad.load(Ordering::SeqCst),
            0,
            "the peer is not blamed"
        );
    }

    #[tokio::test]
    async fn a_holder_announced_during_the_round_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let (root, folder, db) = test_folder(dir.path());
        let (one, two) = (b"first file".to_vec(), b"second file".to_vec());
        let entries = [file("one", &one), file("two", &two)];
        let early = DeviceId::from_bytes([1; 32]);
        let late = DeviceId::from_bytes([2; 32]);
        let mut sources = ChunkSources::new();
        sources.add_entries(early, &entries);
        let sources = Arc::new(RwLock::new(sources));
        let peers = Arc::new(TwoPeers {
            chunks: [(Hash::of(&one), one.clone()), (Hash::of(&two), two.clone())].into(),
            early,
            late,
            gone: Hash::of(&two),
            sources: Arc::clone(&sources),
            asked: Mutex::default(),
        });
        let actions = entries
            .iter()
            .map(|e| Action::Copy {
                from: Side::B,
                source: Box::new(e.clone()),
                replaces: None,
                version: e.version.clone(),
            })
            .collect();
        let recorded = AtomicUsize::new(0);
        let report = apply(
            Arc::clone(&folder),
            actions,
            sources,
            Stagger::NONE,
            Arc::clone(&peers),
            db,
            || {
                recorded.fetch_add(1, Ordering::SeqCst);
            },
        )
        .await;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.files, 2);
        assert_eq!(std::fs::read(root.join("one")).unwrap(), one);
        assert_eq!(std::fs::read(root.join("two")).unwrap(), two);
        let asked = peers.asked.lock().unwrap().clone();
        assert!(asked.contains(&(late, Hash::of(&two))), "{asked:?}");
        assert!(recorded.load(Ordering::SeqCst) >= 1);
        assert!(folder.stored(&RelPath::new("two").unwrap()).is_some());
    }

    #[tokio::test]
    async fn recorded_files_are_served_at_once_and_held_maps_stay_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let (root, folder, db) = test_folder(dir.path());
        std::fs::write(root.join("here"), b"a local file").unwrap();
        folder.scan(&db, 1_700_000_000).unwrap();
        let body = b"fetched from a peer".to_vec();
        let entry = file("fetched", &body);
        let hash = Hash::of(&body);
        let peer = DeviceId::from_bytes([1; 32]);
        let mut sources = ChunkSources::new();
        sources.add_entries(peer, std::slice::from_ref(&entry));
        let sources = Arc::new(RwLock::new(sources));
        let peers = Arc::new(TwoPeers {
            chunks: [(hash, body.clone())].into(),
            early: peer,
            late: DeviceId::from_bytes([2; 32]),
            gone: Hash::of(b"nothing"),
            sources: Arc::clone(&sources),
            asked: Mutex::default(),
        });
        // A reader (the chunk server, say) holds the map through the round.
        let held = folder.chunk_map();
        assert!(held.contains(&Hash::of(b"a local file")));
        let action = Action::Copy {
            from: Side::B,
            source: Box::new(entry.clone()),
            replaces: None,
            version: entry.version.clone(),
        };
        let report = apply(
            Arc::clone(&folder),
            vec![action],
            sources,
            Stagger::NONE,
            peers,
            db,
            || {},
        )
        .await;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let served = folder.chunk_map();
        assert_eq!(served.read_chunk(&hash, body.len() as u32), Some(body));
        assert!(served.contains(&Hash::of(b"a local file")));
        assert!(
            !held.contains(&hash),
            "a held map was changed under its reader"
        );
    }
}
