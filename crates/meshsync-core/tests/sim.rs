//! Deterministic simulation of the core: many devices, random histories,
//! the real planner, and invariants checked after every sync and at the end.
//!
//! # The model
//!
//! - **Devices** (2–6), each with an in-memory folder ([`sim::fs::Tree`]:
//!   path -> file bytes / directory / symlink text, mode, mtime, inode,
//!   ctime), a stored index ([`sim::scan::Snapshot`]), a short id and a clock
//!   skew of -2..2 s. A global virtual clock (whole seconds) moves only when
//!   a history says so, so same-second changes are common.
//! - **Users** create, edit, delete, rename and chmod files, directories and
//!   symlinks. A rename (of a directory too) is a delete plus a create with
//!   the same bytes; every write of bytes makes a new inode (as editors do);
//!   a directory's ctime does not move when entries are added in it. Paths
//!   come from four names, three levels deep, so devices collide.
//! - **Syncs** between two devices work as `meshsync sync` does
//!   (`meshsync-store`'s `scan.rs` and `local_sync.rs`): scan both trees as
//!   the real scanner would ([`sim::scan`], counters from
//!   `VersionVector::bump_at` with the device clock), hash what
//!   [`meshsync_core::plan::content_needed`] names, call
//!   [`meshsync_core::plan::plan`], run the actions as the real executor does
//!   ([`sim::exec`]: each checks the disk is still as scanned; the target
//!   records the source's entry with the action's version, the source records
//!   the version; a conflict loser is renamed and its old name forgotten
//!   until the winner lands), and commit each side's index.
//! - **The network** ([`sim::generate`]) decides which pair syncs when:
//!   requests are delayed and overtake each other, are dropped or delivered
//!   twice, and are dropped across partitions. A sync may stop after any
//!   action (the connection drops); either device may crash before its index
//!   commit, losing what the run recorded while its disk keeps what was done
//!   (both crashing also loses the scans, as `meshsync sync`'s single
//!   transaction would); a user may change a path between plan and execution.
//!   Scans are committed before the exchange: DESIGN's flow persists an
//!   observation before any peer sees it, and the core relies on that (a
//!   device that forgot a scan a peer kept could hand out its counter twice).
//! - **Quiescence**: after the history, partitions heal and all pairs sync,
//!   round after round (the clock moving one second per round), until a whole
//!   round plans nothing at all; 12 rounds at most.
//! - **Daemon mode** ([`sim::daemon`], `meshsync run`): no pairs. A device
//!   pulls: it scans and commits, takes in the indexes its connected peers
//!   committed as the daemon receives them (a whole index on connect, then
//!   entries with new sequence numbers, merged by path; a lagging peer's
//!   newest still in flight), folds them with its own into the global view
//!   ([`meshsync_core::global::global_index`]), asks
//!   [`meshsync_core::pull::plan_pull`] what to do, and carries out its own
//!   side as `crates/meshsync/src/daemon/pull.rs` does: every action checks
//!   the disk is still as scanned, files are fetched (from local files the
//!   index names, else from a connected peer whose index announced the
//!   bytes and whose disk still holds them) and renamed into place at the
//!   end, and one index commit records it all. The network decides who
//!   pulls when and whom it reaches (partitions, peers not yet connected);
//!   peers may drop mid-pull (later files find local bytes only), the
//!   device may crash before its commit (its disk keeps a prefix of the
//!   executor's steps), a user may race the pull. Quiescence: everyone
//!   connected, each device pulling in turn, until a round plans nothing
//!   and no pull's scan found anything new.
//!
//! # The invariants
//!
//! At every sync:
//! - (3) every path an action names is a valid [`meshsync_core::path::RelPath`]
//!   (it round-trips through `RelPath::new`), not internal, and is in one of
//!   the two indexes or is the conflict-copy name the same plan chose (a
//!   sibling named `*.sync-conflict-*`, free on both sides); each action's
//!   `expected`, `replaces` and `source` are the scanned entries; every
//!   version an action records dominates both sides' versions of the path;
//! - a device's recorded version of a path never goes backwards;
//! - the executor refuses nothing when nothing changed since the scan;
//! - planning with the sides swapped gives the mirror image of the plan
//!   (every device picks the same winner, whichever side it plays);
//! - right after a clean sync (complete, no crash, no race), planning the
//!   same pair again gives an empty plan;
//! - one-way: no action writes to the source, the source's tree does not
//!   change, and nothing is deleted without `--delete` except to make room
//!   for a kind change;
//! - daemon mode: no action changes another device (side B); a loser's
//!   copy fetched under a conflict name is exactly side B's entry; right
//!   after a clean pull, planning again with the same views is empty, but
//!   for the version records of conflicts the pull won (the second round of
//!   the rule) and for paths the peers left contested (several concurrent
//!   newest entries: a pull merges with the winner only); the side-swap
//!   check does not apply (there is one side).
//!
//! At quiescence:
//! - (1) convergence: every device has the same paths, with the same kind,
//!   bytes or link text, mode and, for files, mtime;
//! - (2) nothing lost. Every user write (a file's bytes or a symlink's text
//!   at path P) gets a tag that travels with the bytes on disk (copies,
//!   renames), never through an index, so the planner cannot see it. A
//!   write is *dropped* when a user on a device whose disk held it replaces,
//!   deletes or renames it, and the drop counts once that device's next scan
//!   records a change there; a scan that finds the path unchanged with the
//!   same bytes (a rename there and back, the same bytes written again)
//!   makes the drop void. Writes that a scan or a sync records as one version
//!   (identical bytes at the same path) drop together. Every write not
//!   dropped must be, at quiescence, at P or at a conflict copy of P (P's
//!   name with `.sync-conflict-…` inserted, perhaps several times, perhaps
//!   numbered). So a version that lost a conflict survives as a conflict
//!   copy, a change beats a concurrent delete, and no sync overwrites a
//!   change it did not see. This is stricter than "scanned at a sync point":
//!   a write no scan saw before a sync overwrote it counts too;
//! - (4) idempotence: for every ordered pair, a new plan is empty (no
//!   actions, not even version records, and no refusals); in daemon mode,
//!   every device's pull against everyone is empty;
//! - one-way (A → B, with and without `--delete`): B holds A's live set
//!   (same kind, mode and mtime; same size, and same bytes in checksum mode:
//!   metadata mode trusts size + mtime, as rsync does), plus its own extras
//!   without `--delete` and none with it; the only refusal allowed is a
//!   non-empty directory on B where A has a file, without `--delete`.
//!
//! Known open core bugs are stepped around in the sweeps ([`sim::world::Tolerate`]),
//! each pinned by a `bugN_seed…` regression test that fails until it is
//! fixed; drop the switch with the fix.
//!
//! # Running
//!
//! - `cargo test -p meshsync-core --test sim` runs about 8,700 histories
//!   from fixed seeds (2,000 of them in daemon mode; about 15 seconds in
//!   debug) and the regression tests.
//! - A failure prints its seed, the command that replays it
//!   (`SIM_SEED=… cargo test -p meshsync-core --test sim <test>`: with
//!   `SIM_SEED` set, a sweep runs only that seed), and the history shrunk to
//!   the fewest devices and steps and the simplest syncs that still break the
//!   same invariant, as Rust code for a regression test, with a trace of
//!   every plan and both trees and indexes at the end.
//! - `SIM_SOAK_SECS=600 cargo test -p meshsync-core --test sim --release --
//!   --nocapture soak` runs random seeds on one core for that long and prints
//!   histories per second (`SIM_SOAK_SEED` fixes the first seed;
//!   `SIM_DEVICES=3 SIM_STEPS=30` fix the shape; `SIM_STORE_FORGET=1` mirrors
//!   the store's executor where it forgets a conflict loser's name for good;
//!   `SIM_SOAK_MODE=daemon` soaks daemon mode alone, else one history in
//!   four is daemon mode). Daemon mode runs about 1,400-2,000 histories per
//!   second on one core in release.
//!
//! # What it does not model (yet)
//!
//! Ignore rules, case-insensitive file systems and name collisions, the
//! incremental index exchange by sequence number in pairwise syncs (each
//! plans from two full indexes; daemon mode models it), chunk transfer and
//! partial files (a file's bytes come whole from one holder, and a crash
//! loses every fetch in flight), read-only, receive-only and encrypted
//! peers (every peer is authoritative), folder modes other than
//! send-receive, versioning, clocks that go backwards, in-place edits
//! that keep size, mtime and inode, and errors (EIO, ENOSPC) from the file
//! system. In daemon mode also: pull rounds without a scan before them (the
//! daemon pulls up to 8 rounds after one scan; every simulated pull scans
//! first),
//! index batches that arrive while a pull runs (a view changes only
//! between pulls, and is always all a peer had committed at some point), a
//! peer serving bytes from files its index no longer lists, and the
//! daemon's local-only-changes and need counters.
//!
//! # What the harness must never do
//!
//! Decide anything the core decides (who wins, what to copy, what a conflict
//! copy is called): it only scans, asks the planner and executes. It never
//! reads the wall clock or an unseeded random source inside a history, so a
//! seed replays bit for bit; only the soak loop looks at the wall clock, to
//! know when to stop.

