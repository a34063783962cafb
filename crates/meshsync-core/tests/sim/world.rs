//! The simulated world: devices with trees and stored indexes, a virtual
//! clock, the oracle of user writes, and the steps of a history.
//!
//! [`run_history`] replays a [`History`] step by step, checking the
//! per-sync invariants as it goes, then drives the world to quiescence and
//! checks the final ones (see the harness's module docs for the list).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::rc::Rc;

use meshsync_core::conflict;
use meshsync_core::entry::{CompareMode, FileEntry, FileKind, Timestamp};
use meshsync_core::ids::ShortId;
use meshsync_core::path::RelPath;
use meshsync_core::plan::{self, Action, Direction, Index, Plan, PlanInput, Side};
use meshsync_core::version::{Causality, VersionVector};

use crate::sim::exec::Run;
use crate::sim::fs::{Node, Tag, Tree, hash_bytes};
use crate::sim::scan::{HashPolicy, Snapshot, scan};

/// The virtual clock's start (2023-11-14), in Unix seconds.
pub const EPOCH: i64 = 1_700_000_000;

/// One event of a history. User operations that do not apply to the
/// device's current tree (a missing parent, an existing target) do nothing,
/// so any sub-sequence of a history is a history too (that is what lets
/// failures shrink).
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The clock moves on.
    Tick(u32),
    /// Create or replace a file (a new inode; keeps the old mode).
    Write {
        /// Which device.
        dev: usize,
        /// Where.
        path: RelPath,
        /// Which bytes (see [`data_bytes`]).
        data: u8,
    },
    /// Create a directory.
    Mkdir {
        /// Which device.
        dev: usize,
        /// Where.
        path: RelPath,
        /// Its mode.
        mode: u32,
    },
    /// Create or replace a symlink (target text `t<target>`).
    Symlink {
        /// Which device.
        dev: usize,
        /// Where.
        path: RelPath,
        /// Which target.
        target: u8,
    },
    /// Delete a path (a directory with everything in it).
    Remove {
        /// Which device.
        dev: usize,
        /// What.
        path: RelPath,
    },
    /// Move a file, symlink or directory to a new name (not replacing).
    Rename {
        /// Which device.
        dev: usize,
        /// From.
        from: RelPath,
        /// To.
        to: RelPath,
    },
    /// Change a file's or directory's mode.
    Chmod {
        /// Which device.
        dev: usize,
        /// What.
        path: RelPath,
        /// The new mode.
        mode: u32,
    },
    /// A rescan whose result is committed (the watcher noticing changes).
    Scan {
        /// Which device.
        dev: usize,
    },
    /// A sync exchange between two devices.
    Sync(SyncStep),
    /// A daemon's pull: one device against the peers it reaches.
    Pull(PullStep),
}

/// A sync between devices `a` (side A) and `b` (side B), possibly cut
/// short, possibly losing one side's index updates, possibly racing a user.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncStep {
    /// Side A's device (the source, in one-way mode).
    pub a: usize,
    /// Side B's device.
    pub b: usize,
    /// How both scans hash (`All` also means checksum comparison).
    pub hash: HashPolicy,
    /// Run only this many actions (the connection drops, or a crash).
    pub stop_after: Option<usize>,
    /// Which sides lose this sync's index updates (a crash before the index
    /// commit); their disks keep whatever was done.
    pub crash: [bool; 2],
    /// A user operation that lands between the plan and its execution.
    pub race: Option<Box<Step>>,
}

/// One round of a daemon's pull on device `dev` (see [`crate::sim::daemon`]):
/// it scans, takes in the indexes its connected peers announced, plans
/// against their global view and carries out its own side.
#[derive(Debug, Clone, PartialEq)]
pub struct PullStep {
    /// The pulling device.
    pub dev: usize,
    /// The peers it is connected to (bit i: device i); a peer not connected
    /// is forgotten, and announces its whole index when it connects again.
    pub peers: u64,
    /// Connected peers whose latest index updates have not arrived yet: the
    /// pull plans with what they announced before.
    pub lag: u64,
    /// The peers drop after this many actions (later files find chunks only
    /// locally); with `crash`, the device dies after this many steps of its
    /// executor instead.
    pub stop_after: Option<usize>,
    /// The device crashes before its index commit: the disk keeps what was
    /// done, the index none of it.
    pub crash: bool,
    /// A user operation on the device that lands between plan and execution.
    pub race: Option<Box<Step>>,
}

/// A bit mask of device numbers.
pub fn mask(devs: &[usize]) -> u64 {
    devs.iter().fold(0, |m, d| m | 1 << d)
}

fn unmask(m: u64) -> Vec<usize> {
    (0..64).filter(|i| m >> i & 1 == 1).collect()
}

fn rel(p: &str) -> RelPath {
    RelPath::new(p).expect("valid path in a history")
}

/// `Step::Write`.
pub fn write(dev: usize, path: &str, data: u8) -> Step {
    Step::Write {
        dev,
        path: rel(path),
        data,
    }
}
/// `Step::Mkdir` with mode 0755.
pub fn mkdir(dev: usize, path: &str) -> Step {
    mkdir_mode(dev, path, 0o755)
}
/// `Step::Mkdir`.
pub fn mkdir_mode(dev: usize, path: &str, mode: u32) -> Step {
    Step::Mkdir {
        dev,
        path: rel(path),
        mode,
    }
}
/// `Step::Symlink`.
pub fn symlink(dev: usize, path: &str, target: u8) -> Step {
    Step::Symlink {
        dev,
        path: rel(path),
        target,
    }
}
/// `Step::Remove`.
pub fn remove(dev: usize, path: &str) -> Step {
    Step::Remove {
        dev,
        path: rel(path),
    }
}
/// `Step::Rename`.
pub fn rename(dev: usize, from: &str, to: &str) -> Step {
    Step::Rename {
        dev,
        from: rel(from),
        to: rel(to),
    }
}
/// `Step::Chmod`.
pub fn chmod(dev: usize, path: &str, mode: u32) -> Step {
    Step::Chmod {
        dev,
        path: rel(path),
        mode,
    }
}
/// `Step::Scan`.
#[allow(dead_code)] // Vocabulary of printed histories, for regression tests.
pub fn rescan(dev: usize) -> Step {
    Step::Scan { dev }
}
/// `Step::Tick`.
pub fn tick(secs: u32) -> Step {
    Step::Tick(secs)
}
/// A complete, crash-free sync with deferred hashing (what `meshsync sync` does).
pub fn sync(a: usize, b: usize) -> Step {
    Step::Sync(SyncStep {
        a,
        b,
        hash: HashPolicy::Deferred,
        stop_after: None,
        crash: [false, false],
        race: None,
    })
}

/// A clean daemon pull by `dev` from `peers` (all caught up).
pub fn pull(dev: usize, peers: &[usize]) -> Step {
    Step::Pull(PullStep {
        dev,
        peers: mask(peers),
        lag: 0,
        stop_after: None,
        crash: false,
        race: None,
    })
}

impl Step {
    fn pull_mut(&mut self) -> &mut PullStep {
        match self {
            Step::Pull(p) => p,
            _ => panic!("not a pull step"),
        }
    }
    /// A pull that has not yet received the latest updates of `peers`.
    #[allow(dead_code)] // Vocabulary of printed histories, for regression tests.
    pub fn lag(mut self, peers: &[usize]) -> Step {
        self.pull_mut().lag = mask(peers);
        self
    }
    /// A pull whose device crashes before its index commit.
    #[allow(dead_code)] // Vocabulary of printed histories, for regression tests.
    pub fn crashed(mut self) -> Step {
        self.pull_mut().crash = true;
        self
    }

