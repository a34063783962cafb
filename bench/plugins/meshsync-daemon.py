#!/usr/bin/env python3
"""Plug-in for ../shared/bench: the meshsync daemon (`meshsync run`), peer to
peer over QUIC on loopback.

Nodes (each its own state directory under $BENCH_STATE/ms-NAME, log in
$BENCH_STATE/meshsync-NAME.log, RUST_LOG=meshsync=info unless MESHSYNC_LOG):
  a       shares $BENCH_SRC (send-receive), listens on BENCH_PORT_BASE+1,
          API on BENCH_PORT_BASE+11
  b       joins the share into $BENCH_DST (send-receive), listens on +2, API +12,
          static peer: a
With MESHSYNC_PEERS=N (N > 1) there are N receivers b1..bN ("1 source and N
empty peers"): b1 uses $BENCH_DST (the tree the harness verifies), b2..bN use
$BENCH_STATE/peer-bI/dst (verified here with the harness's lib/treesum.py:
METRIC extra_verify_ok); each bI lists a and every other bJ as static peers,
so they can swarm.  bI listens on BENCH_PORT_BASE+1+I, API +11+I.

Phases:
  setup    init every node, share on a, join on every b; a's folder is *paused*
           (so the scan can be timed); start a's daemon only and wait for its
           API.  The b daemons are NOT started here: a folder that is paused
           when a peer connects is refused by that peer ("UnknownFolder") and
           `meshsync resume` never offers it again on the live connection
           (daemon bug), so "join paused, resume in initial"
           would never sync.  Instead `initial` starts the b daemons: their
           start-up (process start, QUIC handshake, scan of the empty folder)
           is inside the timed phase; it is a few tens of ms.
  scan     resume SRC on a (REST, as `meshsync resume`); time until a is idle with
           local_files/local_bytes == expected.
  initial  start the b daemons; poll each b's /rest/status at 10 Hz until it is
           idle, need_files == 0, local_files/local_bytes == expected, a peer
           is on the folder, and a walk of its tree finds the expected numbers
           of files, dirs and symlinks (time_s = when the last b got there,
           walk included).  A b that has the folder open but stays empty
           (need 0, 0 files, 0 bytes in) for MESHSYNC_STALL_S (30) s
           fails the phase at once ("STALLED": it never got a's index)
           instead of waiting for the phase timeout.  Afterwards (untimed) a's folder is paused, because
           the daemon's file watcher would otherwise pick up the driver's
           mutation before `update` starts and sync it outside the timed phase.
  update   rescan + resume SRC on a (REST POSTs, what `meshsync rescan|resume
           SRC` send); time until a has finished a scan (meshsync_scans_total moved), each b has
           reported a sync round (folder-synced on its /rest/events stream,
           subscribed before the trigger) and is idle with need 0 and the
           expected counts (status and tree walk).
  teardown SIGTERM every recorded PID, SIGKILL after 10 s; removes the index
           databases and the extra peers' trees unless BENCH_KEEP=1 (within a
           time budget; bench/p2p.sh sweeps state/trash-* leftovers).
Metrics: ms_bytes_in (chunk bytes the b's received, from their status),
ms_a_bytes_out, per-peer completion times (time_bI_s), polls, peers.
Binary: $MESHSYNC_BIN (default target/release/meshsync of this repository).
"""
import fnmatch
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
ENV = os.environ
BIN = ENV.get("MESHSYNC_BIN", os.path.join(HERE, "..", "..", "target", "release", "meshsync"))
STATE = ENV.get("BENCH_STATE", ".")
BASE = int(ENV.get("BENCH_PORT_BASE", "22000"))
NPEERS = int(ENV.get("MESHSYNC_PEERS", "1"))
POLL_S = max(0.1, float(ENV.get("MESHSYNC_POLL_S", "0.1")))  # harness rule: <= 10 Hz
LOG = ENV.get("MESHSYNC_LOG", "meshsync=info")
KEEP = ENV.get("BENCH_KEEP") == "1"
STALL_S = float(ENV.get("MESHSYNC_STALL_S", "30"))
EXCLUDE = [".meshsync"]


def metric(k, v):
    print(f"METRIC {k} {json.dumps(v)}", flush=True)


def note(*a):
    print(*a, flush=True)


