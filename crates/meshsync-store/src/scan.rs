//! The scanner: what is in a folder now, compared with what the index says.
//!
//! Three stages:
//! 1. a parallel walk (the `ignore` crate's walker, every git/hidden filter
//!    off, our `.meshsyncignore` rules on, symlinks never followed) that
//!    `lstat`s every entry;
//! 2. [`HashPolicy`]: files whose (size, mtime, inode, ctime, permissions)
//!    match the index are not read; changed files are hashed now
//!    ([`HashPolicy::Changed`]) or left for the copy that reads them anyway
//!    ([`HashPolicy::Deferred`]); `--checksum` re-reads everything;
//! 3. entries: new and changed paths get the tree's next sequence number and
//!    a version bump; paths gone since the last scan become tombstones.
//!
//! What the scanner must never do: follow a symlink, tombstone a path it
//! could not look at (an unreadable directory keeps its old entries), or
//! write anything to the folder.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use meshsync_core::chunking::ChunkParams;
use meshsync_core::entry::{Content, FileEntry, FileKind, Timestamp};
use meshsync_core::ids::ShortId;
use meshsync_core::ignore::IgnoreRules;
use meshsync_core::path::{RelPath, TEMP_PREFIX, case_collisions};

use crate::db::{LocalStat, StoredEntry, StoredIndex};
use crate::hashing::read_chunks;

/// When changed files are read and hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashPolicy {
    /// Hash every new or changed file during the scan.
    Changed,
    /// Record only their stat; the copy that reads them fills in the hashes.
    Deferred,
    /// Re-read every file, changed or not (`--checksum`).
    All,
}

/// Something the scan could not take in; the scan goes on without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanProblem {
    /// The path concerned (relative to the root where possible).
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
    /// Data was left out (unreadable, unrepresentable name): the sync is not
    /// complete. `false` for notes (a skipped socket, a case collision).
    pub is_error: bool,
}

impl ScanProblem {
    fn error(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ScanProblem {
            path: path.into(),
            reason: reason.into(),
            is_error: true,
        }
    }

    fn note(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ScanProblem {
            path: path.into(),
            reason: reason.into(),
            is_error: false,
        }
    }
}

/// How to scan.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// When to hash.
    pub hash: HashPolicy,
    /// Walker and hasher threads.
    pub threads: usize,
    /// This device's clock for version counters (Unix seconds): a change
    /// gets a counter of at least this (see `VersionVector::bump_at`).
    pub clock: u64,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            hash: HashPolicy::Changed,
            threads: default_threads(),
            clock: 0,
        }
    }
}

/// Threads for I/O-bound work: reads from a cold disk overlap, so more
/// threads than cores pay off (measured: docs/benchmarks.md).
pub fn default_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores * 4).clamp(4, 16)
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct ScanOutcome {
    /// The tree's full index now (tombstones included).
    pub index: StoredIndex,
    /// Entries that are new or differ from the previous index (to store).
    pub changed: Vec<RelPath>,
    /// Paths dropped from the index (now ignored).
    pub forgotten: Vec<RelPath>,
    /// Problems met; none of them stops the scan.
    pub problems: Vec<ScanProblem>,
    /// The tree's last sequence number after this scan.
    pub sequence: u64,
    /// Live files, directories and symlinks seen.
    pub entries_seen: usize,
    /// Bytes read to hash.
    pub bytes_hashed: u64,
    /// Temporary files left by an interrupted run (absolute paths).
    pub stale_temps: Vec<PathBuf>,
    /// The largest version counter this scan issued (0: none).
    pub last_counter: u64,
    /// Paths whose name on disk is not their NFC form (e.g. NFD names made
    /// on macOS): relative path as stored on disk, by normalised path.
    pub disk_names: BTreeMap<RelPath, PathBuf>,
}

impl ScanOutcome {
    /// Where `path` is on disk below `root`: its own spelling if the scan saw
    /// one, else its parent's spelling and its normalised name.
    pub fn disk_path(&self, root: &Path, path: &RelPath) -> PathBuf {
        disk_path(root, &self.disk_names, path)
    }
}

/// See [`ScanOutcome::disk_path`].
pub fn disk_path(root: &Path, disk_names: &BTreeMap<RelPath, PathBuf>, path: &RelPath) -> PathBuf {
    if disk_names.is_empty() {
        return root.join(path.as_str());
    }
    if let Some(raw) = disk_names.get(path) {
        return root.join(raw);
    }
    match path.parent() {
        Some(parent) => disk_path(root, disk_names, &parent).join(path.file_name()),
        None => root.join(path.as_str()),
    }
}

