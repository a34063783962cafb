#!/usr/bin/env bash
# Quick check outside the shared harness: two release daemons on 127.0.0.1
# (offline: no discovery), A shares a copy of SRC, the page cache is dropped,
# B is started and timed until it is idle with every byte. Prints the time
# and each daemon's peak RSS (VmHWM) and CPU time. Root (drop_caches).
#   bench/p2p-quick.sh bench/_data/small      (BIN=... for another binary,
#   PERF="perf record -g -o b.perf" / PERFA=... to profile B / A)
set -euo pipefail
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/meshsync}
SRC=${1:?src}
W=${WORK:-/tmp/meshsync-p2p-quick}
pkill -f "home $W/" || true; sleep 0.5
rm -rf $W; mkdir -p $W/a $W/b
cp -a "$SRC" $W/a/data
$BIN --home $W/a init --listen 127.0.0.1:23001 --api 127.0.0.1:23011 --offline >/dev/null
$BIN --home $W/b init --listen 127.0.0.1:23002 --api 127.0.0.1:23012 --offline >/dev/null
KEY=$($BIN --home $W/a share $W/a/data --json | python3 -c 'import json,sys;print(json.load(sys.stdin)["read_write"])')
$BIN --home $W/b join "$KEY" $W/b/data --peer 127.0.0.1:23001 >/dev/null
${PERFA:-} $BIN --home $W/a run > $W/a.log 2>&1 & PA=$!
# wait for A idle
until $BIN --home $W/a status --json 2>/dev/null | python3 -c 'import json,sys;s=json.load(sys.stdin);f=s["folders"][0];sys.exit(0 if f["state"]=="idle" and f["local_files"]>0 else 1)'; do sleep 0.2; done
sync; echo 3 > /proc/sys/vm/drop_caches
T0=$(date +%s.%N)
${PERF:-} $BIN --home $W/b run > $W/b.log 2>&1 & PB=$!
until $BIN --home $W/b status --json 2>/dev/null | python3 -c 'import json,sys;s=json.load(sys.stdin);a=int(sys.argv[1]);f=s["folders"][0];sys.exit(0 if f["state"]=="idle" and f["local_bytes"]==a and f["need_files"]==0 else 1)' $(find $W/a/data -path '*/.meshsync' -prune -o -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}') ; do sleep 0.1; done
T1=$(date +%s.%N)
echo "converged in $(echo "$T1 - $T0" | bc) s"
grep VmHWM /proc/$PA/status /proc/$PB/status; ps -o rss=,cputime= -p $PA -p $PB
kill $PA $PB; wait 2>/dev/null || true
