#!/usr/bin/env python3
"""Side-by-side summary of bench/p2p.sh results: medians and ratios.

    bench/compare_p2p.py [results-p2p.jsonl ...] [--all]

Tools: rsync (daemon, push), syncthing, meshsync-daemon (and meshsync-daemon
xN, the "1 source, N empty peers" runs of `p2p.sh --peers N`).  A phase of a
run counts when it ended with rc 0 and (initial, update) the harness verified
the destination (and, for xN, the plug-in verified the other peers:
extra_verify_ok); --all ignores that.  Times are time_s + flush_s (time to a
durable result: the tools differ in fsync policy), medians over runs;
`scan+initial` adds the timed scan phase of the tools that have one (rsync
scans inside its initial phase).
"""
import json
import statistics
import sys
from collections import defaultdict

MIB = 1 << 20
args = [a for a in sys.argv[1:] if not a.startswith("--")] or ["bench/results-p2p.jsonl"]
ALL = "--all" in sys.argv

runs = defaultdict(dict)  # run_id -> phase -> record
for path in args:
    for line in open(path):
        if line.strip():
            r = json.loads(line)
            runs[r["run_id"]][r["phase"]] = r


def bin_tag(ph):
    """'bin SHA' from the tool_version p2p.sh records, else the version."""
    v = next(iter(ph.values())).get("tool_version", "")
    return v.split("bin ", 1)[1].rstrip(")").strip() if "bin " in v else v


# several meshsync builds in the input: label each run with its binary
MS_BUILDS = {bin_tag(ph) for ph in runs.values() if ph and next(iter(ph.values()))["tool"].startswith("meshsync")}


def tool_label(ph):
    any_r = next(iter(ph.values()))
    tool = any_r["tool"]
    if tool.startswith("meshsync") and len(MS_BUILDS) > 1:
        tool += "@" + bin_tag(ph)[:8]
    peers = ph.get("setup", {}).get("metrics", {}).get("peers")
    return f"{tool} x{peers}" if peers and peers > 1 else tool


def phase_ok(ph, name):
    r = ph.get(name)
    if r is None:
        return False
    m = r["metrics"]
    if ALL:
        return True
    if m.get("rc") != 0:
        return False
    if name in ("initial", "update") and not m.get("verify_ok", False):
        return False
    if m.get("extra_verify_ok") is False:
        return False
    return True


# (dataset, tool) -> list of runs (phase dicts); counts of failed runs
data = defaultdict(list)
failed = defaultdict(list)
for rid, ph in sorted(runs.items()):
    if not ph:
        continue
    any_r = next(iter(ph.values()))
    key = (any_r["dataset"], tool_label(ph))
    data[key].append(ph)
    td = ph.get("teardown", {}).get("metrics", {})
    if not td.get("run_ok", False):
        bad = [p for p in ("setup", "scan", "initial", "update") if p in ph and not phase_ok(ph, p)]
        err = ph.get("error", {}).get("metrics", {}).get("error")
        failed[key].append((rid, bad or ["(incomplete)"], err))


def vals(key, phase, f):
    out = []
    for ph in data.get(key, []):
        if not phase_ok(ph, phase):
            continue
        try:
            v = f(ph[phase]["metrics"], ph)
        except (KeyError, TypeError):
            v = None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(v)
    return out


def med(key, phase, f):
    v = vals(key, phase, f)
    return statistics.median(v) if v else None


def durable(m, ph=None):
    return m["time_s"] + m.get("flush_s", 0)


def scan_plus_initial(m, ph):
    s = ph.get("scan")
    if s is None:
        return durable(m)
    if not phase_ok(ph, "scan"):
        return None
    return durable(s["metrics"]) + durable(m)


def fmt(x, unit="", nd=2):
    return "–" if x is None else f"{x:.{nd}f}{unit}"


def ratio(a, b):
    return fmt(a / b, "x") if a is not None and b else "–"


def n_of(key, phase):
    return len(vals(key, phase, lambda m, ph: m["time_s"]))


order = {"tiny": 0, "small": 1, "large": 2, "mixed": 3}
datasets = sorted({k[0] for k in data}, key=lambda d: (order.get(d, 9), d))
tools = sorted({k[1] for k in data})
ms_tools = [t for t in tools if t.startswith("meshsync-daemon")]
base_tools = [t for t in ("rsync", "syncthing") if t in tools]

print("## Time to a durable result (time_s + flush_s), median seconds\n")
hdr = ["dataset", "phase"] + [f"{t} s (n)" for t in base_tools + ms_tools]
for mt in ms_tools:
    for bt in base_tools:
        hdr.append(f"{mt} / {bt}")
print("| " + " | ".join(hdr) + " |")
print("|" + "---|" * len(hdr))
for d in datasets:
    for phase, label, f in (("scan", "scan", durable), ("initial", "initial", durable),
                            ("initial", "scan+initial", scan_plus_initial), ("update", "update", durable)):
        cells = {}
        for t in base_tools + ms_tools:
            cells[t] = (med((d, t), phase, f), n_of((d, t), phase))
        if all(v is None for v, _ in cells.values()):
            continue
        if phase == "scan" and all(cells[t][0] is None for t in ms_tools):
            continue
        row = [d, label] + [f"{fmt(v)} ({n})" if v is not None else "–" for v, n in cells.values()]
        for mt in ms_tools:
            for bt in base_tools:
                row.append(ratio(cells[mt][0], cells[bt][0]) if phase != "scan" or bt != "rsync" else "–")
        print("| " + " | ".join(row) + " |")