class Node:
    def __init__(self, name, idx, path):
        self.name = name
        self.listen = BASE + 1 + idx
        self.api = BASE + 11 + idx
        self.path = path
        self.home = os.path.join(STATE, f"ms-{name}")
        self.log = os.path.join(STATE, f"meshsync-{name}.log")
        self.conn = None
        self._key = None

    @property
    def label(self):
        return f"meshsync-{self.name}"

    def key(self):
        if self._key is None:
            with open(os.path.join(self.home, "config.toml"), "rb") as f:
                self._key = tomllib.load(f)["device"]["api_key"]
        return self._key

    def cli(self, *args, check=True):
        p = subprocess.run([BIN, "--home", self.home, *args], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise SystemExit(f"meshsync --home {self.home} {' '.join(args)}: rc={p.returncode}\n{p.stdout}{p.stderr}")
        return p.stdout

    def req(self, method, path, timeout=10, raw=False, body=None):
        for attempt in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.api, timeout=timeout)
                hdr = {"X-API-Key": self.key()}
                data = None
                if body is not None:
                    data = json.dumps(body).encode()
                    hdr["Content-Type"] = "application/json"
                self.conn.request(method, path, body=data, headers=hdr)
                r = self.conn.getresponse()
                body = r.read()
                if r.status >= 400:
                    raise RuntimeError(f"{self.name} {method} {path}: HTTP {r.status} {body[:200]!r}")
                if raw:
                    return body.decode()
                return json.loads(body) if body.strip() else None
            except (http.client.HTTPException, OSError):
                self.conn = None
                if attempt == 1:
                    raise
        return None

    def status(self):
        return self.req("GET", "/rest/status")

    def command(self, what, folder):
        """POST /rest/{rescan,pause,resume} {"folder": PATH}: what `meshsync
        rescan|pause|resume DIR` sends, without starting a CLI process (whose
        RSS the harness would count as the tool's, under "meshsync")."""
        self.req("POST", f"/rest/{what}", body={"folder": os.path.realpath(folder)})

    def folder(self, st=None):
        st = st or self.status()
        want = os.path.realpath(self.path)
        for f in st["folders"]:
            if os.path.realpath(f["path"]) == want:
                return f
        raise RuntimeError(f"{self.name}: folder {self.path} not in status")

    def metrics_text(self):
        return self.req("GET", "/metrics", raw=True)

    def counter(self, name):
        for line in self.metrics_text().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return int(float(line.rsplit(None, 1)[1]))
        return None

    def healthy(self):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.api, timeout=1)
            c.request("GET", "/rest/health")
            r = c.getresponse()
            ok = r.status == 200 and r.read() == b"ok"
            c.close()
            return ok
        except OSError:
            return False

    def start(self):
        """Starts `meshsync run` with stdio to the log file; records the PID."""
        pre = []
        if ENV.get("BENCH_STRACE") == "1":  # network audit (README "Network audit")
            pre = ["strace", "-f", "-qq", "-e", "trace=connect,bind,sendto,sendmsg,recvfrom",
                   "-o", os.path.join(STATE, f"strace-{self.name}.txt")]
        logf = open(self.log, "ab")
        env = dict(ENV, RUST_LOG=LOG, MS_PIDS=os.path.join(STATE, "pids"), MS_LABEL=self.label)
        # The shell records its own PID, then becomes the daemon (exec): the
        # PID is in state/pids before any process named "meshsync" exists, so
        # the driver's sampler never sees the daemon unlabelled.
        p = subprocess.Popen(["/bin/sh", "-c", 'echo "$$ $MS_LABEL" >> "$MS_PIDS"; exec "$@"', "sh",
                              *pre, BIN, "--home", self.home, "run"],
                             stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                             start_new_session=True)
        logf.close()
        self.proc = p
        return p

    def pid(self):
        try:
            with open(os.path.join(STATE, "pids")) as f:
                for line in f:
                    pid, label = line.split()[:2]
                    if label == self.label:
                        return int(pid)
        except OSError:
            pass
        return None

    def alive(self):
        proc = getattr(self, "proc", None)
        if proc is not None:  # started by this process (its PID may not be in state/pids yet)
            return proc.poll() is None
        p = self.pid()
        return p is not None and not is_gone(p)


