//! Daemon mode: devices pull from the global view of the peers they reach,
//! as `meshsync run` does (`crates/meshsync/src/daemon/{folder,pull}.rs`).
//!
//! A [`PullStep`] on device D:
//! 1. scans D's tree with the daemon's hash policy (`Changed`) and commits
//!    the scan (the daemon scans, stores, announces, then pulls);
//! 2. takes in the indexes its connected peers committed, as the daemon
//!    receives them ([`View`]): a peer that connects sends its whole index,
//!    then only entries with a new sequence number, merged by path (a path
//!    the peer forgot stays in the view); a lagging peer's newest entries
//!    have not arrived; a peer not connected is forgotten;
//! 3. folds D's index and the views into the global view
//!    ([`meshsync_core::global::global_index`], D first, then peers by
//!    number) and asks [`meshsync_core::pull::plan_pull`] what to do;
//! 4. carries out the actions as `pull.rs` does ([`PullRun`]): each checks
//!    that the disk is still as scanned; directories, symlinks, metadata,
//!    deletes and version records happen in plan order, files are fetched
//!    meanwhile and renamed into place at the end; every record goes into
//!    one index commit at the very end (`Folder::record`). A conflict
//!    loser whose winner is a fetched file keeps its name until that file
//!    is here: it moves to its conflict name right before the winner's
//!    rename (a crash may fall between the two), and not at all if the
//!    fetch fails. A conflict
//!    loser's old name, and a path deleted to make room for a write of the
//!    same plan, keep their entries until that write records the path, or
//!    a scan finds it gone: a peer's view never learns that a path was
//!    forgotten, and a tombstone for a write that never landed would claim
//!    it (bug 8). A directory's children deleted to make room get the
//!    swarm's tombstone the plan gives them. A
//!    file's bytes come from a local file the
//!    index says holds them, else from a connected peer whose index
//!    announced them and whose disk still holds them; none: the file fails
//!    for this round.
//!
//! Faults: the peers drop mid-pull (later files find local chunks only), the
//! device crashes before its index commit (the disk keeps a prefix of the
//! executor's steps), a user changes a path between plan and execution.
//! Quiescence: every device connected to every other, pulling in turn,
//! round after round, until a whole round plans nothing.
//!
//! The harness decides nothing the core decides: [`meshsync_core::pull`] is
//! the only rule it asks.

use std::collections::BTreeSet;
use std::rc::Rc;

use meshsync_core::entry::{FileEntry, FileKind, Timestamp};
use meshsync_core::global::{GlobalIndex, global_index};
use meshsync_core::ids::Hash;
use meshsync_core::path::RelPath;
use meshsync_core::plan::{Action, EntryMap, Index, Plan, Side};
use meshsync_core::pull::{PullInput, plan_pull};
use meshsync_core::version::Causality;

use crate::sim::fs::{LocalStat, Node, Tag, Tree};
use crate::sim::scan::{HashPolicy, Snapshot, matches, scan};
use crate::sim::world::{
    Device, Kind, PullStep, SyncReport, Violation, World, describe, has_work, plan_text,
};

/// What a device received of one peer's index.
#[derive(Debug, Clone)]
pub struct View {
    /// The peer's entries, merged by path as they arrived.
    pub index: Index,
    /// The highest sequence number received.
    pub seen: u64,
}

/// The daemon's scan policy: new and changed files are hashed at once.
const SCAN: HashPolicy = HashPolicy::Changed;

/// What one pull's executor did.
#[derive(Debug, Default)]
pub struct PullOutcome {
    /// Entries to record, in the order the executor pushed them.
    pub records: Vec<(FileEntry, Option<LocalStat>)>,
    /// Actions refused because the disk was not as scanned (or another
    /// local failure).
    pub refused: Vec<String>,
    /// Files whose bytes no local file or connected peer had.
    pub unavailable: Vec<String>,
    /// Executor steps taken (actions, then file commits).
    pub steps: usize,
    /// Whether every step ran.
    pub complete: bool,
    /// Paths whose disk the pull changed.
    pub written: BTreeSet<RelPath>,
}

/// A file fetched, waiting to be renamed into place.
struct Fetched {
    entry: FileEntry,
    expected: Option<FileEntry>,
    node: Node,
}

