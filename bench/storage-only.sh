#!/usr/bin/env bash
# Initial-sync throughput to a read-write peer vs a storage-only peer, on
# loopback (docs/benchmarks.md, "Storage-only peers"):
#
#   bench/storage-only.sh SRC read_write        # A shares SRC, B joins with the read-write key
#   bench/storage-only.sh SRC encrypted         # B joins with the encrypted (storage-only) key
#   WARM=1 bench/storage-only.sh SRC encrypted  # A sealed everything for a first storage
#                                               # peer already; B is a second one
#
# Times B from its start until it holds everything (read-write: every byte,
# idle; storage-only: every file recorded, nothing needed, idle), with the
# page cache dropped first (run as root). Prints B's time, then the RSS (KiB)
# and CPU time of A and B. PERFA / PERFB prefix A's / B's command (e.g.
# PERFB="perf record -F 999 -o /tmp/b.data") to profile one side. BIN
# defaults to target/release/meshsync; ports 23101-23113 on 127.0.0.1; work
# directory $WORK (default /tmp/meshsync-storage-bench), wiped first.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/meshsync}
SRC=${1:?src}
KIND=${2:-read_write}
W=${WORK:-/tmp/meshsync-storage-bench}; rm -rf $W 2>/dev/null || { sleep 2; rm -rf $W; }; mkdir -p $W/a $W/b
cp -a --reflink=auto "$SRC" $W/a/data 2>/dev/null || true
$BIN --home $W/a init --listen 127.0.0.1:23101 --api 127.0.0.1:23111 --offline >/dev/null
$BIN --home $W/b init --listen 127.0.0.1:23102 --api 127.0.0.1:23112 --offline >/dev/null
KEY=$($BIN --home $W/a share $W/a/data --json | python3 -c "import json,sys;print(json.load(sys.stdin)['$KIND'])")
$BIN --home $W/b join "$KEY" $W/b/data --peer 127.0.0.1:23101 >/dev/null
${PERFA:-} $BIN --home $W/a run > $W/a.log 2>&1 & PA=$!
until $BIN --home $W/a status --json 2>/dev/null | python3 -c 'import json,sys;s=json.load(sys.stdin);f=s["folders"][0];sys.exit(0 if f["state"]=="idle" and f["local_files"]>0 else 1)'; do sleep 0.2; done
FILES=$(find $W/a/data -path '*/.meshsync' -prune -o -type f -print | wc -l)
BYTES=$(find $W/a/data -path '*/.meshsync' -prune -o -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
if [ "${WARM:-}" = 1 ]; then
  # A first storage peer makes A encrypt everything once (its cipher hashes
  # are then cached); B is the second one, timed.
  mkdir -p $W/s1
  $BIN --home $W/s1 init --listen 127.0.0.1:23103 --api 127.0.0.1:23113 --offline >/dev/null
  $BIN --home $W/s1 join "$KEY" $W/s1/data --peer 127.0.0.1:23101 >/dev/null
  $BIN --home $W/s1 run > $W/s1.log 2>&1 & PS1=$!
  until $BIN --home $W/s1 status --json 2>/dev/null | python3 -c 'import json,sys;s=json.load(sys.stdin);f=s["folders"][0];sys.exit(0 if f["state"]=="idle" and f["local_files"]==int(sys.argv[1]) and f["need_files"]==0 else 1)' $FILES; do sleep 0.2; done
  kill $PS1; wait $PS1 2>/dev/null || true
fi
sync; echo 3 > /proc/sys/vm/drop_caches
T0=$(date +%s.%N)
${PERFB:-} $BIN --home $W/b run > $W/b.log 2>&1 & PB=$!
if [ "$KIND" = encrypted ]; then
  until $BIN --home $W/b status --json 2>/dev/null | python3 -c 'import json,sys;s=json.load(sys.stdin);f=s["folders"][0];sys.exit(0 if f["state"]=="idle" and f["local_files"]==int(sys.argv[1]) and f["need_files"]==0 else 1)' $FILES; do sleep 0.1; done
else
  until $BIN --home $W/b status --json 2>/dev/null | python3 -c 'import json,sys;s=json.load(sys.stdin);f=s["folders"][0];sys.exit(0 if f["state"]=="idle" and f["local_bytes"]==int(sys.argv[1]) and f["need_files"]==0 else 1)' $BYTES; do sleep 0.1; done
fi
T1=$(date +%s.%N)
echo "$KIND converged in $(echo "$T1 - $T0" | bc) s ($BYTES bytes, $FILES files)"
ps -o rss=,cputime= -p $PA -p $PB
kill $PA $PB; wait 2>/dev/null || true