def nodes():
    a = Node("a", 0, ENV.get("BENCH_SRC"))
    if NPEERS <= 1:
        bs = [Node("b", 1, ENV.get("BENCH_DST"))]
    else:
        bs = [Node(f"b{i}", i, ENV.get("BENCH_DST") if i == 1 else os.path.join(STATE, f"peer-b{i}", "dst"))
              for i in range(1, NPEERS + 1)]
    return a, bs


def is_gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def deadline():
    return time.time() + float(ENV.get("BENCH_PHASE_TIMEOUT", "1200")) - 10


def expect():
    return {k: int(ENV[f"BENCH_EXPECT_{k.upper()}"]) for k in ("files", "dirs", "symlinks", "bytes")}


def walk_counts(root):
    """Files, dirs, symlinks under root as the harness's treesum counts them
    (verify_exclude patterns skipped); no stat calls, d_type only."""
    n = {"files": 0, "dirs": 0, "symlinks": 0, "other": 0}
    stack = [("", root)]
    while stack:
        rel, path = stack.pop()
        with os.scandir(path) as it:
            for e in it:
                r = f"{rel}/{e.name}" if rel else e.name
                if any(fnmatch.fnmatchcase(r, p) for p in EXCLUDE):
                    continue
                if e.is_symlink():
                    n["symlinks"] += 1
                elif e.is_dir(follow_symlinks=False):
                    n["dirs"] += 1
                    stack.append((r, e.path))
                elif e.is_file(follow_symlinks=False):
                    n["files"] += 1
                else:
                    n["other"] += 1
    return n


def tree_complete(node, ex):
    w = walk_counts(node.path)
    return w["files"] == ex["files"] and w["dirs"] == ex["dirs"] and w["symlinks"] == ex["symlinks"], w


def folder_done(f, ex):
    return (f["state"] == "idle" and f["need_files"] == 0 and f["need_bytes"] == 0
            and f["local_files"] == ex["files"] and f["local_bytes"] == ex["bytes"] and f["peers"] >= 1)


def bytes_in(node):
    try:
        return sum(p["bytes_in"] for p in node.status()["peers"])
    except Exception:  # noqa: BLE001  (not running yet)
        return 0


def peer_bytes(node, field):
    """{device_id: bytes} of node's peers."""
    try:
        return {p["device_id"]: p[field] for p in node.status()["peers"]}
    except Exception:  # noqa: BLE001
        return {}


def dump_debug(tag, a, bs):
    for n in [a] + bs:
        try:
            st = n.status()
            note(f"[{tag}] {n.name} status:", json.dumps({"folders": st["folders"], "peers": st["peers"]}))
        except Exception as e:  # noqa: BLE001
            note(f"[{tag}] {n.name} status failed: {e}")
        try:
            with open(n.log, "rb") as f:
                tail = f.read()[-3000:].decode("utf-8", "replace")
            note(f"[{tag}] {n.name} log tail:\n{tail}")
        except OSError:
            pass


class EventStream(threading.Thread):
    """Collects a node's /rest/events (server-sent events) from now on."""

    def __init__(self, node):
        super().__init__(daemon=True)
        self.node = node
        self.events = []  # (perf_counter, dict)
        self.ready = threading.Event()
        self.error = None

    def run(self):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.node.api, timeout=3600)
            c.request("GET", "/rest/events", headers={"X-API-Key": self.node.key(), "Accept": "text/event-stream"})
            r = c.getresponse()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}")
            self.ready.set()  # the daemon subscribed before it answered
            while True:
                line = r.readline()
                if not line:
                    return
                line = line.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("data:"):
                    try:
                        self.events.append((time.perf_counter(), json.loads(line[5:].strip())))
                    except ValueError:
                        pass
        except Exception as e:  # noqa: BLE001
            self.error = repr(e)
            self.ready.set()

    def synced(self, path):
        want = os.path.realpath(path)
        return [e for _, e in list(self.events)
                if e.get("type") == "folder-synced" and os.path.realpath(e.get("path", "")) == want]


# ------------------------------------------------------------------ phases

def version():
    try:
        v = subprocess.run([BIN, "--version"], capture_output=True, text=True).stdout.split()
        v = v[1] if len(v) > 1 else "?"
    except OSError:
        v = "?"
    extra = ENV.get("MESHSYNC_BUILD_INFO")
    return f"{v} ({extra})" if extra else v


