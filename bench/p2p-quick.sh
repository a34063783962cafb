#!/usr/bin/env bash
# Quick check outside the shared harness: two release daemons on 127.0.0.1
# (offline: no discovery), A shares a copy of SRC, the page cache is dropped,
# B is started and timed until it is idle with every byte. Prints the time
# and each daemon's peak RSS (VmHWM; RssAnon and RssFile at the end: the
# binary's own pages are about 14 MiB of it) and CPU time while B syncs. Root
# (drop_caches; NODROP=1 keeps the page cache; HOOK=cmd runs at T0 with
# $PA set, e.g. a perf record -p $PA; B starts after it: PERF=... for B).
#   bench/p2p-quick.sh bench/_data/small      (BIN=... for another binary,
#   UPDATE=1 to time the dataset's mutation as well (polled at 50 Hz;
#   UHOOK=cmd runs before it, with $PA and $PB set),
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
sync; [ -n "${NODROP:-}" ] || echo 3 > /proc/sys/vm/drop_caches
if [ -n "${HOOK:-}" ]; then eval "$HOOK"; fi
cpu() { awk '{printf "%.2f", ($14+$15)/100}' /proc/$1/stat; }
A0=$(cpu $PA)
T0=$(date +%s.%N)
${PERF:-} $BIN --home $W/b run > $W/b.log 2>&1 & PB=$!
# One poller process at 10 Hz (a CLI call per poll would cost a tenth of a core).
python3 - "$W/b/config.toml" 23012 $(find $W/a/data -path '*/.meshsync' -prune -o -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}') <<'PY'
import json, re, sys, time, urllib.request
key = re.search(r'api_key = "([0-9a-f]+)"', open(sys.argv[1]).read()).group(1)
want = int(sys.argv[3])
while True:
    try:
        r = urllib.request.Request(f"http://127.0.0.1:{sys.argv[2]}/rest/status", headers={"X-API-Key": key})
        f = json.load(urllib.request.urlopen(r, timeout=2))["folders"][0]
        if f["state"] == "idle" and f["local_bytes"] == want and f["need_files"] == 0:
            break
    except OSError:
        pass
    time.sleep(0.1)
PY
T1=$(date +%s.%N)
echo "converged in $(echo "$T1 - $T0" | bc) s"
grep -E "VmHWM|RssAnon|RssFile" /proc/$PA/status /proc/$PB/status
echo "CPU while syncing: A $(echo "$(cpu $PA) - $A0" | bc) s, B $(cpu $PB) s"
KEYB=$(sed -n 's/^api_key = "\([0-9a-f]*\)"/\1/p' $W/b/config.toml)
if [ -n "${UPDATE:-}" ]; then
  # The harness's update phase, outside it: A paused, the dataset's mutation
  # applied, the page cache dropped, then rescan + resume on A; timed until B
  # is idle with every byte and has run a sync round since.
  KEYA=$(sed -n 's/^api_key = "\([0-9a-f]*\)"/\1/p' $W/a/config.toml)
  post() { curl -s -o /dev/null -H "X-API-Key: $KEYA" -H 'Content-Type: application/json' -d "{\"folder\":\"$W/a/data\"}" http://127.0.0.1:23011/rest/$1; }
  post pause
  SHARED=${BENCH_SHARED:-$(cd "$(dirname "$0")/.." && pwd)/../shared/bench}
  python3 "$SHARED/gen_dataset.py" mutate "$(basename "$SRC")" $W/a/data >/dev/null
  sync; [ -n "${NODROP:-}" ] || echo 3 > /proc/sys/vm/drop_caches
  SYNCED0=$(curl -s -H "X-API-Key: $KEYB" http://127.0.0.1:23012/metrics | sed -n 's/^meshsync_files_synced_total //p')
  A0=$(cpu $PA); B0=$(cpu $PB)
  if [ -n "${UHOOK:-}" ]; then eval "$UHOOK"; fi
  T0=$(date +%s.%N)
  post rescan; post resume
  python3 - "$KEYB" $(find $W/a/data -path '*/.meshsync' -prune -o -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}') "$SYNCED0" <<'PY'
import json, sys, time, urllib.request
key, want, synced0 = sys.argv[1], int(sys.argv[2]), float(sys.argv[3] or 0)
def get(path):
    r = urllib.request.Request(f"http://127.0.0.1:23012{path}", headers={"X-API-Key": key})
    return urllib.request.urlopen(r, timeout=2).read().decode()
while True:
    f = json.loads(get("/rest/status"))["folders"][0]
    if f["state"] == "idle" and f["local_bytes"] == want and f["need_files"] == 0:
        synced = [l for l in get("/metrics").splitlines() if l.startswith("meshsync_files_synced_total ")]
        if synced and float(synced[0].split()[1]) > synced0:
            break
    time.sleep(0.02)
PY
  T1=$(date +%s.%N)
  echo "update converged in $(echo "$T1 - $T0" | bc) s (CPU: A $(echo "$(cpu $PA) - $A0" | bc) s, B $(echo "$(cpu $PB) - $B0" | bc) s)"
fi
echo "B's scans: $(curl -s -H "X-API-Key: $KEYB" http://127.0.0.1:23012/metrics | sed -n 's/^meshsync_scans_total //p')"
kill $PA $PB; pkill -f "home $W/" || true; wait 2>/dev/null || true
