//! Random histories, generated while they run (so every operation is
//! chosen from the device's current tree), with a simulated network that
//! decides which pair syncs when.
//!
//! The network is modelled at the level of sync exchanges: a request for a
//! pair is queued with a random delay (so requests overtake each other), may
//! be dropped or delivered twice, and is dropped while the two devices are
//! on different sides of a partition. A delivered exchange may be cut after
//! any number of actions, lose either side's index updates (a crash before
//! the index commit), or be raced by a user operation between plan and
//! execution.
//!
//! In daemon mode ([`Config::daemon`]) the network decides when each device
//! pulls and whom it reaches: pull requests (a watcher event, a peer's
//! announcement) are queued with a delay and may be dropped; a pull reaches
//! the devices on its side of a partition, each unless it is not connected
//! yet, and each perhaps with its latest updates still in flight. The
//! faults are those a daemon meets: peers gone mid-pull, a crash before the
//! index commit, a user racing the pull.

use meshsync_core::entry::FileKind;
use meshsync_core::path::RelPath;

use crate::sim::rng::Rng;
use crate::sim::scan::HashPolicy;
use crate::sim::world::{Config, History, PullStep, Step, SyncStep, Violation, World};

/// Names paths are made of: few, so paths collide across devices.
const NAMES: [&str; 4] = ["a", "b", "c.txt", "d"];
/// Modes a chmod picks from.
const MODES: [u32; 4] = [0o644, 0o600, 0o755, 0o700];
/// Deepest path generated.
const MAX_DEPTH: usize = 3;

/// The size of a generated history.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Devices (2..=6).
    pub devices: usize,
    /// Steps (user operations, ticks and syncs).
    pub steps: usize,
}

impl Shape {
    /// A shape drawn from `seed`: 2-6 devices (mostly 2-3), 10-40 steps.
    pub fn for_seed(seed: u64) -> Shape {
        let mut r = Rng::new(seed ^ 0x5EED_5A9E);
        let devices = match r.below(20) {
            0..=5 => 2,
            6..=12 => 3,
            13..=16 => 4,
            17..=18 => 5,
            _ => 6,
        };
        Shape {
            devices,
            steps: 10 + r.index(31),
        }
    }
}

struct Net {
    /// Queued sync requests: (due step, a, b).
    queue: Vec<(usize, usize, usize)>,
    /// A partition: bit i set = device i is on the far side, until a step.
    partition: Option<(u64, usize)>,
}

/// Generates a history of `shape` from `seed` and runs it. Returns the
/// history as far as it ran (up to the failing step) and the verdict.
pub fn run_generated(
    cfg: &Config,
    seed: u64,
    shape: Shape,
) -> (History, Result<(), Violation>, World) {
    let mut rng = Rng::new(seed);
    let one_way = !matches!(cfg.direction, meshsync_core::plan::Direction::TwoWay);
    let devices = if one_way { 2 } else { shape.devices };
    let skews: Vec<i64> = (0..devices).map(|_| rng.below(5) as i64 - 2).collect();
    let mut history = History {
        skews: skews.clone(),
        steps: Vec::new(),
    };
    let mut world = World::new(cfg.clone(), &skews);
    world.stats.histories = 1;
    let mut net = Net {
        queue: Vec::new(),
        partition: None,
    };
    let mut round = 0;
    while history.steps.len() < shape.steps {
        round += 1;
        let mut batch = Vec::new();
        // Time.
        match rng.below(10) {
            0..=3 => {}
            4..=8 => batch.push(Step::Tick(1)),
            _ => batch.push(Step::Tick(1 + rng.below(3600) as u32)),
        }
        // A user.
        if rng.chance(3, 5) {
            let dev = rng.index(devices);
            if let Some(op) = user_op(&mut rng, &world, dev, true) {
                batch.push(op);
            }
        }
        // The network.
        if let Some((_, until)) = net.partition {
            if round >= until {
                net.partition = None;
            }
        } else if devices > 2 && rng.chance(1, 20) {
            let mask = 1 + rng.below((1 << devices) - 2);
            net.partition = Some((mask, round + 3 + rng.index(12)));
        }
        if cfg.daemon {
            if rng.chance(1, 2) {
                let dev = rng.index(devices);
                net.queue.push((round + rng.index(4), dev, dev));
            }
        } else if rng.chance(2, 5) {
            let (a, b) = if one_way {
                (0, 1)
            } else {
                let a = rng.index(devices);
                let b = (a + 1 + rng.index(devices - 1)) % devices;
                (a, b)
            };
            net.queue.push((round + rng.index(4), a, b));
        }
        let mut due: Vec<(usize, usize)> = Vec::new();
        net.queue.retain(|&(at, a, b)| {
            if at <= round {
                due.push((a, b));
                false
            } else {
                true
            }
        });
        for (a, b) in due {
            let cut = net
                .partition
                .is_some_and(|(mask, _)| (mask >> a) & 1 != (mask >> b) & 1);
            if cfg.daemon {
                if rng.chance(1, 12) {
                    continue; // dropped
                }
                let s = pull_step(&mut rng, &world, a, devices, net.partition);
                batch.push(Step::Pull(s));
                continue;
            }
            if cut || rng.chance(1, 12) {
                continue; // dropped
            }
            let copies = if rng.chance(1, 12) { 2 } else { 1 };
            let s = sync_step(&mut rng, &world, a, b);
            for _ in 0..copies {
                batch.push(Step::Sync(s.clone()));
            }
        }
        for step in batch {
            let r = world.step(&step);
            history.steps.push(step);
            if r.is_err() {
                return (history, r, world);
            }
        }
    }
    let r = world.quiesce();
    (history, r, world)
}