def cmd_describe():
    a, bs = nodes()
    print(json.dumps({
        "name": "meshsync-daemon" + (f"-x{NPEERS}" if NPEERS > 1 else ""),
        "version": version(),
        "phases": ["scan", "initial", "update"],
        "rss_match": ["meshsync"],
        "verify_exclude": EXCLUDE,
        "data_ports": [n.listen for n in [a] + bs],
        "notes": (f"meshsync run: a shares SRC, {len(bs)} receiver(s) join"
                  + (" (b1=DST, others under state/, all peered with each other)" if NPEERS > 1 else " into DST")
                  + "; QUIC on loopback; b daemons start inside the timed initial phase; a paused after initial "
                    "(file watcher) and resumed+rescanned in update"),
    }))


def cmd_setup():
    import shutil
    a, bs = nodes()
    if not os.access(BIN, os.X_OK):
        raise SystemExit(f"no meshsync binary at {BIN} (set MESHSYNC_BIN)")
    for n in [a] + bs:
        shutil.rmtree(n.home, ignore_errors=True)
        n.cli("init", "--listen", f"127.0.0.1:{n.listen}", "--api", f"127.0.0.1:{n.api}", "--name", f"bench-{n.name}", "--offline")
    share = json.loads(a.cli("share", a.path, "--json"))
    key = share["read_write"]
    a.cli("pause", a.path)  # held until `scan` (no daemon runs yet: edits the config)
    for b in bs:
        os.makedirs(b.path, exist_ok=True)
        peers = ["--peer", f"127.0.0.1:{a.listen}"]
        for o in bs:
            if o is not b:
                peers += ["--peer", f"127.0.0.1:{o.listen}"]
        b.cli("join", key, b.path, *peers)
    for n in [a] + bs:  # the log proves what ran (secrets left out)
        with open(os.path.join(n.home, "config.toml"), "rb") as f:
            cfg = tomllib.load(f)
        cfg["device"].pop("api_key", None)
        for fo in cfg.get("folder", []):
            fo.pop("key", None)
        note(f"config {n.name}:", json.dumps(cfg))
    a.start()
    t_end = time.time() + 60
    while not a.healthy():
        if is_gone(a.proc.pid):
            dump_debug("setup", a, [])
            raise SystemExit("meshsync a exited during start-up")
        if time.time() > t_end:
            raise SystemExit("meshsync a API did not come up")
        time.sleep(0.05)
    f = a.folder()
    if f["state"] != "stopped":
        raise SystemExit(f"a's folder should be paused, is {f['state']}")
    metric("version", version())
    metric("peers", len(bs))
    metric("share_id", share.get("share_id"))


def cmd_scan():
    a, bs = nodes()
    ex = expect()
    t0 = time.perf_counter()
    a.command("resume", a.path)
    t_end = deadline()
    polls = 0
    while True:
        polls += 1
        f = a.folder()
        if f["state"] == "idle" and f["local_files"] == ex["files"] and f["local_bytes"] == ex["bytes"]:
            break
        if f["state"] == "error" or time.time() > t_end:
            dump_debug("scan", a, [])
            raise SystemExit(f"scan on a did not complete: {f}")
        time.sleep(POLL_S)
    t = time.perf_counter() - t0
    metric("time_s", round(t, 3))
    metric("scan_mib_per_s", round(ex["bytes"] / 2**20 / t, 1))
    metric("a_local_bytes", f["local_bytes"])
    metric("polls", polls)
    metric("peers", len(bs))