/// Where a file's bytes can come from, besides the pulling device itself.
pub struct Swarm<'w> {
    /// Every device (the puller's tree is taken out while it runs).
    pub devices: &'w [Device],
    /// The puller's number.
    pub me: usize,
    /// What the puller received of each peer (`None`: not connected).
    pub views: &'w [Option<View>],
}

impl<'w> Swarm<'w> {
    /// A connected peer's file with content `hash`, as its chunk server
    /// reads it: its index says the path holds those bytes, and they are
    /// still there.
    fn peer_file(&self, hash: &Hash) -> Option<&'w Node> {
        self.views.iter().enumerate().find_map(|(p, view)| {
            let view = view.as_ref()?;
            let announced = view
                .index
                .values()
                .any(|e| e.is_live() && content_hash(e) == Some(*hash));
            if !announced {
                return None;
            }
            let d = &self.devices[p];
            d.snap.index.iter().find_map(|(path, e)| {
                let n = d.tree.nodes.get(path)?;
                (e.is_live()
                    && content_hash(e) == Some(*hash)
                    && n.content.as_ref().map(|c| c.hash) == Some(*hash))
                .then_some(n)
            })
        })
    }

    /// The oracle's: the writes that the devices elsewhere whose index
    /// records `entry`'s state at `path`, with a version `entry` has seen,
    /// stood for at their last commit (what their index entry stands for,
    /// wherever the bytes are now).
    fn recorded_writes(&self, entry: &FileEntry, path: &RelPath) -> Vec<Vec<Tag>> {
        self.devices
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.me)
            .filter_map(|(_, d)| {
                let e = d.snap.index.get(path)?;
                let seen = matches!(
                    entry.version.compare(&e.version),
                    Causality::Newer | Causality::Equal
                );
                let tags = d.scanned_tags.get(path)?;
                (seen && e.is_live() && same_bytes(e, entry)).then(|| tags.clone())
            })
            .collect()
    }

    /// The oracle's: the writes `entry`'s bytes (or link text) stand for:
    /// all those recorded at its path with a version it has seen (a version
    /// merged from identical copies stands for each of their writes), else
    /// at the original name of a conflict copy (a pull fetches a loser it
    /// won against under a new name); else those of any node there with
    /// those bytes.
    fn origin_writes(&self, entry: &FileEntry) -> Option<Vec<Tag>> {
        let paths = [Some(entry.path.clone()), original_path(&entry.path)];
        for path in paths.iter().flatten() {
            let recorded: Vec<Tag> = self
                .recorded_writes(entry, path)
                .into_iter()
                .flatten()
                .collect();
            if !recorded.is_empty() {
                return Some(recorded);
            }
            let any = self
                .devices
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != self.me)
                .find_map(|(_, d)| d.tree.nodes.get(path).filter(|n| holds(n, entry)));
            if let Some(n) = any {
                return Some(n.tags.clone());
            }
        }
        None
    }
}

/// Whether two live entries record the same bytes or link text.
fn same_bytes(a: &FileEntry, b: &FileEntry) -> bool {
    a.kind == b.kind
        && match a.kind {
            FileKind::File => content_hash(a).is_some() && content_hash(a) == content_hash(b),
            _ => a.symlink_target == b.symlink_target,
        }
}

/// Whether `n` holds `entry`'s bytes or link text.
fn holds(n: &Node, entry: &FileEntry) -> bool {
    n.kind == entry.kind
        && match entry.kind {
            FileKind::File => n.content.as_ref().map(|c| c.hash) == content_hash(entry),
            _ => n.symlink_target() == entry.symlink_target,
        }
}

fn content_hash(e: &FileEntry) -> Option<Hash> {
    e.content.as_ref().map(|c| c.hash)
}

/// One run of a pull plan on the pulling device, as `pull.rs` runs it.
pub struct PullRun<'a> {
    tree: &'a mut Tree,
    stored: &'a Snapshot,
    swarm: Swarm<'a>,
    now: Timestamp,
    /// Files at this plan position or later find no peer (they dropped).
    peers_until: usize,
    /// The executor stops after this many steps (a crash).
    steps_until: usize,
    /// The paths the plan writes (files, symlinks, directories).
    writes: BTreeSet<RelPath>,
    out: PullOutcome,
}