print("\n## Bytes on the wire (nftables, data ports only), median MiB\n")
print("| dataset | phase | tool | wire MiB | ideal delta MiB | wire / ideal | tool's own count MiB | all loopback MiB |")
print("|---|---|---|---|---|---|---|---|")
OWN = {"rsync": "rs_bytes_sent", "syncthing": "st_b_in_bytes"}
for d in datasets:
    for phase in ("initial", "update"):
        for t in base_tools + ms_tools:
            key = (d, t)
            if not data.get(key):
                continue
            wire = med(key, phase, lambda m, ph: m.get("wire_bytes"))
            if wire is None:
                continue
            ideal = med(key, phase, lambda m, ph: m.get("ideal_delta_bytes")) if phase == "update" else \
                med(key, phase, lambda m, ph: m.get("src_bytes"))
            own_key = "ms_bytes_in" if t.startswith("meshsync") else OWN.get(t, "literal_bytes")
            own = med(key, phase, lambda m, ph: m.get(own_key))
            if own is None and t == "rsync":
                own = med(key, phase, lambda m, ph: m.get("literal_bytes"))
            lo = med(key, phase, lambda m, ph: m.get("lo_bytes_all"))
            f = lambda x: "–" if x is None else f"{x / MIB:.2f}"
            print(f"| {d} | {phase} | {t} | {f(wire)} | {f(ideal)}{'' if phase == 'update' else ' (src)'} | "
                  f"{ratio(wire, ideal)} | {f(own)} | {f(lo)} |")

print("\n## Peak memory per process (VmHWM of the phase, median MiB), CPU s\n")
print("| dataset | phase | tool | peak RSS max proc MiB | peak RSS sum MiB | per process MiB | CPU s |")
print("|---|---|---|---|---|---|---|")
for d in datasets:
    for phase in ("scan", "initial", "update"):
        for t in base_tools + ms_tools:
            key = (d, t)
            mx = med(key, phase, lambda m, ph: m.get("peak_rss_max_proc_kb"))
            if mx is None:
                continue
            sm = med(key, phase, lambda m, ph: m.get("peak_rss_sum_kb"))
            cpu = med(key, phase, lambda m, ph: m.get("cpu_s"))
            labels = sorted({lb for ph in data[key] if phase_ok(ph, phase)
                             for lb in ph[phase]["metrics"].get("peak_rss_by_proc_kb", {})})
            per = ", ".join(f"{lb} {med(key, phase, lambda m, ph, lb=lb: m.get('peak_rss_by_proc_kb', {}).get(lb)) / 1024:.1f}"
                            for lb in labels if med(key, phase, lambda m, ph, lb=lb: m.get('peak_rss_by_proc_kb', {}).get(lb)) is not None)
            print(f"| {d} | {phase} | {t} | {mx / 1024:.1f} | {sm / 1024:.1f} | {per} | {fmt(cpu)} |")

swarm = [t for t in ms_tools if " x" in t]
if swarm:
    print("\n## meshsync: 1 source and N empty peers vs 1 peer alone (time_s + flush_s, median s)\n")
    print("| dataset | phase | x1 s (n) | tool | xN s (n) | xN / x1 | per-peer done s | from a MiB | from peers MiB | A sent MiB | wire MiB | peers verified |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for d in datasets:
        for phase in ("initial", "update"):
            for t in swarm:
                key = (d, t)
                t1 = t.rsplit(" x", 1)[0]
                one = med((d, t1), phase, durable)
                many = med(key, phase, durable)
                if many is None and not data.get(key):
                    continue
                n_peers = int(t.rsplit("x", 1)[1])
                names = [f"b{i}" for i in range(1, n_peers + 1)]
                per = "/".join(fmt(med(key, phase, lambda m, ph, nm=nm: m.get(f"time_{nm}_s")), nd=1) for nm in names)
                fa = med(key, phase, lambda m, ph: m.get("ms_bytes_in_from_a"))
                fp = med(key, phase, lambda m, ph: m.get("ms_bytes_in_from_peers"))
                ao = med(key, phase, lambda m, ph: m.get("ms_a_bytes_out"))
                wire = med(key, phase, lambda m, ph: m.get("wire_bytes"))
                ver = [ph[phase]["metrics"].get("extra_verify_ok") for ph in data[key] if phase in ph]
                f = lambda x: "–" if x is None else f"{x / MIB:.1f}"
                print(f"| {d} | {phase} | {fmt(one)} ({n_of((d, t1), phase)}) | {t} | {fmt(many)} ({n_of(key, phase)}) | "
                      f"{ratio(many, one)} | {per} | {f(fa)} | {f(fp)} | {f(ao)} | {f(wire)} | {ver} |")

print("\n## Runs used (tool versions, run ids)\n")
for key in sorted(data, key=lambda k: (order.get(k[0], 9), k[0], k[1])):
    vers = sorted({next(iter(ph.values())).get("tool_version", "") for ph in data[key]})
    ids = [rid for rid, ph in runs.items() if ph and (next(iter(ph.values()))["dataset"], tool_label(ph)) == key]
    print(f"- {key[0]} / {key[1]}: {len(data[key])} run(s); version {', '.join(vers)}; {', '.join(sorted(ids))}")

if failed:
    print("\n## Failed or incomplete runs (excluded above where the phase failed)\n")
    for key, lst in sorted(failed.items()):
        for rid, bad, err in lst:
            print(f"- {key[1]} {key[0]}: run {rid}: failed phases {bad}" + (f"; error {err}" if err else ""))