use std::collections::BTreeMap;
use std::time::Instant;

use meshsync_core::plan::Direction;

mod sim {
    pub mod daemon;
    pub mod exec;
    pub mod fs;
    pub mod generate;
    pub mod rng;
    pub mod scan;
    pub mod shrink;
    pub mod world;
}

use sim::generate::{Shape, run_generated};
use sim::shrink::shrink;
use sim::world::*;

/// Histories per sweep test under `cargo test`.
const SWEEP: u64 = 4000;
/// Histories of the daemon sweep (each pull plans against several peers).
const SWEEP_DAEMON: u64 = 2000;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
    })
}

/// The shape of seed `seed`'s history; `SIM_DEVICES` and `SIM_STEPS` fix
/// it (for measuring; a replay needs the same variables).
fn shape_of(seed: u64) -> Shape {
    let mut shape = Shape::for_seed(seed);
    if let Some(d) = env_u64("SIM_DEVICES") {
        shape.devices = (d as usize).clamp(2, 6);
    }
    if let Some(n) = env_u64("SIM_STEPS") {
        shape.steps = n as usize;
    }
    shape
}

/// The environment a replay needs besides `SIM_SEED`.
fn replay_env() -> String {
    ["SIM_DEVICES", "SIM_STEPS", "SIM_STORE_FORGET"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v} ")))
        .collect()
}

