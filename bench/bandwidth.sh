#!/usr/bin/env bash
# Bandwidth limits, measured: two release daemons on 127.0.0.1 (offline); A
# shares a copy of bench/_data/tiny (9.6 MiB; made by bench/p2p.sh or
# ../shared/bench/run.sh --gen tiny) with A's max_send_kibps (or B's
# max_recv_kibps) set to KIBPS, and B's rate is printed, from its start to
# idle with every file.
#   bench/bandwidth.sh KIBPS [send|recv]      (KIBPS 0: no limit)
set -euo pipefail
DIR=${2:-send}
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/meshsync}; W=${WORK:-/tmp/meshsync-bandwidth}; pkill -f "home $W/" || true; sleep 0.3; rm -rf $W; mkdir -p $W
cp -a "$(cd "$(dirname "$0")" && pwd)/_data/tiny" $W/data-a
$BIN --home $W/a init --listen 127.0.0.1:23101 --api 127.0.0.1:23111 --offline >/dev/null
$BIN --home $W/b init --listen 127.0.0.1:23102 --api 127.0.0.1:23112 --offline >/dev/null
KEY=$($BIN --home $W/a share $W/data-a --json | python3 -c 'import json,sys;print(json.load(sys.stdin)["read_write"])')
$BIN --home $W/b join "$KEY" $W/data-b --peer 127.0.0.1:23101 >/dev/null
if [ "$DIR" = recv ]; then sed -i "s/max_recv_kibps = 0/max_recv_kibps = $1/" $W/b/config.toml; else sed -i "s/max_send_kibps = 0/max_send_kibps = $1/" $W/a/config.toml; fi
$BIN --home $W/a run > $W/a.log 2>&1 &
until $BIN --home $W/a status --json 2>/dev/null | python3 -c 'import json,sys;f=json.load(sys.stdin)["folders"][0];sys.exit(0 if f["state"]=="idle" and f["local_files"]>0 else 1)'; do sleep 0.2; done
T0=$(date +%s.%N); $BIN --home $W/b run > $W/b.log 2>&1 &
until $BIN --home $W/b status --json 2>/dev/null | python3 -c 'import json,sys;f=json.load(sys.stdin)["folders"][0];sys.exit(0 if f["state"]=="idle" and f["need_files"]==0 and f["local_files"]>0 else 1)'; do sleep 0.1; done
T1=$(date +%s.%N)
BYTES=$(curl -s -H "X-API-Key: $(sed -n 's/^api_key = "\(.*\)"/\1/p' $W/b/config.toml)" http://127.0.0.1:23112/metrics | sed -n 's/^meshsync_bytes_received_total //p')
python3 -c "t=$T1-$T0; b=$BYTES; print(f'limit $1 KiB/s ($DIR): {b/1048576:.2f} MiB in {t:.2f} s = {b/1024/t:.0f} KiB/s')"
pkill -f "home $W/" || true