/// The lstat facts of one path.
#[derive(Debug, Clone)]
pub struct Observed {
    /// File, directory or symlink.
    pub kind: FileKind,
    /// Size in bytes (files only).
    pub size: u64,
    /// Modification time.
    pub mtime: Timestamp,
    /// `mode & 0o7777`.
    pub permissions: u32,
    /// A symlink's target.
    pub symlink_target: Option<String>,
    /// Inode and ctime.
    pub local: LocalStat,
}

impl Observed {
    /// Reads the facts of `path` without following a symlink.
    pub fn of(path: &Path) -> std::io::Result<Option<Observed>> {
        let md = fs::symlink_metadata(path)?;
        Ok(Observed::from_metadata(path, &md))
    }

    /// Facts from metadata already read; `None` for sockets, devices, fifos.
    pub fn from_metadata(path: &Path, md: &fs::Metadata) -> Option<Observed> {
        let ft = md.file_type();
        let (kind, symlink_target) = if ft.is_file() {
            (FileKind::File, None)
        } else if ft.is_dir() {
            (FileKind::Directory, None)
        } else if ft.is_symlink() {
            let target = fs::read_link(path)
                .ok()?
                .into_os_string()
                .into_string()
                .ok()?;
            (FileKind::Symlink, Some(target))
        } else {
            return None;
        };
        Some(Observed {
            kind,
            size: if kind == FileKind::File { md.size() } else { 0 },
            mtime: Timestamp {
                secs: md.mtime(),
                nanos: md.mtime_nsec() as u32,
            },
            permissions: if kind == FileKind::Symlink {
                0o777
            } else {
                md.permissions().mode() & 0o7777
            },
            symlink_target,
            local: LocalStat {
                inode: md.ino(),
                ctime: (md.ctime(), md.ctime_nsec() as u32),
            },
        })
    }

    /// Whether the path still looks exactly as `entry` + `local` recorded it
    /// (so its stored content can be trusted without reading it).
    ///
    /// A directory's mtime and ctime move whenever a child is added or
    /// removed, so for directories only kind, inode and permissions count.
    pub fn matches(&self, stored: &StoredEntry) -> bool {
        let e = &stored.entry;
        let same_local = match (self.kind, stored.local) {
            (FileKind::Directory, Some(l)) => l.inode == self.local.inode,
            (_, l) => l == Some(self.local),
        };
        e.is_live()
            && e.kind == self.kind
            && e.size == self.size
            && (self.kind == FileKind::Directory || e.mtime == self.mtime)
            && e.permissions == self.permissions
            && e.symlink_target == self.symlink_target
            && same_local
    }
}

/// What a scan changed, without the index it read: the entries to store
/// and the paths to drop. [`scan_changes`] reads the previous index by
/// reference, so a rescan that finds nothing new costs the walk, not a
/// second copy of the index (measured on a daemon with 20,000 files: the
/// copy and the rebuilt index were 12-13 MiB of its peak heap).
#[derive(Debug, Default)]
pub struct ScanChanges {
    /// Entries that are new or differ from the previous index, in the order
    /// the scan gave them sequence numbers.
    pub updates: Vec<StoredEntry>,
    /// Paths dropped from the index (now ignored).
    pub forgotten: Vec<RelPath>,
    /// Problems met; none of them stops the scan.
    pub problems: Vec<ScanProblem>,
    /// The tree's last sequence number after this scan.
    pub sequence: u64,
    /// Live files, directories and symlinks seen.
    pub entries_seen: usize,
    /// Bytes read to hash.
    pub bytes_hashed: u64,
    /// Temporary files left by an interrupted run (absolute paths).
    pub stale_temps: Vec<PathBuf>,
    /// The largest version counter this scan issued (0: none).
    pub last_counter: u64,
    /// See [`ScanOutcome::disk_names`].
    pub disk_names: BTreeMap<RelPath, PathBuf>,
}

impl ScanChanges {
    /// Applies the changes to the index they were computed against.
    pub fn apply_to(updates: Vec<StoredEntry>, forgotten: &[RelPath], index: &mut StoredIndex) {
        meshsync_core::plan::insert_batch(
            index,
            updates.into_iter().map(|u| (u.entry.path.clone(), u)),
        );
        for path in forgotten {
            index.remove(path);
        }
    }