impl<'a> PullRun<'a> {
    /// A run on `tree`, scanned as `stored`.
    pub fn new(
        tree: &'a mut Tree,
        stored: &'a Snapshot,
        swarm: Swarm<'a>,
        now: Timestamp,
        peers_until: usize,
        steps_until: usize,
    ) -> Self {
        PullRun {
            tree,
            stored,
            swarm,
            now,
            peers_until,
            steps_until,
            writes: BTreeSet::new(),
            out: PullOutcome::default(),
        }
    }

    fn stored_entry(&self, path: &RelPath) -> Option<&FileEntry> {
        self.stored.index.get(path)
    }

    /// `write::check_unchanged`: `path` must be exactly as the index says.
    fn check_unchanged(&self, path: &RelPath, expected: Option<&FileEntry>) -> Result<(), String> {
        let same = match (expected, self.tree.nodes.get(path)) {
            (None, None) => true,
            (Some(e), Some(n)) => matches(n, e, self.stored.local.get(path)),
            _ => false,
        };
        if same {
            Ok(())
        } else {
            Err("target changed since the scan".into())
        }
    }

    fn record(&mut self, entry: FileEntry, local: Option<LocalStat>) {
        self.out.records.push((entry, local));
    }

    fn step(&mut self) -> bool {
        if self.out.steps >= self.steps_until {
            return false;
        }
        self.out.steps += 1;
        true
    }