    fn sync_mut(&mut self) -> &mut SyncStep {
        match self {
            Step::Sync(s) => s,
            _ => panic!("not a sync step"),
        }
    }
    /// A sync with another hash policy.
    #[allow(dead_code)] // Vocabulary of printed histories, for regression tests.
    pub fn hash(mut self, h: HashPolicy) -> Step {
        self.sync_mut().hash = h;
        self
    }
    /// A sync cut after `n` actions (a pull: see [`PullStep::stop_after`]).
    pub fn stop_after(mut self, n: usize) -> Step {
        match &mut self {
            Step::Pull(p) => p.stop_after = Some(n),
            _ => self.sync_mut().stop_after = Some(n),
        }
        self
    }
    /// A sync after which A and/or B lose their index updates.
    pub fn crash(mut self, a: bool, b: bool) -> Step {
        self.sync_mut().crash = [a, b];
        self
    }
    /// A sync or pull raced by a user operation.
    pub fn race(mut self, op: Step) -> Step {
        match &mut self {
            Step::Pull(p) => p.race = Some(Box::new(op)),
            _ => self.sync_mut().race = Some(Box::new(op)),
        }
        self
    }

    /// The device a user operation acts on.
    pub fn device(&self) -> Option<usize> {
        match self {
            Step::Write { dev, .. }
            | Step::Mkdir { dev, .. }
            | Step::Symlink { dev, .. }
            | Step::Remove { dev, .. }
            | Step::Rename { dev, .. }
            | Step::Chmod { dev, .. }
            | Step::Scan { dev } => Some(*dev),
            Step::Tick(_) | Step::Sync(_) | Step::Pull(_) => None,
        }
    }
}

impl fmt::Display for Step {
    /// As Rust code for a regression test.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Tick(s) => write!(f, "tick({s})"),
            Step::Write { dev, path, data } => write!(f, "write({dev}, {path:?}, {data})"),
            Step::Mkdir { dev, path, mode } if *mode == 0o755 => {
                write!(f, "mkdir({dev}, {path:?})")
            }
            Step::Mkdir { dev, path, mode } => write!(f, "mkdir_mode({dev}, {path:?}, 0o{mode:o})"),
            Step::Symlink { dev, path, target } => write!(f, "symlink({dev}, {path:?}, {target})"),
            Step::Remove { dev, path } => write!(f, "remove({dev}, {path:?})"),
            Step::Rename { dev, from, to } => write!(f, "rename({dev}, {from:?}, {to:?})"),
            Step::Chmod { dev, path, mode } => write!(f, "chmod({dev}, {path:?}, 0o{mode:o})"),
            Step::Scan { dev } => write!(f, "rescan({dev})"),
            Step::Sync(s) => {
                write!(f, "sync({}, {})", s.a, s.b)?;
                if s.hash != HashPolicy::Deferred {
                    write!(f, ".hash(HashPolicy::{:?})", s.hash)?;
                }
                if let Some(n) = s.stop_after {
                    write!(f, ".stop_after({n})")?;
                }
                if s.crash != [false, false] {
                    write!(f, ".crash({}, {})", s.crash[0], s.crash[1])?;
                }
                if let Some(r) = &s.race {
                    write!(f, ".race({r})")?;
                }
                Ok(())
            }
            Step::Pull(p) => {
                write!(f, "pull({}, &{:?})", p.dev, unmask(p.peers))?;
                if p.lag != 0 {
                    write!(f, ".lag(&{:?})", unmask(p.lag))?;
                }
                if let Some(n) = p.stop_after {
                    write!(f, ".stop_after({n})")?;
                }
                if p.crash {
                    write!(f, ".crashed()")?;
                }
                if let Some(r) = &p.race {
                    write!(f, ".race({r})")?;
                }
                Ok(())
            }
        }
    }
}

/// A whole history: the devices (by clock skew, in seconds) and the steps.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// Each device's clock offset from the global clock.
    pub skews: Vec<i64>,
    /// What happens, in order.
    pub steps: Vec<Step>,
}

impl fmt::Display for History {
    /// As Rust code for a regression test.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "History {{")?;
        writeln!(f, "    skews: vec!{:?},", self.skews)?;
        writeln!(f, "    steps: vec![")?;
        for s in &self.steps {
            writeln!(f, "        {s},")?;
        }
        writeln!(f, "    ],")?;
        write!(f, "}}")
    }
}

/// The bytes a `Write` step's `data` stands for: short decimal text, so
/// different contents of equal size are common.
pub fn data_bytes(data: u8) -> Vec<u8> {
    data.to_string().into_bytes()
}

/// Which invariant broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// (1) Devices hold different trees at quiescence.
    Diverged,
    /// (2) A user write that nobody replaced or deleted is gone.
    Lost,
    /// (3) An action names an invalid, internal or unknown path.
    BadPath,
    /// An action's expectations or version do not match the indexes it was planned from.
    BadAction,
    /// A device's recorded version of a path went backwards.
    VersionRegressed,
    /// (4) At quiescence a plan still has actions (or differs by side order).
    NotIdempotent,
    /// Syncing every pair again and again never reached a state with no actions.
    NoQuiescence,
    /// The executor refused an action although nothing changed since the scan.
    SelfRefused,
    /// Right after a clean, complete sync, planning the same pair again is not empty.
    ResyncNotEmpty,
    /// One-way: the destination is not the source's live set (plus extras).
    OneWayMismatch,
    /// One-way: the source was written to.
    OneWayTouchedSource,
    /// Planning with the sides swapped gives another plan than the mirror image.
    Asymmetric,
}

/// A broken invariant.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Which.
    pub kind: Kind,
    /// Where in the history ("step 12", "quiescence").
    pub at: String,
    /// What exactly.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} at {}: {}", self.kind, self.at, self.detail)
    }
}

/// Switches of a run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Two-way, or one-way from device 0 to device 1.
    pub direction: Direction,
    /// Daemon mode: devices pull from the global view of their peers
    /// ([`Step::Pull`]) instead of syncing in pairs (two-way only).
    pub daemon: bool,
    /// Mirror the store's executor exactly where it forgets a conflict
    /// loser's old name even after the winner's copy lands there.
    pub forget_wins: bool,
    /// The hash policy of the syncs that drive quiescence.
    pub quiesce_hash: HashPolicy,
    /// Check [`Kind::SelfRefused`].
    pub check_self_refusal: bool,
    /// Check [`Kind::ResyncNotEmpty`].
    pub check_resync: bool,
    /// Rounds of all-pairs syncs allowed to reach quiescence.
    pub max_rounds: usize,
    /// Known core bugs to step around, so a sweep can find the next one.
    pub tolerate: Tolerate,
}

/// Known, still open core bugs a run steps around, so that a sweep keeps
/// finding new ones. Each has a regression test that fails until it is
/// fixed; remove its switch with the fix. All off: the strict run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tolerate {
    /// Bug 7: the conflict winner order is not total. Two concurrent copies
    /// with the same mtime, last changer, content and size but another mode
    /// (or two directories, or two symlinks) tie, and a tie goes to side A:
    /// which change survives depends on which device starts the sync.
    /// [`Kind::Asymmetric`] is not checked.
    pub winner_ties: bool,
    /// Bug 8: a delete that makes room for an entry of another kind records
    /// the merged version, which includes the incoming write; cut between
    /// the two, the tombstone claims the write, and a concurrent change from
    /// a third device then makes the write lose without a conflict copy.
    /// A cut never falls between such a delete and its write.
    pub room_cut: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            direction: Direction::TwoWay,
            daemon: false,
            forget_wins: false,
            quiesce_hash: HashPolicy::Deferred,
            check_self_refusal: true,
            check_resync: true,
            max_rounds: 12,
            tolerate: Tolerate::default(),
        }
    }
}

