#!/usr/bin/env bash
# Plug-in for ../shared/bench: plain local rsync, the reference for `meshsync sync`.
#   initial : rsync -a SRC/ DST/
#   update  : rsync -a --delete --no-whole-file SRC/ DST/   (delta algorithm on;
#             local rsync defaults to --whole-file)
set -euo pipefail
. "$BENCH_HOME/lib/plugin_common.sh"
run_rsync() {
  /usr/bin/time -f %M -o "$BENCH_STATE/rsync.maxrss" rsync -a --stats "$@" "$BENCH_SRC/" "$BENCH_DST/" > "$BENCH_STATE/rsync.stats"
  awk -F': ' '/Literal data/{gsub(/[^0-9]/,"",$2); print "METRIC literal_bytes " $2}
              /Matched data/{gsub(/[^0-9]/,"",$2); print "METRIC matched_bytes " $2}' "$BENCH_STATE/rsync.stats"
  metric tool_maxrss_kb "$(tail -1 "$BENCH_STATE/rsync.maxrss")"
}
case "${1:-}" in
describe)
  v=$(rsync --version | awk 'NR==1{print $3}')
  printf '{"name":"rsync-local","version":"%s","phases":["initial","update"],"rss_match":["rsync"],"verify_exclude":[],"data_ports":[],"notes":"local rsync -a; update with --delete --no-whole-file"}\n' "$v"
  ;;
setup) : ;;
initial) t0=$(now_ns); run_rsync; metric time_s "$(secs_since "$t0")" ;;
update) t0=$(now_ns); run_rsync --delete --no-whole-file; metric time_s "$(secs_since "$t0")" ;;
teardown) : ;;
*) echo "usage: $0 describe|setup|initial|update|teardown" >&2; exit 2 ;;
esac
