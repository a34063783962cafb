#!/usr/bin/env bash
# Side-by-side benchmark of `meshsync sync` against `rsync -a` and `cp -a`,
# on the shared harness (../shared/bench: seeded datasets, cold page cache
# before every phase, content verification of every run, private netns).
#
#   bench/local.sh [REPS] [DATASETS...]     default: 3 reps, small large
#
# Needs root (drop_caches, unshare) and: apt-get install -y rsync hyperfine b3sum nftables
# Results: bench/results-local.jsonl (appended), summary: bench/compare.py.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SHARED=${BENCH_SHARED:-$HERE/../../shared/bench}
REPS=${1:-3}; shift || true
DATASETS=("$@"); [ ${#DATASETS[@]} -eq 0 ] && DATASETS=(small large)
(cd "$HERE/.." && cargo build --release --quiet -p meshsync)
export BENCH_PLUGINS_EXTRA="$HERE/plugins"
export BENCH_DATA=${BENCH_DATA:-$HERE/_data}
export BENCH_RUNS=${BENCH_RUNS:-$HERE/_runs}
export BENCH_RESULTS=${BENCH_RESULTS:-$HERE/results-local.jsonl}
export MESHSYNC_BIN=${MESHSYNC_BIN:-$HERE/../target/release/meshsync}
"$SHARED/run_all.sh" "$REPS" cp rsync-local meshsync-sync -- "${DATASETS[@]}"
python3 "$HERE/compare.py" "$BENCH_RESULTS"