/// Counts, for coverage reports.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Histories run.
    pub histories: u64,
    /// Steps run.
    pub steps: u64,
    /// Syncs run (including quiescence).
    pub syncs: u64,
    /// Actions attempted.
    pub actions: u64,
    /// Conflict copies planned.
    pub conflicts: u64,
    /// Daemon mode: conflicts won against the global view (the loser's copy
    /// fetched under its conflict name).
    pub won_conflicts: u64,
    /// Syncs cut short.
    pub interrupted: u64,
    /// Index commits lost to a crash.
    pub crashes: u64,
    /// Syncs raced by a user operation.
    pub races: u64,
    /// Actions the executor refused.
    pub refused_actions: u64,
}

impl Stats {
    /// Adds `o` to `self`.
    pub fn add(&mut self, o: &Stats) {
        self.histories += o.histories;
        self.steps += o.steps;
        self.syncs += o.syncs;
        self.actions += o.actions;
        self.conflicts += o.conflicts;
        self.won_conflicts += o.won_conflicts;
        self.interrupted += o.interrupted;
        self.crashes += o.crashes;
        self.races += o.races;
        self.refused_actions += o.refused_actions;
    }
}

/// One user write, as the oracle remembers it.
#[derive(Debug, Clone)]
pub struct Written {
    /// Which device wrote it.
    pub dev: usize,
    /// Where.
    pub path: RelPath,
    /// File or symlink.
    pub kind: FileKind,
    /// The bytes or link text.
    pub payload: Rc<[u8]>,
    /// Replaced or deleted by a later user operation on a device that held
    /// it (meaningful on the representative of its class, see [`World::same_writes`]).
    pub retired: bool,
    /// Union-find parent: writes later found to be one version share a class.
    pub class: Tag,
    /// When ("step 3").
    pub at: usize,
}

/// One simulated device.
#[derive(Debug, Clone)]
pub struct Device {
    /// Its short id (larger wins conflict ties).
    pub id: ShortId,
    /// Its folder.
    pub tree: Tree,
    /// Its stored index.
    pub snap: Snapshot,
    /// Its clock's offset, in seconds.
    pub skew: i64,
    /// The oracle's: which writes each path held at the last committed scan.
    pub scanned_tags: BTreeMap<RelPath, Vec<Tag>>,
    /// The oracle's: writes the user dropped since the last scan, by path.
    pub dropped: Vec<(RelPath, Vec<Tag>)>,
}

/// The short id of device `i`: distinct in the top bits, so conflict-copy
/// names (which show the top 35 bits) differ per device.
pub fn device_id(i: usize) -> ShortId {
    ShortId(((i as u64) + 1) << 59)
}

fn device_name(id: ShortId) -> String {
    format!("d{}", (id.0 >> 59).saturating_sub(1))
}

/// A version vector as `{d0:3,d1:1}`.
pub fn fmt_vv(v: &VersionVector) -> String {
    let parts: Vec<String> = v
        .counters()
        .iter()
        .map(|(d, c)| format!("{}:{c}", device_name(*d)))
        .collect();
    format!("{{{}}}", parts.join(","))
}

pub(crate) fn fmt_entry(e: &FileEntry) -> String {
    if e.deleted {
        return format!("tombstone {}", fmt_vv(&e.version));
    }
    let what = match e.kind {
        FileKind::File => format!(
            "file {}B mtime {} mode {:o}",
            e.size,
            e.mtime.secs - EPOCH,
            e.permissions
        ),
        FileKind::Directory => format!("dir mode {:o}", e.permissions),
        FileKind::Symlink => format!("symlink -> {}", e.symlink_target.as_deref().unwrap_or("")),
    };
    format!("{what} {}", fmt_vv(&e.version))
}

/// One line per action, for traces.
pub fn describe(a: &Action) -> String {
    match a {
        Action::KeepConflictCopy { side, entry, to } => {
            format!(
                "keep-conflict-copy on {side:?}: {} ({}) -> {to}",
                entry.path,
                fmt_entry(entry)
            )
        }
        Action::MakeDir { side, entry } => {
            format!("mkdir on {side:?}: {} ({})", entry.path, fmt_entry(entry))
        }
        Action::Copy {
            from,
            source,
            replaces,
            version,
        } => format!(
            "copy {from:?}->{:?}: {} ({}){} => {}",
            from.other(),
            source.path,
            fmt_entry(source),
            if replaces.is_some() { " replacing" } else { "" },
            fmt_vv(version)
        ),
        Action::Symlink {
            from,
            source,
            version,
            ..
        } => format!(
            "symlink {from:?}->{:?}: {} ({}) => {}",
            from.other(),
            source.path,
            fmt_entry(source),
            fmt_vv(version)
        ),
        Action::SetMetadata {
            side,
            entry,
            expected,
        } => format!(
            "set-metadata on {side:?}: {} ({} -> {})",
            entry.path,
            fmt_entry(expected),
            fmt_entry(entry)
        ),
        Action::Delete {
            side,
            expected,
            version,
            making_room,
        } => format!(
            "delete on {side:?}{}: {} ({}) => {}",
            if *making_room { " (making room)" } else { "" },
            expected.path,
            fmt_entry(expected),
            fmt_vv(version)
        ),
        Action::RecordVersion { path, version } => format!("record {path} => {}", fmt_vv(version)),
    }
}

pub(crate) fn fmt_node(n: &Node) -> String {
    match n.kind {
        FileKind::File => format!(
            "file {:?} mode {:o} mtime {}",
            String::from_utf8_lossy(&n.payload),
            n.mode,
            n.mtime.secs - EPOCH
        ),
        FileKind::Directory => format!("dir mode {:o}", n.mode),
        FileKind::Symlink => format!("symlink -> {}", String::from_utf8_lossy(&n.payload)),
    }
}

/// What one sync did.
#[derive(Debug)]
pub struct SyncReport {
    /// The plan.
    pub plan: Plan,
    /// Whether the plan had work (actions or refusals) not tolerated.
    pub busy: bool,
}

/// The world of one history.
pub struct World {
    /// Its switches.
    pub cfg: Config,
    /// The devices.
    pub devices: Vec<Device>,
    /// Global time, Unix seconds.
    pub clock: i64,
    /// Every user write so far, by tag.
    pub writes: Vec<Written>,
    /// A log of what happened, when asked for (replays of minimal histories).
    pub trace: Option<Vec<String>>,
    /// Counts.
    pub stats: Stats,
    /// Daemon mode: what each device last received of each peer's index
    /// (`views[d][p]`; `None`: not connected).
    pub views: Vec<Vec<Option<crate::sim::daemon::View>>>,
    pub(crate) at: String,
    pub(crate) step_no: usize,
}

fn two_mut<T>(xs: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b);
    if a < b {
        let (l, r) = xs.split_at_mut(b);
        (&mut l[a], &mut r[0])
    } else {
        let (l, r) = xs.split_at_mut(a);
        (&mut r[0], &mut l[b])
    }
}

pub(crate) fn newer_or_equal(x: &VersionVector, y: &VersionVector) -> bool {
    matches!(x.compare(y), Causality::Newer | Causality::Equal)
}