/// Shrinks a failing seed's history and writes up everything needed to
/// replay and understand it.
fn report(cfg: &Config, test: &str, seed: u64, history: &History, v: &Violation) -> String {
    let small = shrink(cfg, history, v.kind);
    let (again, world) = run_history(cfg, &small, true);
    let mut out = String::new();
    out.push_str(&format!(
        "\n==== seed {seed}: {v}\nreplay: {}SIM_SEED={seed} cargo test -p meshsync-core --test sim {test}\n",
        replay_env()
    ));
    out.push_str(&format!(
        "minimal history ({} devices, {} of {} steps):\n{small}\n",
        small.skews.len(),
        small.steps.len(),
        history.steps.len()
    ));
    match again {
        Err(v2) => out.push_str(&format!("minimal failure: {v2}\n")),
        Ok(()) => {
            out.push_str("(the minimal history no longer fails: shrinking is not deterministic?)\n")
        }
    }
    out.push_str("trace:\n");
    for line in world.trace.iter().flatten() {
        out.push_str(&format!("  {line}\n"));
    }
    out.push_str("state at the failure:\n");
    for line in world.dump() {
        out.push_str(&format!("  {line}\n"));
    }
    out
}

/// Runs `count` seeds from `first` (or only `SIM_SEED`) under `cfg`;
/// panics with a shrunk report of the first failure of each kind.
fn sweep(test: &str, cfg: &Config, first: u64, count: u64) -> Stats {
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(s) => vec![s],
        None => (first..first + count).collect(),
    };
    let mut stats = Stats::default();
    let mut failures: BTreeMap<Kind, (u64, History, Violation, usize)> = BTreeMap::new();
    for seed in seeds {
        let (history, verdict, world) = run_generated(cfg, seed, shape_of(seed));
        stats.add(&world.stats);
        if let Err(v) = verdict {
            failures
                .entry(v.kind)
                .and_modify(|f| f.3 += 1)
                .or_insert((seed, history, v, 1));
        }
    }
    if !failures.is_empty() {
        let mut msg = String::from("simulation found invariant violations:\n");
        for (kind, (seed, _, _, n)) in &failures {
            msg.push_str(&format!("  {kind:?}: {n} histories, first seed {seed}\n"));
        }
        for (seed, history, v, _) in failures.values() {
            msg.push_str(&report(cfg, test, *seed, history, v));
        }
        panic!("{msg}");
    }
    stats
}