    /// Runs `plan` (this device's side only).
    pub fn execute(mut self, plan: &Plan) -> PullOutcome {
        self.writes = plan
            .actions
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Action::Copy { .. } | Action::Symlink { .. } | Action::MakeDir { .. }
                )
            })
            .map(|a| a.path().clone())
            .collect();
        // Losers whose winner is fetched: moved right before it lands.
        let fetched_paths: BTreeSet<&RelPath> = plan
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Copy { from: Side::B, .. }))
            .map(Action::path)
            .collect();
        let mut losers: Vec<&Action> = Vec::new();
        let mut fetched = Vec::new();
        let mut made_dirs = Vec::new();
        for (i, action) in plan.actions.iter().enumerate() {
            if let Action::KeepConflictCopy { entry, .. } = action
                && fetched_paths.contains(&entry.path)
            {
                losers.push(action);
                continue;
            }
            if !self.step() {
                return self.out;
            }
            let result = match action {
                Action::Copy {
                    from: Side::B,
                    source,
                    replaces,
                    version,
                } => self.fetch(i, source, replaces.is_some(), version).map(|f| {
                    fetched.push(f);
                }),
                Action::MakeDir { entry, .. } => self.make_dir(entry).map(|()| {
                    made_dirs.push(entry.clone());
                }),
                other => self.run_one(other),
            };
            if let Err(e) = result {
                self.fail(action.path(), e);
            }
        }
        for f in fetched {
            let path = f.entry.path.clone();
            if let Some(i) = losers.iter().position(|a| a.path() == &path) {
                if !self.step() {
                    return self.out;
                }
                let loser = losers.remove(i);
                if let Err(e) = self.run_one(loser) {
                    // The loser stays; the winner waits for the next round.
                    self.fail(&path, e);
                    continue;
                }
            }
            if !self.step() {
                return self.out;
            }
            if let Err(e) = self.commit_file(f) {
                self.fail(&path, e);
            }
        }
        for entry in made_dirs.iter().rev() {
            // Permissions last, as `pull.rs` sets them after the writes.
            if let Some(n) = self.tree.nodes.get_mut(&entry.path)
                && n.kind == FileKind::Directory
            {
                n.mode = entry.permissions;
                self.tree.touch(&entry.path);
            }
        }
        self.out.complete = true;
        self.out
    }

    fn fail(&mut self, path: &RelPath, e: String) {
        if e.starts_with("no connected peer") {
            self.out.unavailable.push(format!("{path}: {e}"));
        } else {
            self.out.refused.push(format!("{path}: {e}"));
        }
    }

    fn run_one(&mut self, action: &Action) -> Result<(), String> {
        match action {
            Action::KeepConflictCopy {
                side: Side::A,
                entry,
                to,
            } => {
                self.check_unchanged(&entry.path, self.stored_entry(&entry.path))?;
                if self.tree.nodes.contains_key(to) {
                    return Err(format!("rename to {to}: exists"));
                }
                let node = self
                    .tree
                    .nodes
                    .remove(&entry.path)
                    .ok_or("rename: source vanished")?;
                self.tree.nodes.insert(to.clone(), node);
                self.tree.touch(to);
                let mut moved = (**entry).clone();
                moved.path = to.clone();
                let local = self.tree.nodes[to].local;
                // The old name keeps its entry until the winner lands there
                // or a scan finds it gone (see the module docs).
                self.record(moved, Some(local));
                self.out.written.insert(entry.path.clone());
                self.out.written.insert(to.clone());
                Ok(())
            }
            Action::Symlink {
                from: Side::B,
                source,
                replaces,
                version,
            } => {
                let path = &source.path;
                self.tree.ensure_dirs(path.parent().as_ref(), self.now)?;
                let expected = replaces
                    .as_ref()
                    .and_then(|_| self.stored_entry(path).cloned());
                self.check_unchanged(path, expected.as_ref())?;
                let link = source.symlink_target.clone().unwrap_or_default();
                let tags = self.swarm.origin_writes(source).unwrap_or_default();
                let local = self.tree.fresh_local();
                self.tree.nodes.insert(
                    path.clone(),
                    Node {
                        kind: FileKind::Symlink,
                        payload: Rc::from(link.as_bytes()),
                        content: None,
                        mode: 0o777,
                        mtime: source.mtime,
                        local,
                        tags,
                    },
                );
                let mut entry = (**source).clone();
                entry.version = version.clone();
                self.record(entry, Some(local));
                self.out.written.insert(path.clone());
                Ok(())
            }
            Action::SetMetadata {
                side: Side::A,
                entry,
                ..
            } => {
                let stored = self.stored_entry(&entry.path).cloned();
                self.check_unchanged(&entry.path, stored.as_ref())?;
                let node = self.tree.nodes.get_mut(&entry.path).ok_or("gone")?;
                if entry.kind != FileKind::Symlink {
                    node.mode = entry.permissions;
                }
                if entry.kind != FileKind::Directory {
                    node.mtime = entry.mtime;
                }
                self.tree.touch(&entry.path);
                let local = self.tree.nodes[&entry.path].local;
                let mut recorded = (**entry).clone();
                if recorded.content.is_none() {
                    recorded.content = stored.and_then(|s| s.content);
                }
                self.record(recorded, Some(local));
                self.out.written.insert(entry.path.clone());
                Ok(())
            }
            Action::Delete {
                side: Side::A,
                expected,
                version,
                making_room,
            } => {
                let path = &expected.path;
                self.check_unchanged(path, self.stored_entry(path))?;
                if expected.kind == FileKind::Directory && self.tree.has_children(path) {
                    return Err("directory is not empty; left in place".into());
                }
                self.tree.nodes.remove(path);
                self.out.written.insert(path.clone());
                if *making_room && self.writes.contains(path) {
                    // No tombstone (see `Action::Delete::making_room`): the
                    // write that follows records the path.
                    return Ok(());
                }
                let mut tomb = (**expected).clone();
                tomb.deleted = true;
                tomb.content = None;
                tomb.size = 0;
                tomb.version = version.clone();
                self.record(tomb, None);
                Ok(())
            }
            Action::RecordVersion { path, version } => {
                if let Some(s) = self.stored_entry(path)
                    && s.version != *version
                {
                    let mut s = s.clone();
                    s.version = version.clone();
                    let local = self.stored.local.get(path).copied();
                    self.record(s, local);
                }
                Ok(())
            }
            other => panic!(
                "a pull executed another device's action: {}",
                describe(other)
            ),
        }
    }

    /// `apply::make_dir`: creates the directory (or takes an existing one),
    /// owner-writable until the permissions are set at the end.
    fn make_dir(&mut self, entry: &FileEntry) -> Result<(), String> {
        self.tree
            .ensure_dirs(entry.path.parent().as_ref(), self.now)?;
        match self.tree.nodes.get(&entry.path) {
            Some(n) if n.kind == FileKind::Directory => {}
            Some(_) => return Err("mkdir: exists and is not a directory".into()),
            None => {
                let local = self.tree.fresh_local();
                self.tree.nodes.insert(
                    entry.path.clone(),
                    Node {
                        kind: FileKind::Directory,
                        payload: Rc::from(&b""[..]),
                        content: None,
                        mode: entry.permissions,
                        mtime: entry.mtime,
                        local,
                        tags: Vec::new(),
                    },
                );
            }
        }
        let node = self.tree.nodes.get_mut(&entry.path).expect("just made");
        node.mode = entry.permissions | 0o700;
        self.tree.touch(&entry.path);
        let local = self.tree.nodes[&entry.path].local;
        self.record(entry.clone(), Some(local));
        self.out.written.insert(entry.path.clone());
        Ok(())
    }

    /// A `CopyJob`: the parent made, the bytes gathered from local files
    /// first, then from connected peers (gone from plan position
    /// `peers_until` on).
    fn fetch(
        &mut self,
        at: usize,
        source: &FileEntry,
        replacing: bool,
        version: &meshsync_core::version::VersionVector,
    ) -> Result<Fetched, String> {
        let path = &source.path;
        let hash = content_hash(source).ok_or("the announcing peer sent no chunk list")?;
        self.tree.ensure_dirs(path.parent().as_ref(), self.now)?;
        let expected = if replacing {
            self.stored_entry(path).cloned()
        } else {
            None
        };
        let local = self.stored.index.iter().find_map(|(p, e)| {
            let n = self.tree.nodes.get(p)?;
            (e.is_live()
                && content_hash(e) == Some(hash)
                && n.content.as_ref().map(|c| c.hash) == Some(hash))
            .then_some(n)
        });
        let from_peer = || {
            (at < self.peers_until)
                .then(|| self.swarm.peer_file(&hash))
                .flatten()
        };
        let holder = local
            .or_else(from_peer)
            .ok_or_else(|| format!("no connected peer has chunk {}", hash.to_hex()))?;
        let tags = self
            .swarm
            .origin_writes(source)
            .unwrap_or_else(|| holder.tags.clone());
        let mut entry = source.clone();
        entry.version = version.clone();
        Ok(Fetched {
            node: Node {
                kind: FileKind::File,
                payload: holder.payload.clone(),
                content: holder.content.clone(),
                mode: source.permissions,
                mtime: source.mtime,
                local: LocalStat { inode: 0, ctime: 0 },
                tags,
            },
            entry,
            expected,
        })
    }

    /// `apply::commit_partial`: into a real parent directory, over exactly
    /// the scanned file, or where nothing is.
    fn commit_file(&mut self, f: Fetched) -> Result<(), String> {
        let path = &f.entry.path.clone();
        if !self.tree.is_dir(path.parent().as_ref()) {
            return Err("unsafe parent (not a directory)".into());
        }
        match &f.expected {
            Some(e) => self.check_unchanged(path, Some(e))?,
            None if self.tree.nodes.contains_key(path) => {
                return Err("target changed since the scan".into());
            }
            None => {}
        }
        let local = self.tree.fresh_local();
        self.tree
            .nodes
            .insert(path.clone(), Node { local, ..f.node });
        self.record(f.entry, Some(local));
        self.out.written.insert(path.clone());
        Ok(())
    }
}