/// How long the `YYYYMMDD-HHMMSS-DEVICE-tag-N` part of a conflict copy's
/// name is, in `rest` (the name after `.sync-conflict-`). The tag (six
/// lowercase letters) is missing from names made before tags, and `-N` (a
/// number) from names whose first candidate was free.
pub fn conflict_mark_len(rest: &str) -> usize {
    let mut end = (15 + 1 + 7).min(rest.len());
    let tag = conflict::TAG_LEN;
    if let Some(t) = rest[end..].strip_prefix('-')
        && t.len() >= tag
        && t.as_bytes()[..tag].iter().all(u8::is_ascii_lowercase)
        && t[tag..].chars().next().is_none_or(|c| c == '.' || c == '-')
    {
        end += 1 + tag;
    }
    if let Some(n) = rest[end..].strip_prefix('-') {
        let digits = n.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && n[digits..].chars().next().is_none_or(|c| c == '.') {
            end += 1 + digits;
        }
    }
    end
}

/// Strips every `.sync-conflict-YYYYMMDD-HHMMSS-DEVICE-tag-N` from a path's
/// name.
pub fn original_of(p: &RelPath) -> String {
    const MARK: &str = ".sync-conflict-";
    let mut name = p.file_name().to_string();
    while let Some(i) = name.find(MARK) {
        let end = i + MARK.len() + conflict_mark_len(&name[i + MARK.len()..]);
        name.replace_range(i..end, "");
    }
    match p.parent() {
        Some(dir) => format!("{dir}/{name}"),
        None => name,
    }
}

impl World {
    /// A world of `skews.len()` devices with empty folders.
    pub fn new(cfg: Config, skews: &[i64]) -> Self {
        World {
            cfg,
            devices: skews
                .iter()
                .enumerate()
                .map(|(i, &skew)| Device {
                    id: device_id(i),
                    tree: Tree::default(),
                    snap: Snapshot::default(),
                    skew,
                    scanned_tags: BTreeMap::new(),
                    dropped: Vec::new(),
                })
                .collect(),
            clock: EPOCH,
            writes: Vec::new(),
            trace: None,
            stats: Stats::default(),
            views: vec![vec![None; skews.len()]; skews.len()],
            at: String::new(),
            step_no: 0,
        }
    }