/// The sweeps check every invariant: the bugs they once had to step around
/// (see [`Tolerate`]) are fixed. `SIM_TOLERATE=1` steps around them again
/// (to study a new bug while an old one is reintroduced), and
/// `SIM_STORE_FORGET=1` mirrors the store's executor as it was before it
/// applied forgotten names first (see [`Config::forget_wins`]).
fn swept(direction: Direction) -> Config {
    let tolerate = std::env::var_os("SIM_TOLERATE").is_some();
    Config {
        direction,
        tolerate: Tolerate {
            winner_ties: tolerate,
            room_cut: tolerate,
        },
        forget_wins: std::env::var_os("SIM_STORE_FORGET").is_some(),
        ..Config::default()
    }
}

#[test]
fn two_way_histories() {
    let stats = sweep("two_way_histories", &swept(Direction::TwoWay), 0, SWEEP);
    println!("{stats:?}");
}

/// The daemon's rule: each device pulls from the global view of the peers
/// it reaches ([`sim::daemon`]).
fn daemon() -> Config {
    Config {
        daemon: true,
        ..swept(Direction::TwoWay)
    }
}

#[test]
fn daemon_histories() {
    let stats = sweep("daemon_histories", &daemon(), 3_000_000, SWEEP_DAEMON);
    println!("{stats:?}");
}

#[test]
fn one_way_histories() {
    let cfg = swept(Direction::OneWay { delete: false });
    sweep("one_way_histories", &cfg, 1_000_000, SWEEP / 3);
}

#[test]
fn one_way_delete_histories() {
    let cfg = swept(Direction::OneWay { delete: true });
    sweep("one_way_delete_histories", &cfg, 2_000_000, SWEEP / 3);
}