/// The path a conflict copy's name was made from (one level of naming).
fn original_path(copy: &RelPath) -> Option<RelPath> {
    const MARK: &str = ".sync-conflict-";
    let name = copy.file_name();
    let i = name.rfind(MARK)?;
    let rest = &name[i + MARK.len()..];
    // YYYYMMDD-HHMMSS-DEVICE7-tag, perhaps -N, then the extension.
    let end = crate::sim::world::conflict_mark_len(rest);
    let original = format!("{}{}", &name[..i], &rest[end..]);
    let candidate = copy.with_file_name(&original).ok()?;
    meshsync_core::conflict::is_conflict_copy_of(copy, &candidate).then_some(candidate)
}

impl World {
    /// Device `dev` takes in what its connected peers (`peers`) committed,
    /// except the newest updates of `lag`.
    fn receive(&mut self, dev: usize, peers: u64, lag: u64) {
        for p in 0..self.devices.len() {
            if p == dev {
                continue;
            }
            if peers >> p & 1 == 0 {
                self.views[dev][p] = None;
                continue;
            }
            if lag >> p & 1 == 1 {
                continue;
            }
            let committed = &self.devices[p].snap;
            match &mut self.views[dev][p] {
                None => {
                    self.views[dev][p] = Some(View {
                        index: committed.index.clone(),
                        seen: committed.sequence,
                    });
                }
                Some(view) => {
                    for e in committed.index.values() {
                        if e.sequence > view.seen {
                            view.index.insert(e.path.clone(), e.clone());
                        }
                    }
                    view.seen = view.seen.max(committed.sequence);
                }
            }
        }
    }