    /// The outcome with `previous` (the index the scan read) brought up to
    /// date.
    pub fn into_outcome(self, mut previous: StoredIndex) -> ScanOutcome {
        let changed = self.updates.iter().map(|u| u.entry.path.clone()).collect();
        Self::apply_to(self.updates, &self.forgotten, &mut previous);
        ScanOutcome {
            index: previous,
            changed,
            forgotten: self.forgotten,
            problems: self.problems,
            sequence: self.sequence,
            entries_seen: self.entries_seen,
            bytes_hashed: self.bytes_hashed,
            stale_temps: self.stale_temps,
            last_counter: self.last_counter,
            disk_names: self.disk_names,
        }
    }
}

/// Scans `root` against its `previous` index: [`scan_changes`], applied.
pub fn scan(
    root: &Path,
    previous: StoredIndex,
    ignore: &IgnoreRules,
    device: ShortId,
    last_sequence: u64,
    options: &ScanOptions,
) -> ScanOutcome {
    scan_changes(root, &previous, ignore, device, last_sequence, options).into_outcome(previous)
}

/// Scans `root` against its `previous` index and returns what changed.
pub fn scan_changes(
    root: &Path,
    previous: &StoredIndex,
    ignore: &IgnoreRules,
    device: ShortId,
    last_sequence: u64,
    options: &ScanOptions,
) -> ScanChanges {
    let Walked {
        observed,
        mut problems,
        unreadable_dirs,
        stale_temps,
        disk_names,
    } = walk(root, ignore, options.threads);
    let mut out = ScanChanges {
        sequence: last_sequence,
        stale_temps,
        disk_names,
        ..ScanChanges::default()
    };

    // Which files must be read now.
    let to_hash: Vec<&RelPath> = observed
        .iter()
        .filter(|(p, o)| {
            o.kind == FileKind::File
                && match options.hash {
                    HashPolicy::All => true,
                    HashPolicy::Deferred => false,
                    HashPolicy::Changed => !previous
                        .get(*p)
                        .is_some_and(|s| o.matches(s) && s.entry.content.is_some()),
                }
        })
        .map(|(p, _)| p)
        .collect();
    let hashed = hash_files(root, &out.disk_names, &to_hash, previous, options.threads);

    for (path, obs) in &observed {
        let prev = previous.get(path);
        let fresh = hashed.get(path);
        if let Some(Err(reason)) = fresh {
            problems.push(ScanProblem::error(path.as_str(), reason.clone()));
            // Keep whatever we knew; do not invent a change we cannot read.
            continue;
        }
        let (obs, content) = match fresh {
            Some(Ok((o, c))) => (o, Some(c.clone())),
            _ => (obs, None),
        };
        match prev {
            Some(p) if obs.matches(p) && (content.is_none() || content == p.entry.content) => {}
            _ => {
                let mut version = prev.map(|p| p.entry.version.clone()).unwrap_or_default();
                let content = content.or_else(|| {
                    // Only permissions or ctime moved: the bytes are the same.
                    prev.filter(|p| {
                        p.entry.is_live()
                            && p.entry.kind == obs.kind
                            && p.entry.size == obs.size
                            && p.entry.mtime == obs.mtime
                            && p.local.map(|l| l.inode) == Some(obs.local.inode)
                    })
                    .and_then(|p| p.entry.content.clone())
                });
                let content_same = prev.is_some_and(|p| {
                    p.entry.is_live()
                        && p.entry.kind == obs.kind
                        && p.entry.permissions == obs.permissions
                        && p.entry.symlink_target == obs.symlink_target
                        && (obs.kind == FileKind::Directory
                            || (p.entry.size == obs.size
                                && content.is_some()
                                && p.entry.content.as_ref().map(|c| c.hash)
                                    == content.as_ref().map(|c| c.hash)
                                && p.entry.mtime == obs.mtime))
                });
                let sequence = if content_same {
                    // Only local facts (inode, ctime, dir mtime) moved: no new version.
                    prev.expect("content_same implies prev").entry.sequence
                } else {
                    out.last_counter = out.last_counter.max(version.bump_at(device, options.clock));
                    out.sequence += 1;
                    out.sequence
                };
                let entry = FileEntry {
                    path: path.clone(),
                    kind: obs.kind,
                    size: obs.size,
                    mtime: obs.mtime,
                    permissions: obs.permissions,
                    symlink_target: obs.symlink_target.clone(),
                    content,
                    version,
                    deleted: false,
                    sequence,
                };
                out.updates.push(StoredEntry {
                    entry,
                    local: Some(obs.local),
                });
            }
        }
    }

    // Paths the index knew that are gone now.
    for (path, prev) in previous {
        if observed.contains_key(path) {
            continue;
        }
        if ignore.is_ignored(path, prev.entry.kind == FileKind::Directory) {
            out.forgotten.push(path.clone());
            continue;
        }
        if prev.entry.deleted || unreadable_dirs.iter().any(|d| path.starts_with(d)) {
            continue;
        }
        let mut tomb = prev.entry.clone();
        tomb.deleted = true;
        tomb.content = None;
        tomb.size = 0;
        out.last_counter = out
            .last_counter
            .max(tomb.version.bump_at(device, options.clock));
        out.sequence += 1;
        tomb.sequence = out.sequence;
        out.updates.push(StoredEntry {
            entry: tomb,
            local: None,
        });
    }

    for group in case_collisions(observed.keys()) {
        problems.push(ScanProblem::note(
            group[0].as_str(),
            format!(
                "names differ only in case ({}); they would collide on a case-insensitive file system",
                group.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    out.entries_seen = observed.len();
    out.bytes_hashed = hashed
        .values()
        .filter_map(|r| r.as_ref().ok())
        .map(|(o, _)| o.size)
        .sum();
    out.problems = problems;
    out
}

/// What the walk saw.
struct Walked {
    observed: BTreeMap<RelPath, Observed>,
    problems: Vec<ScanProblem>,
    unreadable_dirs: Vec<RelPath>,
    stale_temps: Vec<PathBuf>,
    disk_names: BTreeMap<RelPath, PathBuf>,
}

/// One walked path: normalised name, facts, and its on-disk spelling when
/// that differs.
type Found = (RelPath, Observed, Option<PathBuf>);

/// Walks `root` in parallel, lstat-ing everything not ignored.
fn walk(root: &Path, ignore: &IgnoreRules, threads: usize) -> Walked {
    let found: Mutex<Vec<Found>> = Mutex::new(Vec::new());
    let problems: Mutex<Vec<ScanProblem>> = Mutex::new(Vec::new());
    let unreadable: Mutex<Vec<RelPath>> = Mutex::new(Vec::new());
    let ignore = Arc::new(ignore.clone());
    let root_buf = root.to_path_buf();
    let filter_root = root_buf.clone();
    let filter_rules = Arc::clone(&ignore);
    let stale_temps: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
    let filter_temps = Arc::clone(&stale_temps);
    let walker = ignore::WalkBuilder::new(root)
        .standard_filters(false)
        .follow_links(false)
        .threads(threads)
        .filter_entry(move |e| {
            let Ok(rel) = e.path().strip_prefix(&filter_root) else {
                return true;
            };
            if rel.as_os_str().is_empty() {
                return true;
            }
            let Some(rel) = rel.to_str().and_then(|s| RelPath::new(s).ok()) else {
                return true; // reported by the visitor
            };
            if rel.is_internal() {
                if rel.file_name().starts_with(TEMP_PREFIX)
                    && !e.file_type().is_some_and(|t| t.is_dir())
                {
                    filter_temps
                        .lock()
                        .expect("poisoned")
                        .push(e.path().to_path_buf());
                }
                return false;
            }
            let is_dir = e.file_type().is_some_and(|t| t.is_dir());
            !filter_rules.matches_itself(&rel, is_dir)
        })
        .build_parallel();
    walker.run(|| {
        let root = &root_buf;
        let found = &found;
        let problems = &problems;
        let unreadable = &unreadable;
        let mut local: Vec<Found> = Vec::new();
        struct Flush<'a> {
            local: Vec<Found>,
            into: &'a Mutex<Vec<Found>>,
        }
        impl Drop for Flush<'_> {
            fn drop(&mut self) {
                self.into.lock().expect("poisoned").append(&mut self.local);
            }
        }
        let mut flush = Flush {
            local: std::mem::take(&mut local),
            into: found,
        };
        Box::new(move |result| {
            let entry = match result {
                Ok(e) => e,
                Err(err) => {
                    let path = error_path(&err).unwrap_or_else(|| root.clone());
                    if let Some(rel) = relative(root, &path) {
                        unreadable.lock().expect("poisoned").push(rel);
                    }
                    problems.lock().expect("poisoned").push(ScanProblem::error(
                        path,
                        format!("{err}; its contents were not synced"),
                    ));
                    return ignore::WalkState::Continue;
                }
            };
            if entry.depth() == 0 {
                return ignore::WalkState::Continue;
            }
            let Some(rel_os) = entry.path().strip_prefix(root).ok() else {
                return ignore::WalkState::Continue;
            };
            let rel = match rel_os.to_str().map(RelPath::new) {
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    problems
                        .lock()
                        .expect("poisoned")
                        .push(ScanProblem::error(rel_os, format!("{e}; skipped")));
                    return ignore::WalkState::Skip;
                }
                None => {
                    problems.lock().expect("poisoned").push(ScanProblem::error(
                        rel_os,
                        "name is not valid UTF-8; skipped",
                    ));
                    return ignore::WalkState::Skip;
                }
            };
            let raw = (rel.as_str() != rel_os.as_os_str()).then(|| rel_os.to_path_buf());
            match fs::symlink_metadata(entry.path()) {
                Ok(md) => match Observed::from_metadata(entry.path(), &md) {
                    Some(o) => flush.local.push((rel, o, raw)),
                    None => problems.lock().expect("poisoned").push(ScanProblem::note(
                        rel.as_str(),
                        "not a regular file, directory or symlink; skipped",
                    )),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // vanished: a later scan sees it
                Err(e) => problems
                    .lock()
                    .expect("poisoned")
                    .push(ScanProblem::error(rel.as_str(), e.to_string())),
            }
            ignore::WalkState::Continue
        })
    });
    let mut map = BTreeMap::new();
    let mut disk_names = BTreeMap::new();
    let mut problems = problems.into_inner().expect("poisoned");
    for (p, o, raw) in found.into_inner().expect("poisoned") {
        if map.contains_key(&p) {
            problems.push(ScanProblem::error(
                raw.clone().unwrap_or_else(|| p.as_str().into()),
                format!(
                    "two names on disk are both {p:?} once Unicode-normalised; only one is synced"
                ),
            ));
            continue;
        }
        if let Some(raw) = raw {
            disk_names.insert(p.clone(), raw);
        }
        map.insert(p, o);
    }
    let stale_temps = std::mem::take(&mut *stale_temps.lock().expect("poisoned"));
    Walked {
        observed: map,
        problems,
        unreadable_dirs: unreadable.into_inner().expect("poisoned"),
        stale_temps,
        disk_names,
    }
}

fn relative(root: &Path, path: &Path) -> Option<RelPath> {
    path.strip_prefix(root)
        .ok()?
        .to_str()
        .and_then(|s| RelPath::new(s).ok())
}

fn error_path(err: &ignore::Error) -> Option<PathBuf> {
    match err {
        ignore::Error::WithPath { path, .. } => Some(path.clone()),
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
            error_path(err)
        }
        ignore::Error::Partial(errs) => errs.iter().find_map(error_path),
        _ => None,
    }
}

type Hashed = BTreeMap<RelPath, Result<(Observed, Content), String>>;

/// Hashes `paths` on `threads` threads. A file that changes while it is read
/// is read again (up to three times).
fn hash_files(
    root: &Path,
    disk_names: &BTreeMap<RelPath, PathBuf>,
    paths: &[&RelPath],
    previous: &StoredIndex,
    threads: usize,
) -> Hashed {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Hashed::new());
    std::thread::scope(|s| {
        for _ in 0..threads.min(paths.len()).max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(path) = paths.get(i) else { break };
                    let prev_avg = previous
                        .get(*path)
                        .and_then(|p| p.entry.content.as_ref())
                        .map(|c| c.chunk_avg);
                    let r = hash_stable(&disk_path(root, disk_names, path), prev_avg);
                    results.lock().expect("poisoned").insert((*path).clone(), r);
                }
            });
        }
    });
    results.into_inner().expect("poisoned")
}

