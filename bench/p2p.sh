#!/usr/bin/env bash
# Peer-to-peer benchmark: the meshsync daemon against Syncthing and rsync
# (daemon mode), on the shared harness (../shared/bench: seeded datasets, cold
# page cache before every phase, content verification of every run, private
# loopback-only network namespace, wire bytes counted by nftables).
#
#   bench/p2p.sh [REPS] [DATASETS...]              default: 1 rep, small large mixed
#       runs: run_all.sh REPS rsync syncthing meshsync-daemon -- DATASETS
#       results: bench/results-p2p.jsonl (appended); summary: bench/compare_p2p.py
#   bench/p2p.sh --peers N [REPS] [DATASETS...]    default: N=4, 1 rep, small large
#       "1 source and N empty peers": meshsync-daemon with MESHSYNC_PEERS=1 and
#       MESHSYNC_PEERS=N, alternately, in the same invocation
#       results: bench/results-p2p-swarm.jsonl
#
# Needs root (drop_caches, unshare, nft) and Debian's
#   syncthing rsync hyperfine b3sum nftables     (installed here if missing)
# The meshsync binary is built (cargo build --release -p meshsync) and copied
# to $BENCH_RUNS/bin/SHA/meshsync, so a rebuild of target/ while the matrix
# runs does not change the binary under test; its hash is in every record's
# tool_version.  Env knobs of the harness pass through (BENCH_PHASE_TIMEOUT,
# BENCH_KEEP, BENCH_DROP_CACHES, BENCH_STRACE, ...); MESHSYNC_BIN skips the build
# (then MESHSYNC_BUILD_INFO may say what it is).  Several meshsync builds in one
# results file are told apart by compare_p2p.py (label meshsync-daemon@BIN).
# In --peers mode the extra peers' trees that the plug-in's teardown could not
# delete in its time budget (state/trash-peer-b*) are removed between runs.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
SHARED=${BENCH_SHARED:-$ROOT/../shared/bench}
PEERS=0
if [ "${1:-}" = "--peers" ]; then PEERS=${2:?--peers N}; shift 2; fi
REPS=${1:-1}; shift || true
DATASETS=("$@")
if [ ${#DATASETS[@]} -eq 0 ]; then
  if [ "$PEERS" -gt 0 ]; then DATASETS=(small large); else DATASETS=(small large mixed); fi
fi

# tools the harness needs (Debian packages)
missing=()
for c in syncthing:syncthing rsync:rsync hyperfine:hyperfine b3sum:b3sum nft:nftables; do
  command -v "${c%%:*}" >/dev/null 2>&1 || missing+=("${c#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get install -y syncthing rsync hyperfine b3sum nftables
fi

export BENCH_PLUGINS_EXTRA="$HERE/plugins"
export BENCH_DATA=${BENCH_DATA:-$HERE/_data}
export BENCH_RUNS=${BENCH_RUNS:-$HERE/_runs}
if [ "$PEERS" -gt 0 ]; then
  export BENCH_RESULTS=${BENCH_RESULTS:-$HERE/results-p2p-swarm.jsonl}
else
  export BENCH_RESULTS=${BENCH_RESULTS:-$HERE/results-p2p.jsonl}
fi

if [ -z "${MESHSYNC_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --quiet -p meshsync)
  src_bin="$ROOT/target/release/meshsync"
  sha=$(sha256sum "$src_bin" | cut -c1-12)
  mkdir -p "$BENCH_RUNS/bin/$sha"
  [ -x "$BENCH_RUNS/bin/$sha/meshsync" ] || cp "$src_bin" "$BENCH_RUNS/bin/$sha/meshsync"
  export MESHSYNC_BIN="$BENCH_RUNS/bin/$sha/meshsync"
  rev=$(cd "$ROOT" && GIT_OPTIONAL_LOCKS=0 git rev-parse --short HEAD 2>/dev/null || echo "?")
  dirty=$(cd "$ROOT" && GIT_OPTIONAL_LOCKS=0 git diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null && echo "" || echo "+local changes")
  export MESHSYNC_BUILD_INFO="git $rev$dirty, bin $sha"
else
  export MESHSYNC_BUILD_INFO=${MESHSYNC_BUILD_INFO:-"bin $(sha256sum "$MESHSYNC_BIN" | cut -c1-12)"}
fi
echo "meshsync binary: $MESHSYNC_BIN ($MESHSYNC_BUILD_INFO)"
echo "results: $BENCH_RESULTS"

# extra peers' trees the plug-in's teardown had no time to delete (untimed, between runs)
sweep() { find "$BENCH_RUNS" -mindepth 3 -maxdepth 3 -path '*/state/trash-peer-b*' -prune -exec rm -rf {} + 2>/dev/null || true; }

if [ "$PEERS" -gt 0 ]; then
  "$SHARED/run.sh" --gen "${DATASETS[@]}" >/dev/null
  for r in $(seq "$REPS"); do
    for d in "${DATASETS[@]}"; do
      for n in 1 "$PEERS"; do
        echo "##### rep $r: meshsync-daemon x$n $d  $(date -Is)"
        MESHSYNC_PEERS=$n "$SHARED/run.sh" meshsync-daemon "$d" || echo "##### FAILED: meshsync-daemon x$n $d (rc=$?)"
        sweep
      done
    done
  done
else
  "$SHARED/run_all.sh" "$REPS" rsync syncthing meshsync-daemon -- "${DATASETS[@]}"
fi
python3 "$HERE/compare_p2p.py" "$BENCH_RESULTS"
