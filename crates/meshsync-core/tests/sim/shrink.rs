//! Shrinking: a failing history made as small as it will go while it still
//! breaks the same invariant. Fewer devices first, then fewer steps (halves,
//! quarters, … single steps), then simpler steps (a sync without its race,
//! crash or cut; shorter ticks; no clock skew), repeated to a fixed point.

use std::time::{Duration, Instant};

use crate::sim::world::{Config, History, Kind, Step, run_history};

/// How long shrinking may take; past it, the smallest history so far is kept.
const BUDGET: Duration = Duration::from_secs(20);

fn fails(cfg: &Config, h: &History, kind: Kind) -> bool {
    matches!(run_history(cfg, h, false).0, Err(v) if v.kind == kind)
}

/// `step` with device `gone` removed and later devices renumbered; `None`
/// when the step needs the removed device.
fn without_device(step: &Step, gone: usize) -> Option<Step> {
    let map = |d: usize| -> Option<usize> {
        match d.cmp(&gone) {
            std::cmp::Ordering::Less => Some(d),
            std::cmp::Ordering::Equal => None,
            std::cmp::Ordering::Greater => Some(d - 1),
        }
    };
    let mut s = step.clone();
    match &mut s {
        Step::Tick(_) => {}
        Step::Write { dev, .. }
        | Step::Mkdir { dev, .. }
        | Step::Symlink { dev, .. }
        | Step::Remove { dev, .. }
        | Step::Rename { dev, .. }
        | Step::Chmod { dev, .. }
        | Step::Scan { dev } => *dev = map(*dev)?,
        Step::Pull(p) => {
            p.dev = map(p.dev)?;
            p.peers = without_bit(p.peers, gone);
            p.lag = without_bit(p.lag, gone);
            if let Some(r) = &p.race {
                p.race = without_device(r, gone).map(Box::new);
            }
        }
        Step::Sync(sy) => {
            sy.a = map(sy.a)?;
            sy.b = map(sy.b)?;
            if let Some(r) = &sy.race {
                sy.race = without_device(r, gone).map(Box::new);
            }
        }
    }
    Some(s)
}

/// Device mask `m` with device `gone`'s bit removed and later ones renumbered.
fn without_bit(m: u64, gone: usize) -> u64 {
    (m & ((1 << gone) - 1)) | ((m >> (gone + 1)) << gone)
}

/// Simpler versions of one step, simplest first.
fn simpler(step: &Step) -> Vec<Step> {
    let mut out = Vec::new();
    match step {
        Step::Tick(n) if *n > 1 => out.push(Step::Tick(1)),
        Step::Pull(p) => {
            let mut plain = p.clone();
            plain.race = None;
            plain.crash = false;
            plain.stop_after = None;
            plain.lag = 0;
            if plain != *p {
                out.push(Step::Pull(plain));
            }
            if p.race.is_some() {
                let mut t = p.clone();
                t.race = None;
                out.push(Step::Pull(t));
            }
            if p.lag != 0 {
                let mut t = p.clone();
                t.lag = 0;
                out.push(Step::Pull(t));
            }
            if p.crash {
                let mut t = p.clone();
                t.crash = false;
                out.push(Step::Pull(t));
            }
            if p.stop_after.is_some() {
                let mut t = p.clone();
                t.stop_after = None;
                out.push(Step::Pull(t));
            }
            // Fewer peers.
            for peer in 0..64 {
                if p.peers >> peer & 1 == 1 {
                    let mut t = p.clone();
                    t.peers &= !(1 << peer);
                    t.lag &= t.peers;
                    out.push(Step::Pull(t));
                }
            }
        }
        Step::Sync(s) => {
            let mut plain = s.clone();
            plain.race = None;
            plain.crash = [false, false];
            plain.stop_after = None;
            if plain != *s {
                out.push(Step::Sync(plain));
            }
            if s.race.is_some() {
                let mut t = s.clone();
                t.race = None;
                out.push(Step::Sync(t));
            }
            if s.crash != [false, false] {
                for crash in [[false, false], [true, false], [false, true]] {
                    if crash != s.crash {
                        let mut t = s.clone();
                        t.crash = crash;
                        out.push(Step::Sync(t));
                    }
                }
            }
            if s.stop_after.is_some() {
                let mut t = s.clone();
                t.stop_after = None;
                out.push(Step::Sync(t));
            }
            if s.hash != crate::sim::scan::HashPolicy::Deferred {
                let mut t = s.clone();
                t.hash = crate::sim::scan::HashPolicy::Deferred;
                out.push(Step::Sync(t));
            }
        }
        _ => {}
    }
    out
}

/// The smallest history derived from `history` that still fails with `kind`.
pub fn shrink(cfg: &Config, history: &History, kind: Kind) -> History {
    let started = Instant::now();
    let fails = |h: &History| started.elapsed() < BUDGET && fails(cfg, h, kind);
    let mut best = history.clone();
    loop {
        let before = best.clone();
        let mut d = best.skews.len();
        while d > 0 && best.skews.len() > 2 {
            d -= 1;
            let mut cand = best.clone();
            cand.skews.remove(d);
            cand.steps = best
                .steps
                .iter()
                .filter_map(|s| without_device(s, d))
                .collect();
            if fails(&cand) {
                best = cand;
            }
        }
        let mut chunk = best.steps.len().div_ceil(2);
        while chunk >= 1 {
            let mut i = 0;
            while i < best.steps.len() {
                let mut cand = best.clone();
                cand.steps.drain(i..(i + chunk).min(best.steps.len()));
                if fails(&cand) {
                    best = cand;
                } else {
                    i += chunk;
                }
            }
            chunk /= 2;
        }
        for i in 0..best.steps.len() {
            for s in simpler(&best.steps[i]) {
                let mut cand = best.clone();
                cand.steps[i] = s;
                if fails(&cand) {
                    best = cand;
                    break;
                }
            }
        }
        for i in 0..best.skews.len() {
            if best.skews[i] != 0 {
                let mut cand = best.clone();
                cand.skews[i] = 0;
                if fails(&cand) {
                    best = cand;
                }
            }
        }
        if best == before {
            return best;
        }
    }
}