/// Hashes one file; retries while it changes under the read.
pub fn hash_stable(path: &Path, previous_avg: Option<u32>) -> Result<(Observed, Content), String> {
    for _ in 0..3 {
        let before = match Observed::of(path) {
            Ok(Some(o)) if o.kind == FileKind::File => o,
            Ok(_) => return Err("is no longer a regular file".into()),
            Err(e) => return Err(e.to_string()),
        };
        let mut f = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| e.to_string())?;
        let params = ChunkParams::for_file(before.size, previous_avg);
        let content =
            read_chunks(&mut f, before.size, params, |_, _| Ok(())).map_err(|e| e.to_string())?;
        let after = Observed::from_metadata(path, &f.metadata().map_err(|e| e.to_string())?)
            .ok_or("is no longer a regular file")?;
        let total: u64 = content.chunks.iter().map(|c| u64::from(c.len)).sum();
        if after.size == before.size && after.mtime == before.mtime && total == after.size {
            return Ok((after, content));
        }
    }
    Err("keeps changing while it is read; will try again at the next scan".into())
}

/// Paths of `index` that are live files without content (not hashed yet).
pub fn unhashed_files(index: &StoredIndex) -> HashSet<RelPath> {
    index
        .iter()
        .filter(|(_, s)| {
            s.entry.is_live() && s.entry.kind == FileKind::File && s.entry.content.is_none()
        })
        .map(|(p, _)| p.clone())
        .collect()
}