def wait_peers(a, bs, ex, t0, ready=lambda b: True, tag="sync", on_poll=lambda: None, stall_check=False):
    """Polls every b (10 Hz) until folder_done + tree walk; returns {name: s since t0}.
    stall_check: fail early when a b has the folder open with a peer but got
    nothing at all (need 0, no files, 0 bytes in) for STALL_S seconds:
    it never received the index (see the daemon bug notes in p2p results)."""
    done = {}
    walks = 0
    polls = 0
    last = {}
    stalled_since = {}
    t_end = deadline()
    while len(done) < len(bs):
        tp = time.perf_counter()
        polls += 1
        on_poll()
        for b in bs:
            if b.name in done:
                continue
            try:
                st = b.status()
                f = b.folder(st)
            except Exception as e:  # noqa: BLE001  (API not up yet)
                last[b.name] = repr(e)
                if not b.alive():
                    dump_debug(tag, a, bs)
                    raise SystemExit(f"meshsync {b.name} exited")
                continue
            last[b.name] = f
            if stall_check and ex["files"] > 0:
                # (not "idle": the daemon's own rescan loop flips an empty
                # folder between idle and scanning every ~0.5 s)
                empty = (f["peers"] >= 1 and f["need_files"] == 0 and f["local_files"] == 0
                         and sum(p["bytes_in"] for p in st["peers"]) == 0)
                if not empty:
                    stalled_since.pop(b.name, None)
                elif time.perf_counter() - stalled_since.setdefault(b.name, time.perf_counter()) > STALL_S:
                    dump_debug(tag, a, bs)
                    metric("stalled", b.name)
                    raise SystemExit(
                        f"{b.name} STALLED: folder open with {f['peers']} peer(s) but need 0, 0 files, "
                        f"0 bytes in for {STALL_S:.0f} s: it never got the index (t={time.perf_counter() - t0:.1f} s)")
            if folder_done(f, ex) and ready(b):
                walks += 1
                ok, w = tree_complete(b, ex)
                if ok:
                    done[b.name] = time.perf_counter() - t0
                else:
                    last[b.name] = dict(f, walk=w)
        if len(done) == len(bs):
            break
        if time.time() > t_end:
            dump_debug(tag, a, bs)
            raise SystemExit(f"timeout waiting for {tag}: {json.dumps(last)[:3000]}")
        time.sleep(max(0.0, POLL_S - (time.perf_counter() - tp)))
    return done, polls, walks


def extra_verify(a, bs):
    """b2..bN are outside the harness's verification: check them here."""
    if len(bs) < 2:
        return
    sys.path.insert(0, os.path.join(ENV["BENCH_HOME"], "lib"))
    import treesum
    t0 = time.perf_counter()
    ref = treesum.treesum(a.path, EXCLUDE)
    res = {}
    for b in bs[1:]:
        s = treesum.treesum(b.path, EXCLUDE)
        res[b.name] = s["content"] == ref["content"]
        if not res[b.name]:
            note(f"EXTRA VERIFY FAILED {b.name}: src {ref} dst {s}")
    metric("extra_verify_ok", all(res.values()))
    metric("extra_verify", res)
    metric("extra_verify_s", round(time.perf_counter() - t0, 2))


def report_bytes(a, bs, in0, a_out0):
    a_id = a.status()["device_id"]
    tot = 0
    from_a = 0
    for b in bs:
        cur = peer_bytes(b, "bytes_in")
        for dev, v in cur.items():
            d = v - in0.get(b.name, {}).get(dev, 0)
            tot += d
            if dev == a_id:
                from_a += d
    metric("ms_bytes_in", tot)
    if len(bs) > 1:
        metric("ms_bytes_in_from_a", from_a)
        metric("ms_bytes_in_from_peers", tot - from_a)
    a_out = sum(peer_bytes(a, "bytes_out").values())
    metric("ms_a_bytes_out", a_out - a_out0)


def cmd_initial():
    a, bs = nodes()
    ex = expect()
    a_out0 = sum(peer_bytes(a, "bytes_out").values())
    t0 = time.perf_counter()
    for b in bs:
        b.start()
    done, polls, walks = wait_peers(a, bs, ex, t0, tag="initial sync", stall_check=True)
    t = max(done.values())
    metric("time_s", round(t, 3))
    metric("mib_per_s", round(ex["bytes"] / 2**20 / t, 1))
    for name, v in sorted(done.items()):
        metric(f"time_{name}_s", round(v, 3))
    metric("polls", polls)
    metric("walks", walks)
    metric("peers", len(bs))
    report_bytes(a, bs, {}, a_out0)
    metric("peer_links", {n.name: len(n.status()["peers"]) for n in [a] + bs})
    for b in bs:
        f = b.folder()
        if f.get("error"):
            metric(f"{b.name}_error", f["error"])
    # Untimed: hold a's folder, so that its file watcher does not sync the
    # driver's mutation before `update` starts (and wait until it is held).
    a.command("pause", a.path)
    t_end = time.time() + 120
    while a.folder()["state"] != "stopped":
        if time.time() > t_end:
            raise SystemExit("a's folder did not stop")
        time.sleep(POLL_S)
    extra_verify(a, bs)


