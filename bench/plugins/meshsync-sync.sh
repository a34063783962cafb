#!/usr/bin/env bash
# Plug-in for ../shared/bench: `meshsync sync` as a local tool (no network).
#   initial : meshsync sync SRC DST            (DST empty)
#   update  : meshsync sync --delete SRC DST   (after the dataset's mutation;
#             the index from `initial` lets unchanged files be skipped by stat)
#   extra   : rescan: the same sync again with nothing changed (warm cache)
# Binary: $MESHSYNC_BIN (default: target/release/meshsync of this repo).
set -euo pipefail
. "$BENCH_HOME/lib/plugin_common.sh"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN=${MESHSYNC_BIN:-$HERE/../../target/release/meshsync}
HOME_DIR="$BENCH_STATE/meshsync-home"

# Runs the sync; only this is timed (the JSON is read afterwards: a Python
# start with a cold page cache takes 0.17 s here, which is not the tool's).
run_sync() {
  local out="$BENCH_STATE/sync-$1.json"; shift
  /usr/bin/time -f %M -o "$BENCH_STATE/meshsync.maxrss" \
    "$BIN" --home "$HOME_DIR" sync --json --no-progress "$@" "$BENCH_SRC" "$BENCH_DST" > "$out"
}

# Prints the metrics of the run named $1.
report_sync() {
  python3 - "$BENCH_STATE/sync-$1.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for k in ("duration_s", "scan_s", "files_copied", "files_deleted", "bytes_from_source",
          "bytes_reused", "bytes_written"):
    print("METRIC ms_%s %s" % (k, r[k]))
if r["errors"]:
    print("METRIC ms_errors %d" % len(r["errors"]))
PY
  metric tool_maxrss_kb "$(tail -1 "$BENCH_STATE/meshsync.maxrss")"
}

case "${1:-}" in
describe)
  v=$("$BIN" --version | awk '{print $2}')
  printf '{"name":"meshsync-sync","version":"%s","phases":["initial","update","extra"],"rss_match":["meshsync"],"verify_exclude":[],"data_ports":[],"notes":"local meshsync sync; update uses --delete; extra = no-change resync (rescan)"}\n' "$v"
  ;;
setup) mkdir -p "$HOME_DIR" ;;
initial)
  t0=$(now_ns); run_sync initial; metric time_s "$(secs_since "$t0")"; report_sync initial ;;
update)
  t0=$(now_ns); run_sync update --delete; metric time_s "$(secs_since "$t0")"; report_sync update ;;
extra)
  run_sync warmup --delete
  t0=$(now_ns); run_sync rescan --delete; metric rescan_s "$(secs_since "$t0")"
  report_sync rescan | sed 's/^METRIC ms_/METRIC rescan_/' ;;
teardown) : ;;
*) echo "usage: $0 describe|setup|initial|update|extra|teardown" >&2; exit 2 ;;
esac
