#!/usr/bin/env python3
"""1 source and N empty peers, outside the shared harness (issue 4, swarm pulls).

    bench/swarm.py SRC [N] [--runs R]        e.g. bench/swarm.py bench/_data/small 4

Release daemons on 127.0.0.1 (`--offline`: no discovery): `a` shares a copy
of SRC, peers b1..bN join it, each listing a and every other peer as static
peers. Once a is idle with every file, the page cache is dropped (root) and
all peers are started together; the run ends when the last peer is idle with
every byte. Prints, per run: the wall time (first start to last peer done),
each peer's time, the chunk bytes each peer received from whom (the peers'
`status` counters), how much a uploaded as a multiple of the data, the CPU
seconds and peak RSS of every process, and the load average before and
after. With --runs R, runs N peers and 1 peer alternately, R times each,
and prints the ratio of the median wall times. BIN=... for another binary,
WORK=... for another directory (default /tmp/meshsync-swarm), PORT=... for
another port base (default 24000). PERF_A="perf record -g -o a.perf" (or
PERF_B1, ...) runs a node under a profiler (its CPU figure is then the
profiler's).
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import tomllib
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("BIN", os.path.join(HERE, "..", "target", "release", "meshsync"))
WORK = os.environ.get("WORK", "/tmp/meshsync-swarm")
PORT = int(os.environ.get("PORT", "24000"))
CLK = os.sysconf("SC_CLK_TCK")


class Node:
    def __init__(self, name, i):
        self.name, self.i = name, i
        self.home = os.path.join(WORK, name)
        self.dir = os.path.join(WORK, f"{name}-data")
        self.listen = f"127.0.0.1:{PORT + 1 + i}"
        self.api = f"127.0.0.1:{PORT + 101 + i}"
        self.proc = None
        self.key = None
        self.device = None

    def cli(self, *args):
        out = subprocess.run([BIN, "--home", self.home, *args], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{self.name}: meshsync {' '.join(args)}: {out.stderr}")
        return out.stdout

    def init(self):
        self.cli("init", "--listen", self.listen, "--api", self.api, "--name", self.name, "--offline")
        with open(os.path.join(self.home, "config.toml"), "rb") as f:
            self.key = tomllib.load(f)["device"]["api_key"]

    def start(self):
        log = open(os.path.join(WORK, f"{self.name}.log"), "w")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn,meshsync=info"))
        prefix = os.environ.get(f"PERF_{self.name.upper()}", "").split()
        self.proc = subprocess.Popen(prefix + [BIN, "--home", self.home, "run"], stdout=log, stderr=log, env=env)

    def status(self):
        req = urllib.request.Request(f"http://{self.api}/rest/status", headers={"X-API-Key": self.key})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)

    def try_status(self):
        try:
            return self.status()
        except OSError:
            return None

    def cpu_s(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK

    def hwm_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def tree_size(root):
    n = b = 0
    for d, dirs, files in os.walk(root):
        if d == root and ".meshsync" in dirs:
            dirs.remove(".meshsync")
        for name in files:
            p = os.path.join(d, name)
            if not os.path.islink(p):
                n += 1
                b += os.path.getsize(p)
    return n, b


def done(st, files, size):
    f = st["folders"][0]
    return f["state"] == "idle" and f["need_files"] == 0 and f["local_files"] == files and f["local_bytes"] == size


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def run(src, npeers):
    if os.path.exists(WORK):
        shutil.rmtree(WORK)
    os.makedirs(WORK)
    a = Node("a", 0)
    peers = [Node(f"b{i}", i) for i in range(1, npeers + 1)]
    subprocess.run(["cp", "-a", src, a.dir], check=True)
    files, size = tree_size(a.dir)
    for n in [a] + peers:
        n.init()
    key = json.loads(a.cli("share", a.dir, "--json"))["read_write"]
    for p in peers:
        others = [o for o in [a] + peers if o is not p]
        args = ["join", key, p.dir]
        for o in others:
            args += ["--peer", o.listen]
        p.cli(*args)
    try:
        a.start()
        while not ((st := a.try_status()) and done(st, files, size)):
            time.sleep(0.2)
        a.device = st["device_id"]
        subprocess.run(["sync"], check=True)
        if os.geteuid() == 0:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3")
        load0 = loadavg()
        cpu_a0 = a.cpu_s()
        t0 = time.monotonic()
        for p in peers:
            p.start()
        finish = {}
        while len(finish) < len(peers):
            for p in peers:
                if p.name in finish:
                    continue
                st = p.try_status()
                if st and done(st, files, size):
                    finish[p.name] = time.monotonic() - t0
                    p.device = st["device_id"]
            if time.monotonic() - t0 > 600:
                raise SystemExit(f"timed out; done: {finish}")
            time.sleep(0.05)
        wall = max(finish.values())
        names = {n.device: n.name for n in [a] + peers if n.device}
        print(f"--- {npeers} peer(s), {files} files, {size / 2**20:.1f} MiB: wall {wall:.2f} s "
              f"(load {load0} before, {loadavg()} after)")
        for p in peers:
            got = {names.get(x["device_id"], x["device_id"][:7]): x["bytes_in"] for x in p.status()["peers"]}
            total = sum(got.values())
            parts = ", ".join(f"{k} {v / 2**20:.1f}" for k, v in sorted(got.items()) if v)
            print(f"  {p.name}: done at {finish[p.name]:.2f} s, received {total / 2**20:.1f} MiB ({parts}); "
                  f"cpu {p.cpu_s():.2f} s, peak RSS {p.hwm_mib():.0f} MiB")
        a_out = sum(x["bytes_out"] for x in a.status()["peers"])
        print(f"  a: uploaded {a_out / 2**20:.1f} MiB = {a_out / size:.2f}x the data; "
              f"cpu {a.cpu_s() - cpu_a0:.2f} s during the pull, peak RSS {a.hwm_mib():.0f} MiB")
        return wall, a_out / size
    finally:
        for n in [a] + peers:
            n.stop()


def main():
    args = sys.argv[1:]
    runs = 1
    if "--runs" in args:
        i = args.index("--runs")
        runs = int(args[i + 1])
        del args[i : i + 2]
    if not args:
        raise SystemExit(__doc__)
    src = args[0]
    npeers = int(args[1]) if len(args) > 1 else 4
    if runs == 1 and "--runs" not in sys.argv:
        run(src, npeers)
        return
    walls = {npeers: [], 1: []}
    for _ in range(runs):
        for n in (npeers, 1):
            walls[n].append(run(src, n)[0])
    m = {n: statistics.median(w) for n, w in walls.items()}
    print(f"median wall: {npeers} peers {m[npeers]:.2f} s, 1 peer {m[1]:.2f} s, "
          f"ratio {m[npeers] / m[1]:.2f} ({walls})")


if __name__ == "__main__":
    main()