/// Runs random seeds for `SIM_SOAK_SECS` seconds (a no-op without it) and
/// prints histories per second.
#[test]
fn soak() {
    let Some(secs) = env_u64("SIM_SOAK_SECS") else {
        return;
    };
    let first = env_u64("SIM_SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let modes = [
        ("two_way_histories", swept(Direction::TwoWay)),
        (
            "one_way_histories",
            swept(Direction::OneWay { delete: false }),
        ),
        (
            "one_way_delete_histories",
            swept(Direction::OneWay { delete: true }),
        ),
        ("daemon_histories", daemon()),
    ];
    // `SIM_SOAK_MODE=daemon` (or another sweep's name without
    // `_histories`) soaks that mode alone.
    let only = std::env::var("SIM_SOAK_MODE").ok().map(|m| {
        modes
            .iter()
            .position(|(name, _)| name.strip_suffix("_histories") == Some(m.as_str()))
            .unwrap_or_else(|| panic!("SIM_SOAK_MODE: no mode {m:?}"))
    });
    let started = Instant::now();
    let mut stats = Stats::default();
    let mut failures: BTreeMap<Kind, (usize, u64, History, Violation, usize)> = BTreeMap::new();
    let mut seed = first;
    let mut last_print = Instant::now();
    while started.elapsed().as_secs() < secs {
        // Mostly two-way; one in eight histories is one-way, one in eight
        // one-way with --delete, one in four the daemon's.
        let mode = only.unwrap_or(match seed % 8 {
            0 => 1,
            4 => 2,
            2 | 6 => 3,
            _ => 0,
        });
        let (history, verdict, world) = run_generated(&modes[mode].1, seed, shape_of(seed));
        stats.add(&world.stats);
        if let Err(v) = verdict {
            failures
                .entry(v.kind)
                .and_modify(|f| f.4 += 1)
                .or_insert((mode, seed, history, v, 1));
        }
        seed = seed.wrapping_add(1);
        if last_print.elapsed().as_secs() >= 10 {
            last_print = Instant::now();
            let rate = stats.histories as f64 / started.elapsed().as_secs_f64();
            println!(
                "soak: {} histories, {rate:.0}/s, {} failing",
                stats.histories,
                failures.values().map(|f| f.4).sum::<usize>()
            );
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "soak: {} histories in {elapsed:.1}s = {:.0} histories/s on one core (seeds {first}..{seed}); {stats:?}",
        stats.histories,
        stats.histories as f64 / elapsed
    );
    if !failures.is_empty() {
        let mut msg = String::from("soak found invariant violations:\n");
        for (kind, (_, seed, _, _, n)) in &failures {
            msg.push_str(&format!("  {kind:?}: {n} histories, first seed {seed}\n"));
        }
        for (mode, seed, history, v, _) in failures.values() {
            let (test, cfg) = &modes[*mode];
            msg.push_str(&report(cfg, test, *seed, history, v));
        }
        panic!("{msg}");
    }
}

/// Replays `history` under the strict configuration (no bug stepped
/// around) and panics with a trace if an invariant breaks.
fn replay(skews: &[i64], steps: Vec<Step>) {
    replay_with(&Config::default(), skews, steps);
}

fn replay_with(cfg: &Config, skews: &[i64], steps: Vec<Step>) {
    let history = History {
        skews: skews.to_vec(),
        steps,
    };
    let (verdict, world) = run_history(cfg, &history, true);
    if let Err(v) = verdict {
        let mut msg = format!("{v}\n{history}\ntrace:\n");
        for line in world.trace.iter().flatten().chain(world.dump().iter()) {
            msg.push_str(&format!("  {line}\n"));
        }
        panic!("{msg}");
    }
}

// Regression tests: one per bug the simulation found, named after it, with
// the seed that found it and the shrunk (or hand-shrunk) history.

/// Seed 219: two concurrent edits of equal size and mtime were taken as
/// equal in metadata mode; one was silently lost (fixed in e3d07f8).
#[test]
fn bug1_seed219_concurrent_edits_with_same_size_and_mtime_both_kept() {
    replay(
        &[0, 0],
        vec![write(0, "c.txt", 7), write(1, "c.txt", 0), sync(0, 1)],
    );
}

/// Seed 3: a tombstone against a device that never had the path planned a
/// version record the executor cannot make, forever (fixed in e3d07f8).
#[test]
fn bug2_seed3_tombstone_against_never_seen_path_settles() {
    replay(
        &[0, 0, 0],
        vec![symlink(1, "a", 0), sync(0, 1), remove(0, "a")],
    );
}

/// Seed 31: a directory deleted on one side while a new child in it wins
/// was planned for deletion ("directory is not empty") (fixed in e3d07f8).
#[test]
fn bug3_seed31_directory_with_surviving_child_is_kept() {
    replay(
        &[0, 0, 0],
        vec![
            mkdir(1, "b"),
            sync(1, 0),
            mkdir_mode(2, "c.txt", 0o700),
            sync(0, 2).race(write(0, "b/b", 2)),
            rename(2, "b", "c.txt/d"),
        ],
    );
}

/// Seeds 939, 100565: a directory replaced by a file deleted, to make room,
/// a child created concurrently under it on the other device (fixed in
/// e3d07f8: a conflict).
#[test]
fn bug4_seed100565_kind_change_keeps_concurrent_child() {
    replay(
        &[0, 0],
        vec![
            mkdir(0, "d"),
            sync(0, 1),
            write(1, "d/x", 5),
            remove(0, "d"),
            write(0, "d", 6),
        ],
    );
}

/// Seeds 989, 100077: deletes that make room recorded the parent's version
/// on each child, which need not dominate the child's own (fixed in e3d07f8).
#[test]
fn bug4_seed100077_making_room_tombstones_dominate_the_child() {
    replay(
        &[0, 0],
        vec![
            mkdir(1, "d"),
            sync(1, 0),
            symlink(0, "d/a", 0),
            sync(1, 0),
            remove(1, "d"),
            write(1, "d", 8),
        ],
    );
}

/// Seed 1259: after losing index updates in a crash, a device's next
/// change got a counter below one its peer held, so the change lost to an
/// older version (fixed in e3d07f8: device-clock counters, `bump_at`).
#[test]
fn bug5_seed1259_change_after_crash_is_not_older_than_before() {
    replay(
        &[0, 0, -1],
        vec![
            tick(1),
            write(0, "d", 5),
            sync(2, 0),
            tick(1),
            write(2, "d", 15),
            tick(3914),
            write(0, "d", 11),
            tick(1),
            sync(2, 0).crash(true, false),
            write(2, "d.sync-conflict-20231114-231838-DAAAAAA", 9),
        ],
    );
}

/// Seed 191: a conflict copy's name was taken by an earlier conflict in the
/// same second (the "last changer" after a merge named the wrong device),
/// and the conflict was refused (fixed in e3d07f8: numbered names).
#[test]
fn bug6_seed191_second_conflict_in_the_same_second_gets_a_free_name() {
    replay(
        &[0, 0, 0],
        vec![
            write(2, "a", 13),
            sync(2, 0),
            tick(1),
            write(2, "a", 16),
            write(1, "a", 7),
        ],
    );
}

/// Seed 402209 (open): the conflict winner order is not total: two copies
/// with the same mtime, last changer, content and size but another mode tie,
/// and side A wins, so whether a chmod survives depends on which device
/// starts the sync.
#[test]
fn bug7_seed402209_winner_does_not_depend_on_who_starts_the_sync() {
    replay(
        &[0, 0, 0],
        vec![
            write(2, "a", 12),
            write(0, "a", 16),
            sync(1, 2),
            sync(0, 1),
            chmod(2, "a", 0o755),
        ],
    );
}

/// Seed 523482 (open): a delete that makes room for a newer entry of
/// another kind records the merged version, which already includes the
/// incoming write. Cut after the delete, the tombstone claims that write; a
/// concurrent change from a third device then beats the tombstone and
/// dominates the write, which is lost without a conflict copy.
#[test]
fn bug8_seed523482_interrupted_kind_change_loses_nothing() {
    replay(
        &[0, 0, 0],
        vec![
            mkdir(1, "a"),
            sync(0, 1),
            remove(0, "a"),
            write(0, "a", 5),
            sync(0, 1).stop_after(1),
            write(2, "a", 7),
            sync(1, 2),
        ],
    );
}

/// The same, as the simulation first found it.
#[test]
fn bug8_seed523482_as_found() {
    replay(
        &[0, 0, 2, 0],
        vec![
            symlink(2, "a", 3),
            write(3, "a", 1),
            mkdir(1, "a"),
            sync(0, 3),
            sync(0, 2),
            sync(3, 0).stop_after(1),
            sync(1, 3),
        ],
    );
}
/// Seed 675677 (open): `bump_at` takes counters from the device clock in
/// whole seconds, so two changes by one device in the same second share a
/// counter. A conflict copy inherits the loser's vector ({d0:6,d1:9}); after
/// a crash lost that record, the user's new write at the copy's path, in the
/// same second, gets {d1:9}, is dominated, and is overwritten.
#[test]
fn bug9_seed675677_new_change_in_the_same_second_is_not_older() {
    replay(
        &[0, 0],
        vec![
            tick(6),
            write(0, "c.txt", 12),
            sync(1, 0),
            tick(1),
            write(0, "c.txt", 2),
            tick(2),
            chmod(1, "c.txt", 0o600),
            sync(1, 0).crash(true, false),
            write(1, "c.sync-conflict-20231114-221329-CAAAAAA.txt", 18),
            sync(1, 0),
        ],
    );
}

// Daemon mode ([`sim::daemon`]): bugs in the pull rule, the global view and
// the daemon's executor (`crates/meshsync/src/daemon/pull.rs`).

/// Found by reading `pull.rs` against `Action::Delete::making_room`, no
/// seed: bug 8 again, in the daemon's executor. A delete that made room
/// for a file recorded a tombstone with the merged version; the file never
/// came (the peer left), a third device's concurrent write beat the
/// tombstone and its merged version dominated the first file, which was
/// overwritten everywhere without a conflict copy (fixed: no tombstone for
/// a path the plan writes).
#[test]
fn bug10_daemon_interrupted_kind_change_loses_nothing() {
    replay_with(
        &daemon(),
        &[0, 0, 0],
        vec![
            mkdir(1, "a"),
            rescan(1),
            pull(0, &[1]),
            remove(0, "a"),
            write(0, "a", 5),
            rescan(0),
            pull(1, &[0]).stop_after(0),
            write(2, "a", 7),
            rescan(2),
            pull(1, &[2]),
        ],
    );
}

/// Seed 6837 (of the fix above, as first written): the children of a
/// directory deleted to make room for a symlink kept their live entries
/// (no write of the plan records them) until a scan made them local
/// deletes, one more round for every peer (fixed: only the path the plan
/// writes goes without a tombstone).
#[test]
fn bug10_seed6837_children_deleted_to_make_room_get_their_tombstones() {
    replay_with(
        &daemon(),
        &[0, 0],
        vec![
            mkdir_mode(1, "c.txt", 0o700),
            mkdir_mode(1, "c.txt/c.txt", 0o700),
            pull(1, &[]),
            remove(1, "c.txt"),
            symlink(1, "c.txt", 3),
        ],
    );
}

/// Seed 3000000: the daemon's index commit removed forgotten names after
/// the upserts, so a conflict winner's copy landing on the loser's old
/// name lost its record, and the next scan gave it a fresh version of its
/// own (fixed: the daemon forgets nothing; see the next one).
#[test]
fn bug11_seed3000000_winner_on_the_losers_name_stays_recorded() {
    replay_with(
        &daemon(),
        &[0, 0],
        vec![mkdir(1, "c.txt"), write(0, "c.txt", 16), pull(1, &[])],
    );
}

/// Seed 5435: a conflict loser's old name, forgotten when the winner's
/// copy failed, stayed in a peer's view as last announced (an older
/// version: a forgotten path is no change by sequence number); it beat
/// the winner's later delete, and the peer fetched bytes nobody had, for
/// ever (fixed: the daemon forgets nothing; the entry stays until the
/// winner lands or a scan records the delete).
#[test]
fn bug12_seed5435_a_forgotten_name_does_not_linger_in_peers_views() {
    replay_with(
        &daemon(),
        &[0, 0, 0],
        vec![
            write(1, "a", 5),
            pull(1, &[]).race(write(1, "a", 6)),
            write(2, "a", 9),
            pull(2, &[]),
            rename(2, "a", "b"),
        ],
    );
}

/// Seed 3000248: the global view depended on the order of the indexes
/// (folding "newer, or the winner" in turn is not transitive): it ended on
/// an entry older than this device's own, which then recorded a merge
/// every round and never settled (fixed: the winner among the newest).
#[test]
fn bug13_seed3000248_the_global_view_is_never_older_than_a_newest_entry() {
    replay_with(
        &daemon(),
        &[0, 1, 2, 0],
        vec![
            mkdir_mode(1, "b", 0o700),
            pull(1, &[]).race(remove(1, "b")),
            pull(2, &[1]),
            pull(1, &[]),
            pull(3, &[2]),
            mkdir_mode(3, "b/d", 0o700),
        ],
    );
}

/// Seed 3000576: the global view was not a tree: a newer symlink won a
/// path while a file made below the directory there, unseen by the
/// symlink's author, stayed live; pulls wrote it under the symlink
/// (refused: unsafe parent) (fixed: the directory stays in the view).
#[test]
fn bug14_seed3000576_no_file_is_planned_under_a_symlink() {
    replay_with(
        &daemon(),
        &[0, 0],
        vec![
            mkdir(1, "d"),
            pull(1, &[]).race(write(1, "d/c.txt", 6)),
            pull(0, &[1]),
            remove(0, "d"),
            symlink(0, "d", 1),
        ],
    );
}

/// Seed 360: a deleted directory won its path while a directory made in it
/// concurrently stayed live below; the deleting device made the child
/// (and, silently, its parent), and a third device planned the child under
/// its own file (fixed: the view keeps the directory, with the
/// tombstone's version, as the pairwise planner does).
#[test]
fn bug15_seed360_a_deleted_directory_with_a_new_child_is_kept() {
    replay_with(
        &daemon(),
        &[0, 0, 0],
        vec![
            mkdir(1, "c.txt"),
            pull(1, &[]),
            remove(1, "c.txt"),
            pull(0, &[1]),
            mkdir(0, "c.txt/a"),
            pull(0, &[]),
            pull(1, &[0]),
            write(2, "c.txt", 13),
            pull(2, &[1]),
        ],
    );
}

/// Seed 41524: the conflict winner order used a directory's mtime, which
/// is not synced and which a scan updates without a new version: two
/// devices held different keys for the same version, each picked its own
/// directory, and their modes never converged (fixed: a directory's mtime
/// does not decide).
#[test]
fn bug16_seed41524_concurrent_directories_pick_one_winner() {
    replay_with(
        &daemon(),
        &[-2, -2],
        vec![
            pull(1, &[]).race(mkdir(1, "c.txt")),
            tick(1),
            mkdir(0, "c.txt"),
            chmod(0, "c.txt", 0o700),
            mkdir(0, "c.txt/b"),
            pull(0, &[]),
            pull(1, &[0]).race(remove(1, "c.txt")),
        ],
    );
}

/// Seed 7739: two equal versions in different states (a directory kept
/// with a tombstone's version, and the tombstone): the global view kept
/// whichever it met first, so each device kept its own (fixed: what
/// exists wins, whatever the order, as the planner decides).
#[test]
fn bug17_seed7739_equal_versions_resolve_the_same_everywhere() {
    replay_with(
        &daemon(),
        &[0, 0],
        vec![
            mkdir(0, "c.txt"),
            pull(0, &[]),
            remove(0, "c.txt"),
            pull(1, &[0]),
            pull(0, &[]),
            mkdir(1, "c.txt/b"),
            pull(1, &[0]).race(remove(1, "c.txt/b")),
            pull(1, &[]),
        ],
    );
}

/// Found by reasoning, no seed: the daemon recorded, for a conflict its
/// (stale) copy won against the global view, a version dominating the
/// loser at once, even when fetching the loser's copy failed; the loser's
/// device then took the winner as newer, and the loser was gone (fixed in
/// `pull::plan_pull`: the version is recorded once the copy is kept here).
#[test]
fn bug18_won_conflict_dominates_the_loser_only_once_its_copy_is_kept() {
    replay_with(
        &daemon(),
        &[0, 0, 0],
        vec![
            mkdir(0, "c"),
            rescan(0),
            pull(1, &[0]),
            remove(1, "c"),
            rescan(1),
            write(2, "c", 5),
            rescan(2),
            pull(0, &[1, 2]).stop_after(0),
            pull(2, &[0]),
        ],
    );
}

/// Seed 5084197 (two-way): two different conflict copies got one name.
/// B's "11" lost to A's "9" and was kept as `b.sync-conflict-…-DAAAAAA`
/// with its own version {d2:5}, but the sync was cut before that copy
/// reached A; A's "9" was recorded with the merged version {d0:3,d2:5},
/// lost to C's "12" in the same second, and its copy got the same name
/// (last changer d2 again) with a version that dominates the first copy's,
/// which the next sync overwrote (fixed: a copy's name carries a tag of
/// the losing version, `conflict::loser_tag`, so two losers never share
/// one).
#[test]
fn bug19_seed5084197_conflict_copies_under_one_name_never_overwrite_each_other() {
    replay(
        &[0, 0, 2],
        vec![
            write(2, "b", 11),
            tick(1),
            symlink(2, "a", 3),
            tick(1),
            tick(1),
            write(0, "b", 9),
            sync(2, 0).stop_after(3),
            tick(1),
            write(1, "b", 12),
        ],
    );
}