def cmd_update():
    a, bs = nodes()
    ex = expect()
    streams = {b.name: EventStream(b) for b in bs}
    for s in streams.values():
        s.start()
    for s in streams.values():
        s.ready.wait(5)
    sse_ok = all(s.ready.is_set() and s.error is None for s in streams.values())
    if not sse_ok:
        note("event streams failed, falling back to a 1 s settle time:", {k: s.error for k, s in streams.items()})
    scans0 = a.counter("meshsync_scans_total")
    in0 = {b.name: peer_bytes(b, "bytes_in") for b in bs}
    a_out0 = sum(peer_bytes(a, "bytes_out").values())
    t0 = time.perf_counter()
    a.command("rescan", a.path)
    a.command("resume", a.path)
    t_cmd = time.perf_counter() - t0
    t_a = [None]

    def check_a():  # a's index changed: it finished a scan since the trigger
        if t_a[0] is None and a.counter("meshsync_scans_total") > scans0:
            t_a[0] = time.perf_counter() - t0

    def ready(b):
        if t_a[0] is None:
            return False
        if sse_ok:
            return len(streams[b.name].synced(b.path)) > 0
        return time.perf_counter() - t0 - t_a[0] > 1.0

    done, polls, walks = wait_peers(a, bs, ex, t0, ready=ready, tag="re-sync", on_poll=check_a)
    t = max(done.values())
    metric("time_s", round(t, 3))
    for name, v in sorted(done.items()):
        metric(f"time_{name}_s", round(v, 3))
    metric("a_scan_done_s", round(t_a[0], 3) if t_a[0] is not None else None)
    metric("rescan_cmd_s", round(t_cmd, 3))
    metric("a_scans", a.counter("meshsync_scans_total") - scans0)
    metric("polls", polls)
    metric("walks", walks)
    metric("peers", len(bs))
    metric("b_sync_rounds", {k: len(s.synced(nodes_by_name(bs)[k].path)) for k, s in streams.items()})
    report_bytes(a, bs, in0, a_out0)
    metric("peer_links", {n.name: len(n.status()["peers"]) for n in [a] + bs})
    for b in bs:
        f = b.folder()
        if f.get("error"):
            metric(f"{b.name}_error", f["error"])
    extra_verify(a, bs)


def nodes_by_name(bs):
    return {b.name: b for b in bs}


def cmd_teardown():
    import shutil
    a, bs = nodes()
    pids = []
    try:
        with open(os.path.join(STATE, "pids")) as f:
            pids = [int(line.split()[0]) for line in f if line.strip()]
    except OSError:
        pass
    for p in pids:  # by PID only
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    t_end = time.time() + 10
    while time.time() < t_end and any(not is_gone(p) for p in pids):
        time.sleep(0.1)
    for p in pids:
        if not is_gone(p):
            note(f"killing meshsync pid {p}")
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if not KEEP:
        for n in [a] + bs:
            try:
                os.remove(os.path.join(n.home, "index.redb"))
            except OSError:
                pass
        # The extra peers' trees (N x the dataset) live in state/, which the
        # driver keeps: delete them, within a time budget (the driver allows
        # teardown 60 s; deleting 60,000 files on a busy 2-core box can take
        # longer).  Whatever is left is in state/trash-*, which bench/p2p.sh
        # sweeps after each run.
        t_end = time.time() + float(ENV.get("MESHSYNC_TEARDOWN_RM_S", "35"))
        trash = []
        for b in bs[1:]:
            d = os.path.dirname(b.path)
            if os.path.isdir(d):
                t = os.path.join(STATE, "trash-" + os.path.basename(d))
                os.rename(d, t)
                trash.append(t)
        for t in trash:
            for root, dirs, files in os.walk(t, topdown=False):
                if time.time() > t_end:
                    note(f"teardown: left {t} (time budget); bench/p2p.sh removes it")
                    return
                for f in files:
                    try:
                        os.unlink(os.path.join(root, f))
                    except OSError:
                        pass
                try:
                    os.rmdir(root)
                except OSError:
                    pass


if __name__ == "__main__":
    cmds = {"describe": cmd_describe, "setup": cmd_setup, "scan": cmd_scan, "initial": cmd_initial,
            "update": cmd_update, "teardown": cmd_teardown}
    if len(sys.argv) != 2 or sys.argv[1] not in cmds:
        print(f"usage: {sys.argv[0]} {{{'|'.join(cmds)}}}", file=sys.stderr)
        sys.exit(2)
    cmds[sys.argv[1]]()
