#!/usr/bin/env bash
# An interleaved series of bench/storage-only.sh (docs/benchmarks.md,
# "Storage-only peers"): each round runs every binary in BINS with a
# read-write peer, then a storage-only peer, then (WARM_TOO=1) a second
# storage peer, so a machine whose load moves treats them alike. Prints one
# line per run with the 1-minute load average before it, then per binary
# and kind the median time and the cut against the read-write median.
#
#   bench/storage-only-series.sh [ROUNDS] [SRC]
#   BINS="/tmp/old/meshsync target/release/meshsync" WARM_TOO=1 bench/storage-only-series.sh 5
#
# ROUNDS defaults to 5, SRC to bench/_data/large, BINS to
# target/release/meshsync. Needs root (bench/storage-only.sh drops the page
# cache). The raw lines also go to $OUT (default bench/_runs/storage-only-<time>.txt).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-5}
SRC=${2:-$ROOT/bench/_data/large}
BINS=${BINS:-$ROOT/target/release/meshsync}
mkdir -p "$ROOT/bench/_runs"
OUT=${OUT:-$ROOT/bench/_runs/storage-only-$(date +%Y%m%d-%H%M%S).txt}
: > "$OUT"
kinds="read_write encrypted"
[ "${WARM_TOO:-}" = 1 ] && kinds="$kinds warm"
for round in $(seq "$ROUNDS"); do
  for bin in $BINS; do
    for kind in $kinds; do
      load=$(cut -d' ' -f1 /proc/loadavg)
      if [ "$kind" = warm ]; then
        line=$(BIN=$bin WARM=1 "$ROOT/bench/storage-only.sh" "$SRC" encrypted 2>&1 | grep converged)
      else
        line=$(BIN=$bin "$ROOT/bench/storage-only.sh" "$SRC" "$kind" 2>&1 | grep converged)
      fi
      secs=$(echo "$line" | awk '{print $4}')
      echo "round $round $bin $kind $secs s load $load" | tee -a "$OUT"
    done
  done
done
python3 - "$OUT" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    f = line.split()
    runs.setdefault((f[2], f[3]), []).append((float(f[4]), float(f[7])))
for (binary, kind), xs in sorted(runs.items()):
    med = statistics.median(t for t, _ in xs)
    rw = statistics.median(t for t, _ in runs.get((binary, "read_write"), xs))
    loads = [l for _, l in xs]
    print(f"{binary} {kind}: runs {', '.join(f'{t:.2f}' for t, _ in xs)}; median {med:.2f} s"
          f" ({1024 / med:.0f} MiB/s, {100 * (rw / med - 1):+.0f} % throughput against read-write);"
          f" load {min(loads):.1f}-{max(loads):.1f}")
PY