    /// Device `dev`'s global view and pull plan, its index being `local`.
    fn plan_pull_of(&self, dev: usize, local: &Snapshot) -> (GlobalIndex, Plan) {
        let mut maps: Vec<&dyn EntryMap> = vec![&local.index];
        maps.extend(
            self.views[dev]
                .iter()
                .flatten()
                .map(|v| &v.index as &dyn EntryMap),
        );
        let global = global_index(&maps);
        let plan = plan_pull(&PullInput {
            local: &local.index,
            global: &global,
            device: self.devices[dev].id,
            // `TreeMeta::clock`.
            clock: self.clock_of(dev).max(local.last_counter + 1),
            now_unix_secs: self.now(dev).secs,
        });
        (global, plan)
    }

    /// One daemon pull (see the module docs).
    pub fn pull(&mut self, p: &PullStep) -> Result<SyncReport, Violation> {
        let d = p.dev;
        if d >= self.devices.len() {
            return Ok(SyncReport {
                plan: Plan::default(),
                busy: false,
            });
        }
        self.stats.syncs += 1;
        let sequence_before = self.devices[d].snap.sequence;
        let dev = &self.devices[d];
        let scanned = scan(&dev.tree, &dev.snap, dev.id, self.clock_of(d), SCAN);
        let old = dev.snap.clone();
        self.note_scan(d, &old, &scanned);
        self.devices[d].scanned_tags = self.writes_on_disk(d);
        self.commit(d, scanned.clone())?;
        self.receive(d, p.peers & !(1 << d), p.lag);
        let (global, plan) = self.plan_pull_of(d, &scanned);
        let at_scan = self.writes_on_disk(d);
        let tree_at_scan = self.devices[d].tree.clone();
        let line = format!(
            "#{} {}: {} actions",
            self.step_no,
            crate::sim::world::Step::Pull(p.clone()),
            plan.actions.len()
        );
        self.log(|| line);
        if self.trace.is_some() {
            for act in &plan.actions {
                let line = format!("      {}", describe(act));
                self.log(|| line);
            }
            for r in &plan.refused {
                let line = format!("      refused {}: {}", r.path, r.reason);
                self.log(|| line);
            }
        }
        self.check_plan(&plan, &scanned.index, &global)?;
        if let Some(act) = plan.actions.iter().find(|a| a.side() == Some(Side::B)) {
            return Err(self.violation(
                Kind::BadAction,
                format!("a pull changes another device: {}", describe(act)),
            ));
        }
        self.stats.conflicts += plan
            .actions
            .iter()
            .filter(|x| matches!(x, Action::KeepConflictCopy { .. }))
            .count() as u64;

        let raced = match &p.race {
            Some(op) if op.device() == Some(d) => {
                let applied = self.user_op(op);
                let line = format!(
                    "      raced by {op}{}",
                    if applied { "" } else { " (no-op)" }
                );
                self.log(|| line);
                applied
            }
            _ => false,
        };
        self.stats.races += u64::from(raced);

        let (peers_until, steps_until) = match (p.stop_after, p.crash) {
            (Some(n), true) => (usize::MAX, n),
            (None, true) => (usize::MAX, usize::MAX),
            (Some(n), false) => (n, usize::MAX),
            (None, false) => (usize::MAX, usize::MAX),
        };
        let mut tree = std::mem::take(&mut self.devices[d].tree);
        let outcome = PullRun::new(
            &mut tree,
            &scanned,
            Swarm {
                devices: &self.devices,
                me: d,
                views: &self.views[d],
            },
            self.now(d),
            peers_until,
            steps_until,
        )
        .execute(&plan);
        self.devices[d].tree = tree;
        self.stats.actions += outcome.steps as u64;
        self.stats.refused_actions += (outcome.refused.len() + outcome.unavailable.len()) as u64;
        let cut = peers_until < plan.actions.len() || !outcome.complete;
        self.stats.interrupted += u64::from(cut);
        self.note_pull_same_versions(d, &plan, &global, &tree_at_scan);
        if self.trace.is_some() {
            if !outcome.complete {
                let line = format!("      crashed after {} executor steps", outcome.steps);
                self.log(|| line);
            } else if peers_until < plan.actions.len() {
                let line = format!("      peers gone after {peers_until} actions");
                self.log(|| line);
            }
            for e in outcome.refused.iter().chain(&outcome.unavailable) {
                let line = format!("      executor failed {e}");
                self.log(|| line);
            }
        }
        if !raced && self.cfg.check_self_refusal && !outcome.refused.is_empty() {
            return Err(self.violation(
                Kind::SelfRefused,
                format!(
                    "nothing changed since the scan, yet: {}",
                    outcome.refused.join("; ")
                ),
            ));
        }
        // `Folder::record`: one commit at the end; lost in a crash.
        let mut tags = at_scan;
        if p.crash {
            self.stats.crashes += 1;
            self.log(|| format!("      device {d} crashed: the pull's index updates are lost"));
        } else {
            let mut snap = scanned;
            for (mut entry, local) in outcome.records {
                snap.sequence += 1;
                entry.sequence = snap.sequence;
                match local {
                    Some(l) => snap.local.insert(entry.path.clone(), l),
                    None => snap.local.remove(&entry.path),
                };
                snap.index.insert(entry.path.clone(), entry);
            }
            let now = self.writes_on_disk(d);
            for path in &outcome.written {
                match now.get(path) {
                    Some(t) => tags.insert(path.clone(), t.clone()),
                    None => tags.remove(path),
                };
            }
            self.commit(d, snap)?;
        }
        self.devices[d].scanned_tags = tags;
        let clean = outcome.complete
            && peers_until >= plan.actions.len()
            && !p.crash
            && !raced
            && outcome.refused.is_empty()
            && outcome.unavailable.is_empty();
        let won: BTreeSet<RelPath> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Copy {
                    from: Side::B,
                    source,
                    ..
                }
                | Action::Symlink {
                    from: Side::B,
                    source,
                    ..
                } if !global.contains_key(&source.path) => original_path(&source.path),
                _ => None,
            })
            .collect();
        self.stats.won_conflicts += won.len() as u64;
        if clean && self.cfg.check_resync {
            self.check_pull_settles(d, &won)?;
        }
        // A pull that planned work, or whose scan or records changed the
        // index (peers get an announcement, and pull in turn), is not quiet.
        let busy =
            has_work(&plan, self.cfg.direction) || self.devices[d].snap.sequence != sequence_before;
        Ok(SyncReport { plan, busy })
    }

    /// Right after a clean pull, planning again with the same views finds
    /// nothing to do, except the version records of conflicts this device
    /// won, whose loser's copy it now holds (the second round of the rule),
    /// and paths the peers left contested: with several concurrent newest
    /// entries in different states, a pull merges with the winner only, and
    /// the merged version (its largest counter now this device's) may lose
    /// to another of them next round. Quiescence still checks they settle.
    fn check_pull_settles(&self, d: usize, won: &BTreeSet<RelPath>) -> Result<(), Violation> {
        let dev = &self.devices[d];
        let snap = scan(&dev.tree, &dev.snap, dev.id, self.clock_of(d), SCAN);
        let (_, again) = self.plan_pull_of(d, &snap);
        let second_round = again.refused.is_empty()
            && again.actions.iter().all(|a| match a {
                Action::RecordVersion { path, .. } if won.contains(path) => true,
                other => self.contested(d, other.path()),
            });
        if !second_round {
            return Err(self.violation(
                Kind::ResyncNotEmpty,
                format!("device {d}: {}", plan_text(&again)),
            ));
        }
        Ok(())
    }

    /// Whether the peers' views of device `d` hold, at `path`, several
    /// concurrent newest entries in different states.
    fn contested(&self, d: usize, path: &RelPath) -> bool {
        let mut newest: Vec<&FileEntry> = Vec::new();
        for e in self.views[d]
            .iter()
            .flatten()
            .filter_map(|v| v.index.get(path))
        {
            if newest.iter().any(|x| {
                matches!(
                    e.version.compare(&x.version),
                    Causality::Older | Causality::Equal
                )
            }) {
                continue;
            }
            newest.retain(|x| x.version.compare(&e.version) != Causality::Older);
            newest.push(e);
        }
        let state = |e: &FileEntry| {
            (
                e.deleted,
                e.kind,
                e.permissions,
                content_hash(e),
                e.symlink_target.clone(),
                (e.kind == FileKind::File).then_some(e.mtime),
            )
        };
        newest.iter().any(|x| state(x) != state(newest[0]))
    }

    /// The oracle's side of version records and metadata updates: if the
    /// local copy and the global entry's holder had the same bytes, they
    /// stand for the same writes from now on.
    fn note_pull_same_versions(
        &mut self,
        d: usize,
        plan: &Plan,
        global: &GlobalIndex,
        at_scan: &Tree,
    ) {
        let mut groups = Vec::new();
        {
            let swarm = Swarm {
                devices: &self.devices,
                me: d,
                views: &self.views[d],
            };
            for act in &plan.actions {
                let path = match act {
                    Action::RecordVersion { path, .. } => path,
                    Action::SetMetadata { entry, .. } => &entry.path,
                    _ => continue,
                };
                let (Some(x), Some(g)) = (at_scan.nodes.get(path), global.get(path)) else {
                    continue;
                };
                if x.kind == FileKind::Directory || !g.is_live() {
                    continue;
                }
                // Every copy merged into the global entry's version.
                if !holds(x, g) {
                    continue;
                }
                let mut t: Vec<Tag> = x.tags.clone();
                for y in swarm.recorded_writes(g, path) {
                    t.extend(y);
                }
                groups.push(t);
            }
        }
        for g in groups {
            self.same_writes(&g);
        }
    }

    /// Every device connected to every other pulls in turn, round after
    /// round, until a whole round plans nothing; then the final checks.
    pub fn quiesce_daemon(&mut self) -> Result<(), Violation> {
        self.at = "quiescence".into();
        let n = self.devices.len();
        let all = (1u64 << n) - 1;
        let mut last = Vec::new();
        for round in 0..self.cfg.max_rounds {
            self.clock += 1;
            self.log(|| format!("-- quiescence round {round}"));
            let mut busy = false;
            last.clear();
            for d in 0..n {
                let r = self.pull(&PullStep {
                    dev: d,
                    peers: all,
                    lag: 0,
                    stop_after: None,
                    crash: false,
                    race: None,
                })?;
                if r.busy {
                    busy = true;
                    last.push(format!("device {d}: {}", plan_text(&r.plan)));
                }
            }
            if !busy {
                self.at = "the end".into();
                self.check_converged_and_nothing_lost()?;
                // (4) Idempotence: every device, against everyone.
                for d in 0..n {
                    self.receive(d, all, 0);
                    let dev = &self.devices[d];
                    let snap = scan(&dev.tree, &dev.snap, dev.id, self.clock_of(d), SCAN);
                    let (_, p) = self.plan_pull_of(d, &snap);
                    if has_work(&p, self.cfg.direction) {
                        return Err(self.violation(
                            Kind::NotIdempotent,
                            format!("device {d}: {}", plan_text(&p)),
                        ));
                    }
                }
                return Ok(());
            }
        }
        Err(self.violation(
            Kind::NoQuiescence,
            format!(
                "still busy after {} rounds; last round: {}",
                self.cfg.max_rounds,
                last.join(" | ")
            ),
        ))
    }
}