fn sync_step(rng: &mut Rng, world: &World, a: usize, b: usize) -> SyncStep {
    let hash = match rng.below(6) {
        0..=2 => HashPolicy::Deferred,
        3 | 4 => HashPolicy::Changed,
        _ => HashPolicy::All,
    };
    let mut s = SyncStep {
        a,
        b,
        hash,
        stop_after: None,
        crash: [false, false],
        race: None,
    };
    if rng.chance(1, 8) {
        s.stop_after = Some(rng.index(6));
        s.crash = [rng.chance(1, 2), rng.chance(1, 2)];
    } else if rng.chance(1, 20) {
        s.crash = [rng.chance(1, 2), rng.chance(1, 2)];
    }
    if rng.chance(1, 10) {
        let dev = if rng.chance(1, 2) { a } else { b };
        s.race = user_op(rng, world, dev, false).map(Box::new);
    }
    s
}

fn pull_step(
    rng: &mut Rng,
    world: &World,
    dev: usize,
    devices: usize,
    partition: Option<(u64, usize)>,
) -> PullStep {
    let side = |d: usize| partition.map_or(0, |(mask, _)| (mask >> d) & 1);
    let mut peers = 0u64;
    let mut lag = 0u64;
    for p in 0..devices {
        if p == dev || side(p) != side(dev) || rng.chance(1, 8) {
            continue;
        }
        peers |= 1 << p;
        if rng.chance(1, 6) {
            lag |= 1 << p;
        }
    }
    let mut s = PullStep {
        dev,
        peers,
        lag,
        stop_after: None,
        crash: false,
        race: None,
    };
    if rng.chance(1, 8) {
        s.stop_after = Some(rng.index(6));
        s.crash = rng.chance(1, 2);
    } else if rng.chance(1, 20) {
        s.crash = true;
    }
    if rng.chance(1, 10) {
        s.race = user_op(rng, world, dev, false).map(Box::new);
    }
    s
}

fn pick_new_path(rng: &mut Rng, world: &World, dev: usize) -> RelPath {
    let dirs: Vec<&RelPath> = world.devices[dev]
        .tree
        .nodes
        .iter()
        .filter(|(p, n)| n.kind == FileKind::Directory && p.depth() < MAX_DEPTH)
        .map(|(p, _)| p)
        .collect();
    let name = *rng.pick(&NAMES);
    if dirs.is_empty() || rng.chance(1, 3) {
        RelPath::new(name).expect("valid name")
    } else {
        rng.pick(&dirs).join(name).expect("valid path")
    }
}

/// A user operation on device `dev`, chosen from its tree.
fn user_op(rng: &mut Rng, world: &World, dev: usize, allow_scan: bool) -> Option<Step> {
    let nodes = &world.devices[dev].tree.nodes;
    let of_kind = |k: Option<FileKind>| -> Vec<RelPath> {
        nodes
            .iter()
            .filter(|(_, n)| k.is_none_or(|k| n.kind == k))
            .map(|(p, _)| p.clone())
            .collect()
    };
    let op = match rng.below(100) {
        0..=24 => Step::Write {
            dev,
            path: pick_new_path(rng, world, dev),
            data: rng.below(20) as u8,
        },
        25..=49 => {
            let files = of_kind(Some(FileKind::File));
            if files.is_empty() {
                return None;
            }
            Step::Write {
                dev,
                path: rng.pick(&files).clone(),
                data: rng.below(20) as u8,
            }
        }
        50..=61 => Step::Mkdir {
            dev,
            path: pick_new_path(rng, world, dev),
            mode: if rng.chance(1, 4) { 0o700 } else { 0o755 },
        },
        62..=71 => {
            let all = of_kind(None);
            if all.is_empty() {
                return None;
            }
            Step::Remove {
                dev,
                path: rng.pick(&all).clone(),
            }
        }
        72..=80 => {
            let all = of_kind(None);
            if all.is_empty() {
                return None;
            }
            Step::Rename {
                dev,
                from: rng.pick(&all).clone(),
                to: pick_new_path(rng, world, dev),
            }
        }
        81..=87 => {
            let all: Vec<RelPath> = nodes
                .iter()
                .filter(|(_, n)| n.kind != FileKind::Symlink)
                .map(|(p, _)| p.clone())
                .collect();
            if all.is_empty() {
                return None;
            }
            Step::Chmod {
                dev,
                path: rng.pick(&all).clone(),
                mode: *rng.pick(&MODES),
            }
        }
        88..=92 => Step::Symlink {
            dev,
            path: pick_new_path(rng, world, dev),
            target: rng.below(4) as u8,
        },
        _ if allow_scan => Step::Scan { dev },
        _ => return None,
    };
    Some(op)
}
