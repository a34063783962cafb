#!/usr/bin/env python3
"""Side-by-side summary of bench/local.sh results: medians and ratios.

    bench/compare.py [results-local.jsonl]

For each dataset and phase: the median over successful, verified runs of
`time_s + flush_s` (time to a durable result) for cp, rsync-local and
meshsync-sync, and meshsync's ratio to each; plus meshsync's own counters
(bytes from source / reused), peak RSS, and the no-change rescan time.
"""
import json
import statistics
import sys
from collections import defaultdict

path = sys.argv[1] if len(sys.argv) > 1 else "bench/results-local.jsonl"
rows = [json.loads(l) for l in open(path) if l.strip()]
runs = defaultdict(list)  # (dataset, phase, tool) -> [metrics]
for r in rows:
    m = r["metrics"]
    if m.get("rc", 0) != 0:
        continue
    if r["phase"] in ("initial", "update") and not m.get("verify_ok", False):
        continue
    runs[(r["dataset"], r["phase"], r["tool"])].append(m)


def med(ms, key, default=None):
    vals = [f(m) for m in ms for f in [key] if f(m) is not None]
    return statistics.median(vals) if vals else default


def durable(m):
    return m.get("time_s", 0) + m.get("flush_s", 0)


def fmt(x, unit=""):
    return "–" if x is None else f"{x:.2f}{unit}"


datasets = sorted({k[0] for k in runs})
print("| dataset | phase | n | cp -a s | rsync -a s | meshsync s | meshsync / rsync | meshsync / cp |")
print("|---|---|---|---|---|---|---|---|")
for d in datasets:
    for phase in ("initial", "update"):
        cp = runs.get((d, phase, "cp"), [])
        rs = runs.get((d, phase, "rsync-local"), [])
        ms = runs.get((d, phase, "meshsync-sync"), [])
        if not ms:
            continue
        t_cp, t_rs, t_ms = med(cp, durable), med(rs, durable), med(ms, durable)
        r_rs = t_ms / t_rs if t_ms and t_rs else None
        r_cp = t_ms / t_cp if t_ms and t_cp else None
        print(f"| {d} | {phase} | {len(ms)} | {fmt(t_cp)} | {fmt(t_rs)} | {fmt(t_ms)} | {fmt(r_rs, 'x')} | {fmt(r_cp, 'x')} |")

print()
print("| dataset | phase | bytes from source MiB | bytes reused MiB | rsync literal MiB | ideal delta MiB | meshsync peak RSS MiB | rsync peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|")
MiB = 1 << 20
for d in datasets:
    for phase in ("initial", "update"):
        ms = runs.get((d, phase, "meshsync-sync"), [])
        rs = runs.get((d, phase, "rsync-local"), [])
        if not ms:
            continue
        src = med(ms, lambda m: m.get("ms_bytes_from_source"))
        reu = med(ms, lambda m: m.get("ms_bytes_reused"))
        lit = med(rs, lambda m: m.get("literal_bytes"))
        ideal = med(ms, lambda m: m.get("ideal_delta_bytes"))
        rss = med(ms, lambda m: m.get("tool_maxrss_kb"))
        rrss = med(rs, lambda m: m.get("tool_maxrss_kb"))
        f = lambda x, s=MiB: "–" if x is None else f"{x / s:.2f}"
        print(f"| {d} | {phase} | {f(src)} | {f(reu)} | {f(lit)} | {f(ideal)} | {f(rss, 1024)} | {f(rrss, 1024)} |")

print()
for d in datasets:
    ex = runs.get((d, "extra", "meshsync-sync"), [])
    if ex:
        print(f"- {d}: no-change resync (rescan, warm cache): median {fmt(med(ex, lambda m: m.get('rescan_duration_s')))} s "
              f"(scan part {fmt(med(ex, lambda m: m.get('rescan_scan_s')))} s), n={len(ex)}")