    pub(crate) fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            t.push(line());
        }
    }

    pub(crate) fn violation(&self, kind: Kind, detail: String) -> Violation {
        Violation {
            kind,
            at: self.at.clone(),
            detail,
        }
    }

    /// Device `dev`'s clock as the scanner's version clock.
    pub fn clock_of(&self, dev: usize) -> u64 {
        self.now(dev).secs.max(0) as u64
    }

    /// Device `dev`'s clock.
    pub fn now(&self, dev: usize) -> Timestamp {
        Timestamp {
            secs: self.clock + self.devices[dev].skew,
            nanos: 0,
        }
    }

    fn new_tag(&mut self, dev: usize, path: &RelPath, kind: FileKind, payload: Rc<[u8]>) -> Tag {
        let class = self.writes.len();
        self.writes.push(Written {
            class,
            dev,
            path: path.clone(),
            kind,
            payload,
            retired: false,
            at: self.step_no,
        });
        self.writes.len() - 1
    }

    fn class_of(&self, mut t: Tag) -> Tag {
        while self.writes[t].class != t {
            t = self.writes[t].class;
        }
        t
    }

    /// Whether write `t` (or one of its class) was dropped by a user.
    pub fn retired(&self, t: Tag) -> bool {
        self.writes[self.class_of(t)].retired
    }

    fn retire(&mut self, tags: &[Tag]) {
        for &t in tags {
            let c = self.class_of(t);
            self.writes[c].retired = true;
        }
    }

    /// Records that `tags` stand for one version: a sync recorded identical
    /// copies as one version, or a scan found a path unchanged whatever the
    /// user did in between (a rename there and back, the same bytes written
    /// again). Dropping any of them drops all.
    pub fn same_writes(&mut self, tags: &[Tag]) {
        let Some(&first) = tags.first() else { return };
        let root = self.class_of(first);
        for &t in tags {
            let c = self.class_of(t);
            if self.writes[c].retired {
                self.writes[root].retired = true;
            }
            self.writes[c].class = root;
        }
    }

    /// A user on `dev` dropped the writes `tags` held at `path`; it counts
    /// once `dev`'s next scan registers a change there (see [`Self::note_scan`]).
    fn drop_writes(&mut self, dev: usize, path: &RelPath, tags: Vec<Tag>) {
        if !tags.is_empty() {
            self.devices[dev].dropped.push((path.clone(), tags));
        }
    }

    /// The oracle's side of a scan of device `dev` from `old` to `new`: a
    /// live path whose version did not move holds the writes it held at the
    /// last commit, whatever the user did in between, and a user's drop there
    /// was no drop; every other drop since the last scan now counts.
    pub(crate) fn note_scan(&mut self, dev: usize, old: &Snapshot, new: &Snapshot) {
        let unchanged = |path: &RelPath| {
            matches!(
                (old.index.get(path), new.index.get(path)),
                (Some(o), Some(n)) if o.is_live() && n.is_live() && o.version == n.version
            )
        };
        let dropped = std::mem::take(&mut self.devices[dev].dropped);
        for (path, tags) in dropped {
            let w = &self.writes[tags[0]];
            let same_bytes = self.devices[dev]
                .tree
                .nodes
                .get(&path)
                .is_some_and(|n| n.kind == w.kind && n.payload == w.payload);
            if !(unchanged(&path) && same_bytes) {
                self.retire(&tags);
            }
        }
        let mut groups = Vec::new();
        let d = &mut self.devices[dev];
        for (path, node) in &d.tree.nodes {
            if node.kind == FileKind::Directory {
                continue;
            }
            if unchanged(path)
                && let Some(before) = d.scanned_tags.get(path)
                && before != &node.tags
            {
                let mut g = before.clone();
                g.extend(&node.tags);
                groups.push(g);
            }
        }
        for g in groups {
            self.same_writes(&g);
        }
    }

    /// The writes each path of device `dev` holds now.
    pub(crate) fn writes_on_disk(&self, dev: usize) -> BTreeMap<RelPath, Vec<Tag>> {
        self.devices[dev]
            .tree
            .nodes
            .iter()
            .filter(|(_, n)| n.kind != FileKind::Directory)
            .map(|(p, n)| (p.clone(), n.tags.clone()))
            .collect()
    }

    /// The oracle's side of a plan that records two copies as one version
    /// (`RecordVersion`, `SetMetadata`): if both held the same bytes when
    /// scanned, they stand for the same writes from now on.
    fn note_same_versions(&mut self, plan: &Plan, limit: usize, scanned: [&Tree; 2]) {
        let mut groups = Vec::new();
        for act in plan.actions.iter().take(limit) {
            let path = match act {
                Action::RecordVersion { path, .. } => path,
                Action::SetMetadata { entry, .. } => &entry.path,
                _ => continue,
            };
            if let (Some(x), Some(y)) = (scanned[0].nodes.get(path), scanned[1].nodes.get(path))
                && x.kind != FileKind::Directory
                && x.kind == y.kind
                && x.payload == y.payload
            {
                let mut g = x.tags.clone();
                g.extend(&y.tags);
                groups.push(g);
            }
        }
        for g in groups {
            self.same_writes(&g);
        }
    }

    /// Runs one step.
    pub fn step(&mut self, step: &Step) -> Result<(), Violation> {
        self.step_no += 1;
        self.stats.steps += 1;
        self.at = format!("step {}", self.step_no);
        match step {
            Step::Tick(s) => {
                self.clock += i64::from(*s);
                Ok(())
            }
            Step::Scan { dev } => {
                if *dev < self.devices.len() {
                    let d = &self.devices[*dev];
                    // The daemon's scanner hashes what changed.
                    let policy = if self.cfg.daemon {
                        HashPolicy::Changed
                    } else {
                        HashPolicy::Deferred
                    };
                    let snap = scan(&d.tree, &d.snap, d.id, self.clock_of(*dev), policy);
                    let old = d.snap.clone();
                    self.note_scan(*dev, &old, &snap);
                    self.devices[*dev].scanned_tags = self.writes_on_disk(*dev);
                    self.commit(*dev, snap)?;
                }
                Ok(())
            }
            Step::Sync(s) => self.sync(s).map(|_| ()),
            Step::Pull(p) => self.pull(p).map(|_| ()),
            op => {
                let applied = self.user_op(op);
                let line = format!(
                    "#{} {op}{}",
                    self.step_no,
                    if applied { "" } else { "  (no-op)" }
                );
                self.log(|| line);
                Ok(())
            }
        }
    }

    /// Applies a user operation; false when it does not apply.
    pub fn user_op(&mut self, op: &Step) -> bool {
        let Some(dev) = op.device() else { return false };
        if dev >= self.devices.len() {
            return false;
        }
        let now = self.now(dev);
        match op {
            Step::Write { path, data, .. } => {
                let tree = &self.devices[dev].tree;
                if !tree.is_dir(path.parent().as_ref()) {
                    return false;
                }
                let old = tree.nodes.get(path);
                if old.is_some_and(|n| n.kind == FileKind::Directory) {
                    return false;
                }
                let mode = old
                    .filter(|n| n.kind == FileKind::File)
                    .map_or(0o644, |n| n.mode);
                let bytes: Rc<[u8]> = Rc::from(data_bytes(*data));
                // Rewriting the very same bytes makes no new version of them:
                // for the oracle they stay the writes they were.
                let same = old.filter(|n| n.kind == FileKind::File && n.payload == bytes);
                let tags = match same {
                    Some(n) => n.tags.clone(),
                    None => {
                        let old_tags = old.map(|n| n.tags.clone()).unwrap_or_default();
                        self.drop_writes(dev, path, old_tags);
                        vec![self.new_tag(dev, path, FileKind::File, bytes.clone())]
                    }
                };
                let tree = &mut self.devices[dev].tree;
                let local = tree.fresh_local();
                tree.nodes.insert(
                    path.clone(),
                    Node {
                        kind: FileKind::File,
                        content: Some(hash_bytes(&bytes)),
                        payload: bytes,
                        mode,
                        mtime: now,
                        local,
                        tags,
                    },
                );
                true
            }
            Step::Symlink { path, target, .. } => {
                let tree = &self.devices[dev].tree;
                if !tree.is_dir(path.parent().as_ref())
                    || tree
                        .nodes
                        .get(path)
                        .is_some_and(|n| n.kind == FileKind::Directory)
                {
                    return false;
                }
                let old_tags = tree
                    .nodes
                    .get(path)
                    .map(|n| n.tags.clone())
                    .unwrap_or_default();
                self.drop_writes(dev, path, old_tags);
                let link: Rc<[u8]> = Rc::from(format!("t{target}").into_bytes());
                let tag = self.new_tag(dev, path, FileKind::Symlink, link.clone());
                let tree = &mut self.devices[dev].tree;
                let local = tree.fresh_local();
                tree.nodes.insert(
                    path.clone(),
                    Node {
                        kind: FileKind::Symlink,
                        payload: link,
                        content: None,
                        mode: 0o777,
                        mtime: now,
                        local,
                        tags: vec![tag],
                    },
                );
                true
            }
            Step::Mkdir { path, mode, .. } => {
                let tree = &mut self.devices[dev].tree;
                if !tree.is_dir(path.parent().as_ref()) || tree.nodes.contains_key(path) {
                    return false;
                }
                let local = tree.fresh_local();
                tree.nodes.insert(
                    path.clone(),
                    Node {
                        kind: FileKind::Directory,
                        payload: Rc::from(&b""[..]),
                        content: None,
                        mode: *mode,
                        mtime: now,
                        local,
                        tags: Vec::new(),
                    },
                );
                true
            }
            Step::Remove { path, .. } => {
                let removed = self.devices[dev].tree.remove_tree(path);
                for (p, n) in &removed {
                    self.drop_writes(dev, p, n.tags.clone());
                }
                !removed.is_empty()
            }
            Step::Rename { from, to, .. } => {
                let tree = &self.devices[dev].tree;
                if !tree.nodes.contains_key(from)
                    || tree.nodes.contains_key(to)
                    || !tree.is_dir(to.parent().as_ref())
                    || to.starts_with(from)
                {
                    return false;
                }
                // A rename is a delete plus a create with the same bytes:
                // the old writes are retired, the moved ones are new writes.
                let moved = self.devices[dev].tree.remove_tree(from);
                for (p, mut n) in moved {
                    let suffix = &p.as_str()[from.as_str().len()..];
                    let np = RelPath::new(&format!("{to}{suffix}")).expect("valid moved path");
                    self.drop_writes(dev, &p, n.tags.clone());
                    if n.kind != FileKind::Directory {
                        n.tags = vec![self.new_tag(dev, &np, n.kind, n.payload.clone())];
                    }
                    let tree = &mut self.devices[dev].tree;
                    tree.nodes.insert(np.clone(), n);
                    tree.touch(&np);
                }
                true
            }
            Step::Chmod { path, mode, .. } => {
                let tree = &mut self.devices[dev].tree;
                match tree.nodes.get_mut(path) {
                    Some(n) if n.kind != FileKind::Symlink => {
                        n.mode = *mode;
                        tree.touch(path);
                        true
                    }
                    _ => false,
                }
            }
            Step::Scan { .. } | Step::Tick(_) | Step::Sync(_) | Step::Pull(_) => false,
        }
    }

    /// Stores a new snapshot as device `dev`'s index, checking that no
    /// recorded version went backwards.
    pub(crate) fn commit(&mut self, dev: usize, snap: Snapshot) -> Result<(), Violation> {
        let old = &self.devices[dev].snap;
        for (path, new) in &snap.index {
            if let Some(o) = old.index.get(path)
                && !newer_or_equal(&new.version, &o.version)
            {
                return Err(self.violation(
                    Kind::VersionRegressed,
                    format!(
                        "device {dev}: {path}: {} became {}",
                        fmt_entry(o),
                        fmt_entry(new)
                    ),
                ));
            }
        }
        self.devices[dev].snap = snap;
        Ok(())
    }

    fn plan_input<'a>(
        &self,
        a: usize,
        b: usize,
        ia: &'a Index,
        ib: &'a Index,
        hash: HashPolicy,
    ) -> PlanInput<'a> {
        PlanInput {
            a: ia,
            b: ib,
            a_device: self.devices[a].id,
            b_device: self.devices[b].id,
            direction: self.cfg.direction,
            compare: if hash == HashPolicy::All {
                CompareMode::Checksum
            } else {
                CompareMode::Metadata
            },
            now_unix_secs: self.now(a).secs,
        }
    }

    /// Scans devices `a` and `b` (without committing), fills in the hashes
    /// the planner asks for, and plans.
    fn scan_and_plan(&self, a: usize, b: usize, hash: HashPolicy) -> (Snapshot, Snapshot, Plan) {
        let (da, db) = (&self.devices[a], &self.devices[b]);
        let mut sa = scan(&da.tree, &da.snap, da.id, self.clock_of(a), hash);
        let mut sb = scan(&db.tree, &db.snap, db.id, self.clock_of(b), hash);
        let needed = plan::content_needed(&self.plan_input(a, b, &sa.index, &sb.index, hash));
        for (side, path) in needed {
            let (snap, tree) = match side {
                Side::A => (&mut sa, &da.tree),
                Side::B => (&mut sb, &db.tree),
            };
            if let (Some(e), Some(n)) = (snap.index.get_mut(&path), tree.nodes.get(&path))
                && n.kind == FileKind::File
                && e.size == n.size()
                && e.mtime == n.mtime
            {
                e.content = n.content.as_deref().cloned();
            }
        }
        let plan = plan::plan(&self.plan_input(a, b, &sa.index, &sb.index, hash));
        (sa, sb, plan)
    }

    /// One sync exchange.
    pub fn sync(&mut self, s: &SyncStep) -> Result<SyncReport, Violation> {
        let (a, b) = (s.a, s.b);
        let n = self.devices.len();
        if a == b || a >= n || b >= n {
            return Ok(SyncReport {
                plan: Plan::default(),
                busy: false,
            });
        }
        self.stats.syncs += 1;
        let (sa, sb, plan) = self.scan_and_plan(a, b, s.hash);
        let (old_a, old_b) = (self.devices[a].snap.clone(), self.devices[b].snap.clone());
        self.note_scan(a, &old_a, &sa);
        self.note_scan(b, &old_b, &sb);
        let at_scan = [self.writes_on_disk(a), self.writes_on_disk(b)];
        let trees_at_scan = [self.devices[a].tree.clone(), self.devices[b].tree.clone()];
        let line = format!(
            "#{} {}: {} actions",
            self.step_no,
            Step::Sync(s.clone()),
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
        self.check_plan(&plan, &sa.index, &sb.index)?;
        if !self.cfg.tolerate.winner_ties {
            self.check_symmetry(a, b, &plan, &sa.index, &sb.index, s.hash)?;
        }
        self.stats.conflicts += plan
            .actions
            .iter()
            .filter(|x| matches!(x, Action::KeepConflictCopy { .. }))
            .count() as u64;

        let raced = match &s.race {
            Some(op) if op.device() == Some(a) || op.device() == Some(b) => {
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
        let source_before = match self.cfg.direction {
            Direction::OneWay { .. } => Some(self.devices[a].tree.nodes.clone()),
            Direction::TwoWay => None,
        };

        let mut limit = s.stop_after.unwrap_or(usize::MAX);
        if self.cfg.tolerate.room_cut && limit < plan.actions.len() {
            limit = past_pending_writes(&plan, limit);
        }
        let now = [self.now(a), self.now(b)];
        let forget_wins = self.cfg.forget_wins;
        let outcome = {
            let (da, db) = two_mut(&mut self.devices, a, b);
            Run::new([&mut da.tree, &mut db.tree], [&sa, &sb], now, forget_wins)
                .execute(&plan, limit)
        };
        self.stats.actions += outcome.attempted as u64;
        self.stats.refused_actions += outcome.errors.len() as u64;
        self.note_same_versions(
            &plan,
            outcome.attempted,
            [&trees_at_scan[0], &trees_at_scan[1]],
        );
        let complete = outcome.attempted == plan.actions.len();
        self.stats.interrupted += u64::from(!complete);
        if self.trace.is_some() {
            if !complete {
                let line = format!("      cut after {} actions", outcome.attempted);
                self.log(|| line);
            }
            for e in &outcome.errors {
                let line = format!("      executor refused {e}");
                self.log(|| line);
            }
        }
        if let Some(before) = source_before {
            let after = &self.devices[a].tree.nodes;
            let same = before.len() == after.len()
                && before.iter().zip(after).all(|((p, x), (q, y))| {
                    p == q
                        && x.kind == y.kind
                        && x.payload == y.payload
                        && x.mode == y.mode
                        && x.mtime == y.mtime
                });
            if !same {
                return Err(
                    self.violation(Kind::OneWayTouchedSource, "the source tree changed".into())
                );
            }
        }
        if !raced && self.cfg.check_self_refusal && !outcome.errors.is_empty() {
            return Err(self.violation(
                Kind::SelfRefused,
                format!(
                    "nothing changed since the scan, yet: {}",
                    outcome.errors.join("; ")
                ),
            ));
        }
        // Scans are committed before the exchange (a peer never sees an
        // observation its device could lose); a crash loses what the run
        // recorded. When both crash, nothing of this sync is kept, scans
        // included: `meshsync sync` commits both trees in one transaction.
        let crash = s.crash;
        let both_crash = crash == [true, true];
        for (side, (dev, mut snap)) in [(a, sa), (b, sb)].into_iter().enumerate() {
            if crash[side] {
                self.stats.crashes += 1;
                self.log(|| {
                    format!("      device {dev} crashed: the run's index updates are lost")
                });
                if both_crash {
                    continue;
                }
            }
            // The oracle's: what the committed entries stand for.
            let mut tags = at_scan[side].clone();
            if !crash[side] {
                outcome.commit_into(side, &mut snap);
                let now = self.writes_on_disk(dev);
                for path in &outcome.written[side] {
                    match now.get(path) {
                        Some(t) => tags.insert(path.clone(), t.clone()),
                        None => tags.remove(path),
                    };
                }
            }
            self.devices[dev].scanned_tags = tags;
            self.commit(dev, snap)?;
        }
        let clean = complete && s.crash == [false, false] && !raced && outcome.errors.is_empty();
        if clean && self.cfg.check_resync && self.cfg.direction == Direction::TwoWay {
            let (_, _, again) = self.scan_and_plan(a, b, s.hash);
            if has_work(&again, self.cfg.direction) {
                return Err(self.violation(
                    Kind::ResyncNotEmpty,
                    format!("devices {a},{b}: {}", plan_text(&again)),
                ));
            }
        }
        let busy = has_work(&plan, self.cfg.direction);
        Ok(SyncReport { plan, busy })
    }

    /// The plan with sides swapped must be the mirror image of `plan`.
    fn check_symmetry(
        &self,
        a: usize,
        b: usize,
        plan: &Plan,
        ia: &Index,
        ib: &Index,
        hash: HashPolicy,
    ) -> Result<(), Violation> {
        if self.cfg.direction != Direction::TwoWay {
            return Ok(());
        }
        let mut input = self.plan_input(b, a, ib, ia, hash);
        input.now_unix_secs = self.now(a).secs;
        let swapped = plan::plan(&input);
        let norm = |p: &Plan, flip: bool| -> Vec<String> {
            let mut v: Vec<String> = p
                .actions
                .iter()
                .map(|x| {
                    let mut x = x.clone();
                    if flip {
                        mirror(&mut x);
                    }
                    format!("{x:?}")
                })
                .collect();
            v.sort();
            v
        };
        if norm(plan, false) != norm(&swapped, true) {
            return Err(self.violation(
                Kind::Asymmetric,
                format!(
                    "devices {a},{b}: {} | swapped: {}",
                    plan_text(plan),
                    plan_text(&swapped)
                ),
            ));
        }
        Ok(())
    }

    /// Invariant (3) and the plan's agreement with the indexes it came from.
    pub(crate) fn check_plan(&self, plan: &Plan, a: &Index, b: &Index) -> Result<(), Violation> {
        let idx = |side: Side| if side == Side::A { a } else { b };
        let mut tos: BTreeSet<&RelPath> = plan
            .actions
            .iter()
            .filter_map(|x| match x {
                Action::KeepConflictCopy { to, .. } => Some(to),
                _ => None,
            })
            .collect();
        let bad = |kind, what: String| Err(self.violation(kind, what));
        if self.cfg.daemon {
            // A pull fetches the loser of a conflict it won under a conflict
            // name without renaming it on side B (another device's disk):
            // the copy must be exactly side B's entry at the original name.
            for act in &plan.actions {
                if let Action::Copy {
                    from: Side::B,
                    source,
                    ..
                }
                | Action::Symlink {
                    from: Side::B,
                    source,
                    ..
                } = act
                    && !a.contains_key(&source.path)
                    && !b.contains_key(&source.path)
                {
                    let original = b.values().find(|e| {
                        conflict::is_conflict_copy_of(&source.path, &e.path) && {
                            let mut moved = (*e).clone();
                            moved.path = source.path.clone();
                            moved == **source
                        }
                    });
                    if original.is_none() {
                        return bad(
                            Kind::BadAction,
                            format!(
                                "a fetched conflict copy is no side-B entry: {}",
                                describe(act)
                            ),
                        );
                    }
                    tos.insert(&source.path);
                }
            }
        }
        for act in &plan.actions {
            let mut paths: Vec<&RelPath> = vec![act.path()];
            match act {
                Action::KeepConflictCopy { to, .. } => paths.push(to),
                Action::Copy {
                    replaces: Some(r), ..
                }
                | Action::Symlink {
                    replaces: Some(r), ..
                } => paths.push(&r.path),
                Action::SetMetadata { expected, .. } => paths.push(&expected.path),
                _ => {}
            }
            for p in paths {
                if RelPath::new(p.as_str()).as_ref() != Ok(p) || p.is_internal() {
                    return bad(Kind::BadPath, format!("{p:?} in {}", describe(act)));
                }
                if !(a.contains_key(p) || b.contains_key(p) || tos.contains(p)) {
                    return bad(
                        Kind::BadPath,
                        format!("unknown path {p} in {}", describe(act)),
                    );
                }
            }
            let path = act.path();
            let dominates = |v: &VersionVector| {
                [a.get(path), b.get(path)]
                    .into_iter()
                    .flatten()
                    .all(|e| newer_or_equal(v, &e.version))
            };
            let problem: Option<&str> = match act {
                Action::KeepConflictCopy { side, entry, to } => {
                    if idx(*side).get(&entry.path) != Some(entry) || !entry.is_live() {
                        Some("the loser is not the scanned entry")
                    } else if to.parent() != entry.path.parent() || !conflict::is_conflict_copy(to)
                    {
                        Some("the conflict copy is not a sibling conflict name")
                    } else if a.contains_key(to) || b.contains_key(to) {
                        Some("the conflict copy's name is taken")
                    } else {
                        None
                    }
                }
                Action::Copy {
                    from,
                    source,
                    replaces,
                    version,
                }
                | Action::Symlink {
                    from,
                    source,
                    replaces,
                    version,
                } => {
                    let kind = if matches!(act, Action::Copy { .. }) {
                        FileKind::File
                    } else {
                        FileKind::Symlink
                    };
                    if tos.contains(&source.path) {
                        None
                    } else if idx(*from).get(&source.path) != Some(source)
                        || !source.is_live()
                        || source.kind != kind
                    {
                        Some("the source is not the scanned entry")
                    } else if replaces
                        .as_ref()
                        .is_some_and(|r| idx(from.other()).get(&r.path) != Some(r) || !r.is_live())
                    {
                        Some("`replaces` is not the scanned target")
                    } else if !dominates(version) {
                        Some("the recorded version does not dominate both sides")
                    } else {
                        None
                    }
                }
                Action::SetMetadata {
                    side,
                    entry,
                    expected,
                } => {
                    if idx(*side).get(&expected.path) != Some(expected)
                        || entry.path != expected.path
                    {
                        Some("`expected` is not the scanned entry")
                    } else if !dominates(&entry.version) {
                        Some("the recorded version does not dominate both sides")
                    } else {
                        None
                    }
                }
                Action::Delete {
                    side,
                    expected,
                    version,
                    making_room,
                } => {
                    if idx(*side).get(&expected.path) != Some(expected) || !expected.is_live() {
                        Some("`expected` is not the scanned entry")
                    } else if !dominates(version) {
                        Some("the tombstone's version does not dominate both sides")
                    } else if self.cfg.direction == (Direction::OneWay { delete: false })
                        && !making_room
                    {
                        Some("a delete in one-way mode without --delete")
                    } else {
                        None
                    }
                }
                Action::MakeDir { entry, .. } => {
                    if entry.kind != FileKind::Directory {
                        Some("mkdir of a non-directory")
                    } else if !dominates(&entry.version) {
                        Some("the recorded version does not dominate both sides")
                    } else {
                        None
                    }
                }
                Action::RecordVersion { version, .. } => (!dominates(version))
                    .then_some("the recorded version does not dominate both sides"),
            };
            if let Some(p) = problem {
                return bad(Kind::BadAction, format!("{p}: {}", describe(act)));
            }
            if let Direction::OneWay { .. } = self.cfg.direction {
                let writes_a = match act {
                    Action::KeepConflictCopy { side, .. }
                    | Action::MakeDir { side, .. }
                    | Action::SetMetadata { side, .. }
                    | Action::Delete { side, .. } => *side == Side::A,
                    Action::Copy { from, .. } | Action::Symlink { from, .. } => *from == Side::B,
                    Action::RecordVersion { .. } => false,
                };
                if writes_a {
                    return bad(Kind::OneWayTouchedSource, describe(act));
                }
            }
        }
        Ok(())
    }

    /// Syncs pairs, round after round, until a round changes nothing; then
    /// checks the final invariants.
    pub fn quiesce(&mut self) -> Result<(), Violation> {
        if self.cfg.daemon {
            return self.quiesce_daemon();
        }
        self.at = "quiescence".into();
        let n = self.devices.len();
        let pairs: Vec<(usize, usize)> = match self.cfg.direction {
            Direction::OneWay { .. } => vec![(0, 1)],
            Direction::TwoWay => (0..n)
                .flat_map(|a| (a + 1..n).map(move |b| (a, b)))
                .collect(),
        };
        let mut last = Vec::new();
        for round in 0..self.cfg.max_rounds {
            self.clock += 1;
            self.log(|| format!("-- quiescence round {round}"));
            let mut busy = false;
            last.clear();
            for &(a, b) in &pairs {
                let mut s = match sync(a, b) {
                    Step::Sync(s) => s,
                    _ => unreachable!(),
                };
                s.hash = self.cfg.quiesce_hash;
                let r = self.sync(&s)?;
                if r.busy {
                    busy = true;
                    last.push(format!("devices {a},{b}: {}", plan_text(&r.plan)));
                }
            }
            if !busy {
                self.at = "the end".into();
                return match self.cfg.direction {
                    Direction::TwoWay => self.check_final_two_way(),
                    Direction::OneWay { delete } => self.check_final_one_way(delete),
                };
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

    fn check_final_two_way(&mut self) -> Result<(), Violation> {
        self.check_converged_and_nothing_lost()?;
        // (4) Idempotence, in both side orders.
        let n = self.devices.len();
        for a in 0..n {
            for b in 0..n {
                if a == b {
                    continue;
                }
                let (_, _, p) = self.scan_and_plan(a, b, self.cfg.quiesce_hash);
                if has_work(&p, self.cfg.direction) {
                    return Err(self.violation(
                        Kind::NotIdempotent,
                        format!("devices {a},{b}: {}", plan_text(&p)),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Invariants (1) and (2).
    pub(crate) fn check_converged_and_nothing_lost(&self) -> Result<(), Violation> {
        // (1) Convergence.
        let first = &self.devices[0].tree.nodes;
        for (i, d) in self.devices.iter().enumerate().skip(1) {
            let paths: BTreeSet<&RelPath> = first.keys().chain(d.tree.nodes.keys()).collect();
            for p in paths {
                let (x, y) = (first.get(p), d.tree.nodes.get(p));
                let same = match (x, y) {
                    (Some(x), Some(y)) => {
                        x.kind == y.kind
                            && x.payload == y.payload
                            && x.mode == y.mode
                            && (x.kind != FileKind::File || x.mtime == y.mtime)
                    }
                    (None, None) => true,
                    _ => false,
                };
                if !same {
                    let show = |n: Option<&Node>| n.map_or("nothing".into(), fmt_node);
                    return Err(self.violation(
                        Kind::Diverged,
                        format!("{p}: device 0 has {}, device {i} has {}", show(x), show(y)),
                    ));
                }
            }
        }
        // (2) Nothing lost.
        for (tag, w) in self.writes.iter().enumerate() {
            if self.retired(tag) {
                continue;
            }
            let holds = |n: &Node| n.kind == w.kind && n.payload == w.payload;
            let found = first
                .iter()
                .any(|(p, n)| holds(n) && (p == &w.path || original_of(p) == original_of(&w.path)));
            if !found {
                let elsewhere: Vec<&RelPath> = first
                    .iter()
                    .filter(|(_, n)| holds(n))
                    .map(|(p, _)| p)
                    .collect();
                return Err(self.violation(
                    Kind::Lost,
                    format!(
                        "write #{tag} (step {}, device {}: {} = {:?}) is neither at its path nor in a conflict copy of it{}",
                        w.at,
                        w.dev,
                        w.path,
                        String::from_utf8_lossy(&w.payload),
                        if elsewhere.is_empty() {
                            String::new()
                        } else {
                            format!(" (same bytes at {elsewhere:?})")
                        }
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_final_one_way(&mut self, delete: bool) -> Result<(), Violation> {
        let (_, _, p) = self.scan_and_plan(0, 1, self.cfg.quiesce_hash);
        if !p.actions.is_empty() {
            return Err(self.violation(Kind::NotIdempotent, plan_text(&p)));
        }
        let refused: Vec<&RelPath> = p.refused.iter().map(|r| &r.path).collect();
        let checksum = self.cfg.quiesce_hash == HashPolicy::All;
        let (src, dst) = (&self.devices[0].tree.nodes, &self.devices[1].tree.nodes);
        for (path, x) in src {
            if refused.iter().any(|r| path.starts_with(r)) {
                continue;
            }
            let ok = dst.get(path).is_some_and(|y| {
                x.kind == y.kind
                    && x.mode == y.mode
                    && match x.kind {
                        // Metadata mode trusts size + mtime, as rsync does.
                        FileKind::File => {
                            x.mtime == y.mtime
                                && (if checksum {
                                    x.payload == y.payload
                                } else {
                                    x.size() == y.size()
                                })
                        }
                        FileKind::Symlink => x.payload == y.payload,
                        FileKind::Directory => true,
                    }
            });
            if !ok {
                return Err(self.violation(
                    Kind::OneWayMismatch,
                    format!(
                        "{path}: source has {}, destination has {}",
                        fmt_node(x),
                        dst.get(path).map_or("nothing".into(), fmt_node)
                    ),
                ));
            }
        }
        for (path, _) in refused.iter().map(|r| (r, ())) {
            let src_file = src
                .get(*path)
                .is_some_and(|n| n.kind != FileKind::Directory);
            let dst_dir = dst
                .get(*path)
                .is_some_and(|n| n.kind == FileKind::Directory);
            if delete || !src_file || !dst_dir {
                return Err(self.violation(
                    Kind::OneWayMismatch,
                    format!("{path} refused: {}", plan_text(&p)),
                ));
            }
        }
        if delete && let Some(extra) = dst.keys().find(|p| !src.contains_key(*p)) {
            return Err(self.violation(
                Kind::OneWayMismatch,
                format!("{extra} is on the destination only, despite --delete"),
            ));
        }
        Ok(())
    }

    /// Both trees and indexes, for traces.
    pub fn dump(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, d) in self.devices.iter().enumerate() {
            out.push(format!(
                "device {i} ({}), skew {}s:",
                device_name(d.id),
                d.skew
            ));
            let paths: BTreeMap<&RelPath, ()> = d
                .tree
                .nodes
                .keys()
                .chain(d.snap.index.keys())
                .map(|p| (p, ()))
                .collect();
            for p in paths.keys() {
                let disk = d.tree.nodes.get(*p).map_or("-".into(), fmt_node);
                let idx = d.snap.index.get(*p).map_or("-".into(), fmt_entry);
                out.push(format!("    {p}: disk {disk} | index {idx}"));
            }
        }
        out
    }
}

/// The same action with sides A and B swapped.
fn mirror(x: &mut Action) {
    match x {
        Action::KeepConflictCopy { side, .. }
        | Action::MakeDir { side, .. }
        | Action::SetMetadata { side, .. }
        | Action::Delete { side, .. } => *side = side.other(),
        Action::Copy { from, .. } | Action::Symlink { from, .. } => *from = from.other(),
        Action::RecordVersion { .. } => {}
    }
}

/// A cut after `limit` actions moved past the write of every path whose
/// making-room delete is before the cut (bug 8's step-around).
fn past_pending_writes(plan: &Plan, limit: usize) -> usize {
    let mut end = limit;
    for act in &plan.actions[..limit] {
        if let Action::Delete {
            expected,
            making_room: true,
            ..
        } = act
        {
            let write = plan.actions.iter().rposition(|w| {
                matches!(
                    w,
                    Action::Copy { .. } | Action::Symlink { .. } | Action::MakeDir { .. }
                ) && w.path() == &expected.path
            });
            if let Some(i) = write {
                end = end.max(i + 1);
            }
        }
    }
    end
}

/// Whether `plan` has work: actions (version records too), or, in
/// two-way mode, refusals.
pub(crate) fn has_work(plan: &Plan, direction: Direction) -> bool {
    !plan.actions.is_empty() || (direction == Direction::TwoWay && !plan.refused.is_empty())
}

/// A plan as one line.
pub fn plan_text(p: &Plan) -> String {
    let mut parts: Vec<String> = p.actions.iter().map(describe).collect();
    parts.extend(
        p.refused
            .iter()
            .map(|r| format!("refused {}: {}", r.path, r.reason)),
    );
    parts.join("; ")
}

/// Runs `history` under `cfg`: every step, then quiescence and the final
/// checks. `trace` collects a readable log.
pub fn run_history(cfg: &Config, history: &History, trace: bool) -> (Result<(), Violation>, World) {
    let mut w = World::new(cfg.clone(), &history.skews);
    if trace {
        w.trace = Some(Vec::new());
    }
    w.stats.histories = 1;
    for s in &history.steps {
        if let Err(v) = w.step(s) {
            return (Err(v), w);
        }
    }
    let r = w.quiesce();
    (r, w)
}
