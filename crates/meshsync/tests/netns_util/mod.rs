//! A multi-host network on one machine for the network-namespace tests
//! (`tests/netns.rs`): Linux network namespaces joined by veth pairs and
//! bridges, two home routers that NAT with iptables, and real `meshsync`
//! daemons ([`NsDevice`]) running inside them.
//!
//! ```text
//!                     <p>-inet  ("the internet", no route anywhere else)
//!               bridge br0: 10.200.0.100 (SERVER), 10.200.0.254 (gateway)
//!                 port r1 |                          | port r2
//!                         | veth                     | veth
//!        wan 10.200.0.1   |                          |   wan 10.200.0.2
//!   <p>-r1  NAT: MASQUERADE out of wan;        <p>-r2  (the same)
//!           new connections from wan dropped
//!        lan bridge 192.168.1.1/24                 lan bridge 192.168.2.1/24
//!            | port a1      | port a2                  | port b1
//!   eth0 192.168.1.10   eth0 192.168.1.11         eth0 192.168.2.10
//!      <p>-a1              <p>-a2                     <p>-b1
//! ```
//!
//! * Every interface is created directly inside its namespace (`ip -n NS
//!   link add … peer … netns OTHER`), never in the host's namespace, and no
//!   namespace has a link to the host's interfaces: packets can only go
//!   between the namespaces a [`Topology`] made. The routers' default route
//!   points at 10.200.0.254 in `<p>-inet`, which does not forward, so
//!   anything addressed outside these ranges (a public DHT node, a DNS
//!   server) is dropped there.
//! * a1 and a2 share one layer-2 segment (the bridge `lan` in r1, multicast
//!   snooping off), each host has a route for 224.0.0.0/4 on `eth0`, so
//!   LAN multicast (SSDP, meshsync's LAN announcements) flows between them.
//!   IPv6 link-local addresses come with every veth (DAD is off, so they
//!   are usable at once).
//! * The routers are real home NATs: `MASQUERADE` out of `wan` (Linux keeps
//!   the source port when it can, so mappings are endpoint-independent and
//!   UDP hole punching works), a `FORWARD` policy of `DROP` that lets in
//!   from `wan` only established/related traffic and what a port mapping
//!   forwarded (conntrack state `DNAT`), and no new connections from `wan`
//!   to the router itself. [`Topology::block_hole_punching`] adds rules
//!   that drop every packet between the two routers' public addresses, so
//!   a1 and b1 can only talk through 10.200.0.100.
//! * The server address 10.200.0.100 is on `<p>-inet`'s bridge: a tracker,
//!   relay, DHT node or "public" device runs there ([`NsDevice::new`] with
//!   host [`INET`], or [`Topology::spawn`] for any other program).
//!
//! Using it:
//!
//! ```ignore
//! let Some(t) = Topology::new("mytest") else { return }; // skipped
//! // A meshsync device on the public address, and two behind the NATs.
//! let flags = no_discovery_flags(); // or only some of --no-lan, --no-dht, …
//! let mut p = NsDevice::new(&t, &dir, "P", INET, v4(SERVER, 22000), &flags);
//! let mut a = NsDevice::new(&t, &dir, "A", A1, v4(Ipv4Addr::UNSPECIFIED, 22000), &flags);
//! // Any other program (a tracker, a relay, a DHT node) in a namespace:
//! let tracker = t.spawn_meshsync(INET, "tracker", &["tracker", "--listen", "10.200.0.100:7000"]);
//! t.block_hole_punching(); // a1/a2 and b1 only meet through INET
//! ```
//!
//! `<p>` is `msn-<tag>-<pid>`: the test's tag and this process's id, so
//! tests run in parallel and two `cargo test` runs at once do not collide.
//! Dropping the [`Topology`] (panics included) kills every process left in
//! its namespaces and deletes them. Programs started through it get
//! SIGKILL if the test process dies (`PR_SET_PDEATHSIG`), and namespaces
//! whose process is gone (a run killed with Ctrl-C or SIGKILL) are swept
//! away by the next [`Topology::new`].
//!
//! How a test talks to a namespace: programs run through `ip netns exec NS
//! …` ([`Topology::exec`], [`Topology::spawn`], [`NsDevice`]); the test's
//! own sockets are made on a fresh thread that first joins the namespace
//! with `setns(2)` ([`Topology::in_ns`], [`Topology::udp_socket`]) — a
//! socket stays in the namespace it was made in, whichever thread uses it
//! later. That is how the reachability probes ([`UdpEcho`], [`udp_ask`]) and
//! the daemons' REST API calls work without helper programs (no `ping`,
//! `socat` or Python needed).
//!
//! Requirements: root (or CAP_NET_ADMIN and CAP_SYS_ADMIN), `ip` (iproute2)
//! and `iptables` (nft or legacy); the UPnP test also needs `miniupnpd`
//! (nftables backend) and `nft`. `.ci/run` installs them. Without them, or
//! when `ip netns add` is refused, a test prints why and passes — unless
//! `MESHSYNC_NETNS_REQUIRED=1` (set by `.ci/run`), which makes that a
//! failure. `MESHSYNC_NETNS_KEEP=1` leaves the namespaces in place after a
//! test for inspection (`ip netns list`, `ip netns exec msn-… bash`); the
//! next run removes them.

// Not every test uses every helper.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon_util::{CmdOutput, Keys};
use crate::util::Dir;

/// The internet namespace (bridge with [`SERVER`] and the routers' WANs).
pub const INET: &str = "inet";
/// Home router 1 (NAT for [`A1`] and [`A2`]).
pub const R1: &str = "r1";
/// Home router 2 (NAT for [`B1`]).
pub const R2: &str = "r2";
/// First host on LAN 1.
pub const A1: &str = "a1";
/// Second host on LAN 1 (same L2 segment as [`A1`]).
pub const A2: &str = "a2";
/// The host on LAN 2.
pub const B1: &str = "b1";

/// The public "server" address in [`INET`] (trackers, relays, DHT nodes).
pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 100);
/// The internet's gateway address (in [`INET`]; it does not forward).
pub const INET_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 254);
/// Router 1's public (WAN) address: what the internet sees of LAN 1.
pub const R1_WAN: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// Router 2's public (WAN) address: what the internet sees of LAN 2.
pub const R2_WAN: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
/// Router 1's LAN address (the hosts' gateway and the UPnP IGD).
pub const R1_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
/// Router 2's LAN address.
pub const R2_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 2, 1);
/// [`A1`]'s private address.
pub const A1_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
/// [`A2`]'s private address.
pub const A2_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 11);
/// [`B1`]'s private address.
pub const B1_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 2, 10);

/// How long a positive condition may take before a test fails (slow CI).
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Between two polls.
const POLL: Duration = Duration::from_millis(100);

/// Every namespace name starts with this (and the stale sweep only touches
/// names that do).
const NS_PREFIX: &str = "msn-";

/// The roles of a topology, in creation order.
const HOSTS: [&str; 6] = [INET, R1, R2, A1, A2, B1];

/// `ip netns add` is racy the very first time (it sets up the shared mount
/// of /run/netns), so this process adds namespaces one at a time.
static NETNS_ADD: Mutex<()> = Mutex::new(());

/// Whether a missing capability must fail the test instead of skipping it.
fn required() -> bool {
    std::env::var("MESHSYNC_NETNS_REQUIRED").is_ok_and(|v| v == "1")
}

/// Skips (prints why, returns `None`) or, with `MESHSYNC_NETNS_REQUIRED=1`,
/// fails.
fn skip<T>(why: &str) -> Option<T> {
    assert!(
        !required(),
        "MESHSYNC_NETNS_REQUIRED=1 but the network-namespace test cannot run: {why}"
    );
    // Straight to stderr, past the test harness's capture, so a skip shows
    // in a normal `cargo test` run.
    let _ = writeln!(std::io::stderr(), "SKIPPED (network-namespace test): {why}");
    None
}

/// Where `program` is: on `PATH`, or in /usr/sbin or /sbin (which a
/// non-login shell's `PATH` may lack). Tools run by their full path.
pub fn tool(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// Whether `program` is installed (see [`tool`]).
pub fn have_tool(program: &str) -> bool {
    tool(program).is_some()
}

/// `program` by its full path (see [`tool`]), or its bare name if not found
/// (so the error names it).
fn tool_path(program: &str) -> String {
    tool(program).map_or_else(|| program.to_string(), |p| p.display().to_string())
}

/// An `ip` command (iproute2).
fn ip_cmd() -> Command {
    Command::new(tool_path("ip"))
}

/// `Ok` if every tool is there, else which are missing and how to get them.
pub fn check_tools(tools: &[&str]) -> Result<(), String> {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have_tool(t)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing {} (apt-get install -y iproute2 iptables miniupnpd; .ci/run does)",
            missing.join(", ")
        ))
    }
}

/// Runs `cmd` to completion: its stdout, or an error with its stderr.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

/// `ip ARGS`, panicking on failure.
#[track_caller]
fn ip(args: &[&str]) {
    if let Err(e) = run(ip_cmd().args(args)) {
        panic!("{e}");
    }
}

/// Puts the calling thread into network namespace `ns` (`setns(2)`).
fn enter(ns: &str) -> std::io::Result<()> {
    let f = File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: setns(2) on a file descriptor we own for the duration of the
    // call; it changes only this thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether process `pid` exists.
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Kills every process in namespace `ns` (SIGKILL) and deletes it.
fn destroy(ns: &str) {
    if let Ok(pids) = run(ip_cmd().args(["netns", "pids", ns])) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill(2) on a process inside a namespace this harness
            // made; no memory is involved.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    let _ = run(ip_cmd().args(["netns", "del", ns]));
}

/// Deletes namespaces left by harness runs whose process is gone.
fn sweep_stale() {
    let Ok(rd) = fs::read_dir("/run/netns") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // msn-<tag>-<pid>-<role>
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('-').collect();
        if let [_, pid, _] = parts[..]
            && let Ok(pid) = pid.parse::<u32>()
            && !alive(pid)
        {
            destroy(&name);
        }
    }
}

/// The `iptables-restore` rules of a home router: NAT out of `wan`, only
/// established/related (and port-mapped) traffic in from it. New packets
/// from `wan` to the router itself are dropped too, as home routers do;
/// that also keeps a probe that arrives before the peer's own packet from
/// leaving a conntrack entry that would make the NAT pick another port for
/// the peer (which would break hole punching).
const ROUTER_RULES: &str = "\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -o wan -j MASQUERADE
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A INPUT -i wan -j DROP
-A FORWARD -i lan -o lan -j ACCEPT
-A FORWARD -i lan -o wan -j ACCEPT
-A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED,DNAT -j ACCEPT
COMMIT
";

/// A built topology (see the module docs). Dropping it kills every process
/// still inside its namespaces and deletes them, panics included.
pub struct Topology {
    prefix: String,
    made: Vec<String>,
    iptables: String,
    work: tempfile::TempDir,
    next_api_port: AtomicU16,
}

impl Topology {
    /// Builds the topology for a test tagged `tag` (ASCII letters and
    /// digits, no `-`). `None` (after printing why) when this machine
    /// cannot: not root, `ip`/`iptables` missing, `ip netns add` refused.
    pub fn new(tag: &str) -> Option<Topology> {
        assert!(
            !tag.is_empty() && tag.chars().all(|c| c.is_ascii_alphanumeric()),
            "a topology tag is letters and digits: {tag:?}"
        );
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return skip("not root (network namespaces need CAP_NET_ADMIN and CAP_SYS_ADMIN)");
        }
        if let Err(e) = check_tools(&["ip"]) {
            return skip(&e);
        }
        let candidates: Vec<String> = ["iptables", "iptables-legacy"]
            .into_iter()
            .filter(|t| have_tool(t) && have_tool(&format!("{t}-restore")))
            .map(tool_path)
            .collect();
        if candidates.is_empty() {
            return skip("missing iptables (apt-get install -y iptables; .ci/run does)");
        }
        sweep_stale();
        let mut t = Topology {
            prefix: format!("{NS_PREFIX}{tag}-{}", std::process::id()),
            made: Vec::new(),
            iptables: candidates[0].clone(),
            work: tempfile::Builder::new()
                .prefix(&format!("meshsync-netns-{tag}-"))
                .tempdir()
                .expect("creating the topology's work directory"),
            next_api_port: AtomicU16::new(8384),
        };
        {
            let _serial = NETNS_ADD.lock().unwrap_or_else(|e| e.into_inner());
            for (i, host) in HOSTS.iter().enumerate() {
                let ns = t.ns(host);
                if let Err(e) = run(ip_cmd().args(["netns", "add", &ns])) {
                    // A refused add may leave its mount point behind.
                    destroy(&ns);
                    if i == 0 {
                        return skip(&format!("`ip netns add` is refused here: {e}"));
                    }
                    panic!("{e}");
                }
                t.made.push(ns);
            }
        }
        // The first iptables that can use the NAT table in a namespace here
        // (iptables-nft needs nf_tables in the kernel; legacy, ip_tables).
        let Some(iptables) = candidates
            .into_iter()
            .find(|ipt| t.exec(INET, &[ipt, "-w", "-t", "nat", "-L", "-n"]).code == 0)
        else {
            return skip("no iptables works in a network namespace here (kernel NAT support?)");
        };
        t.iptables = iptables;
        t.wire();
        Some(t)
    }

    /// The namespace name of `host` ([`INET`], [`R1`], [`A1`], …).
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// A directory for this topology's files (configs, logs), removed with
    /// it.
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// The `iptables` command in use (the full path of `iptables`, or of
    /// `iptables-legacy`).
    pub fn iptables(&self) -> &str {
        &self.iptables
    }

    /// Links, addresses, routes, sysctls and NAT rules.
    fn wire(&self) {
        let inet = self.ns(INET);
        for host in HOSTS {
            let ns = self.ns(host);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            // Link-local IPv6 usable at once; routers forward IPv4.
            let mut sysctls = vec![
                ("net/ipv6/conf/all/accept_dad", "0"),
                ("net/ipv6/conf/default/accept_dad", "0"),
            ];
            if host == R1 || host == R2 {
                sysctls.push(("net/ipv4/ip_forward", "1"));
            }
            self.in_ns(host, || {
                for (key, value) in &sysctls {
                    let p = format!("/proc/sys/{key}");
                    fs::write(&p, value).unwrap_or_else(|e| panic!("{ns}: writing {p}: {e}"));
                }
            });
        }

        // The internet: one bridge, the server and gateway addresses on it.
        ip(&["-n", &inet, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &inet,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&[
            "-n",
            &inet,
            "addr",
            "add",
            &format!("{SERVER}/24"),
            "dev",
            "br0",
        ]);
        ip(&[
            "-n",
            &inet,
            "addr",
            "add",
            &format!("{INET_GATEWAY}/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &inet, "link", "set", "br0", "up"]);

        // Routers: a WAN veth into the internet's bridge, a LAN bridge.
        for (router, wan, lan) in [(R1, R1_WAN, R1_LAN), (R2, R2_WAN, R2_LAN)] {
            let r = self.ns(router);
            ip(&[
                "-n", &r, "link", "add", "wan", "type", "veth", "peer", "name", router, "netns",
                &inet,
            ]);
            ip(&["-n", &inet, "link", "set", router, "master", "br0", "up"]);
            ip(&["-n", &r, "addr", "add", &format!("{wan}/24"), "dev", "wan"]);
            ip(&["-n", &r, "link", "set", "wan", "up"]);
            ip(&[
                "-n",
                &r,
                "route",
                "add",
                "default",
                "via",
                &INET_GATEWAY.to_string(),
            ]);
            ip(&["-n", &r, "link", "add", "lan", "type", "bridge"]);
            ip(&[
                "-n",
                &r,
                "link",
                "set",
                "lan",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ]);
            ip(&["-n", &r, "addr", "add", &format!("{lan}/24"), "dev", "lan"]);
            ip(&["-n", &r, "link", "set", "lan", "up"]);
            self.iptables_restore(router, ROUTER_RULES);
        }

        // Hosts: eth0 into their router's LAN bridge.
        for (host, router, addr, gw) in [
            (A1, R1, A1_IP, R1_LAN),
            (A2, R1, A2_IP, R1_LAN),
            (B1, R2, B1_IP, R2_LAN),
        ] {
            let h = self.ns(host);
            let r = self.ns(router);
            ip(&[
                "-n", &h, "link", "add", "eth0", "type", "veth", "peer", "name", host, "netns", &r,
            ]);
            ip(&["-n", &r, "link", "set", host, "master", "lan", "up"]);
            ip(&[
                "-n",
                &h,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &h, "link", "set", "eth0", "multicast", "on", "up"]);
            ip(&["-n", &h, "route", "add", "default", "via", &gw.to_string()]);
            ip(&["-n", &h, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
        }
    }

    /// Loads `rules` with `iptables-restore` in `host`, panicking on failure.
    #[track_caller]
    pub fn iptables_restore(&self, host: &str, rules: &str) {
        let mut child = ip_cmd()
            .args([
                "netns",
                "exec",
                &self.ns(host),
                &format!("{}-restore", self.iptables),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting iptables-restore");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(rules.as_bytes())
            .expect("writing the rules");
        let out = child.wait_with_output().expect("iptables-restore");
        assert!(
            out.status.success(),
            "{}-restore in {host} failed: {}",
            self.iptables,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Drops every packet between the two routers' public addresses (in
    /// both routers, ahead of the NAT rules), so a1/a2 and b1 cannot reach
    /// each other directly or by hole punching; both still reach
    /// [`SERVER`] and anything else in [`INET`].
    pub fn block_hole_punching(&self) {
        for (router, other) in [(R1, R2_WAN), (R2, R1_WAN)] {
            let other = other.to_string();
            for dir in ["-d", "-s"] {
                self.exec(
                    router,
                    &[
                        &self.iptables,
                        "-w",
                        "-I",
                        "FORWARD",
                        "1",
                        dir,
                        &other,
                        "-j",
                        "DROP",
                    ],
                )
                .ok();
            }
            // The router itself (relays or UPnP-mapped ports aside) too.
            self.exec(
                router,
                &[
                    &self.iptables,
                    "-w",
                    "-I",
                    "INPUT",
                    "1",
                    "-s",
                    &other,
                    "-j",
                    "DROP",
                ],
            )
            .ok();
            self.exec(
                router,
                &[
                    &self.iptables,
                    "-w",
                    "-I",
                    "OUTPUT",
                    "1",
                    "-d",
                    &other,
                    "-j",
                    "DROP",
                ],
            )
            .ok();
        }
    }

    /// `ip netns exec NS PROGRAM` as a command to add arguments to. The
    /// program gets SIGKILL when the thread that started it ends (so a test
    /// interrupted with Ctrl-C leaves no daemon behind): start long-lived
    /// programs from the test's own thread.
    pub fn command(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = ip_cmd();
        c.args(["netns", "exec", &self.ns(host)])
            .arg(program)
            .stdin(Stdio::null());
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of
        // the parent; `ip netns exec` then execs the program, which keeps
        // the setting.
        unsafe {
            c.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        c
    }

    /// Runs `args` (program first) in `host` to completion.
    pub fn exec(&self, host: &str, args: &[&str]) -> CmdOutput {
        let (program, rest) = args.split_first().expect("a program to run");
        let out = self
            .command(host, program)
            .args(rest)
            .output()
            .unwrap_or_else(|e| panic!("running {args:?} in {host}: {e}"));
        CmdOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts `args` (program first) in `host`, its stdout and stderr going
    /// to `<work dir>/<name>.log`; killed when the [`NsChild`] is dropped.
    pub fn spawn(&self, host: &str, name: &str, args: &[&str]) -> NsChild {
        let (program, rest) = args.split_first().expect("a program to run");
        let mut cmd = self.command(host, program);
        cmd.args(rest);
        self.spawn_command(name, cmd)
    }

    /// Starts the `meshsync` binary under test with `args` in `host` (a
    /// tracker, a relay, a DHT node…), its output going to
    /// `<work dir>/<name>.log`, with `RUST_LOG` from `$MESHSYNC_TEST_LOG`
    /// (default `warn,meshsync=info`); killed when the [`NsChild`] is
    /// dropped. For devices with a state directory use [`NsDevice`].
    pub fn spawn_meshsync(&self, host: &str, name: &str, args: &[&str]) -> NsChild {
        let mut cmd = self.command(host, env!("CARGO_BIN_EXE_meshsync"));
        cmd.args(args).env_remove("MESHSYNC_HOME").env(
            "RUST_LOG",
            std::env::var("MESHSYNC_TEST_LOG").unwrap_or_else(|_| "warn,meshsync=info".into()),
        );
        self.spawn_command(name, cmd)
    }

    /// Starts `cmd` (from [`Topology::command`]) with its output going to
    /// `<work dir>/<name>.log`.
    pub fn spawn_command(&self, name: &str, mut cmd: Command) -> NsChild {
        let log = self.work.path().join(format!("{name}.log"));
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("opening the log");
        let child = cmd
            .stdout(f.try_clone().expect("dup log"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        NsChild {
            name: name.into(),
            child,
            log,
        }
    }

    /// Runs `f` on a fresh thread inside `host`'s network namespace: every
    /// socket it makes belongs to that namespace (and keeps doing so when
    /// used from another thread afterwards).
    pub fn in_ns<T: Send>(&self, host: &str, f: impl FnOnce() -> T + Send) -> T {
        let ns = self.ns(host);
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&ns).unwrap_or_else(|e| panic!("entering namespace {ns}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// A UDP socket bound to `bind` inside `host`.
    pub fn udp_socket(&self, host: &str, bind: SocketAddr) -> UdpSocket {
        self.in_ns(host, || UdpSocket::bind(bind))
            .unwrap_or_else(|e| panic!("binding UDP {bind} in {host}: {e}"))
    }

    /// A UDP echo server at `bind` inside `host`: answers each datagram
    /// with `seen IP:PORT` (the sender's address as it arrived). With
    /// `group`, it also joins that IPv4 multicast group.
    pub fn udp_echo(&self, host: &str, bind: SocketAddr, group: Option<Ipv4Addr>) -> UdpEcho {
        let sock = self.udp_socket(host, bind);
        if let Some(g) = group {
            sock.join_multicast_v4(&g, &Ipv4Addr::UNSPECIFIED)
                .unwrap_or_else(|e| panic!("joining {g} in {host}: {e}"));
        }
        UdpEcho::serve(sock)
    }

    /// A loopback API address unique in this topology (for a device's
    /// `--api`; unique so that several devices can share a namespace).
    pub fn next_api(&self) -> SocketAddr {
        let port = self.next_api_port.fetch_add(1, Ordering::Relaxed);
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    /// Starts miniupnpd (nftables backend) in router r1 as a home router's
    /// UPnP IGD and NAT-PMP server: external interface `wan`, listening on
    /// the LAN bridge (SSDP at 239.255.255.250:1900, HTTP at
    /// `R1_LAN:5000`), secure mode, mappings allowed for 192.168.1.0/24 on
    /// ports 1024-65535 only. `None` (after printing why) when miniupnpd or
    /// nft is missing or miniupnpd has another backend.
    ///
    /// What it can do here: r1's WAN address is private (10.200.0.1), so
    /// miniupnpd answers SSDP, serves its description and control URLs,
    /// but reports an empty external address and refuses port mappings
    /// (UPnP error 501) — see `tests/netns.rs`.
    pub fn start_miniupnpd(&self) -> Option<NsChild> {
        if let Err(e) = check_tools(&["miniupnpd", "nft"]) {
            return skip(&e);
        }
        let (miniupnpd, nft) = (tool_path("miniupnpd"), tool_path("nft"));
        let version = run(Command::new(&miniupnpd).arg("--version")).unwrap_or_else(|e| e);
        if !version.contains("nftables") {
            return skip(&format!("miniupnpd is not the nftables build: {version}"));
        }
        // The chains miniupnpd's nftables backend fills (its default names;
        // what /etc/miniupnpd/nft_init.sh makes, without its shared
        // /tmp/miniupnpd.nft).
        let dir = self.work.path();
        let rules = dir.join("miniupnpd.nft");
        fs::write(
            &rules,
            "table inet filter {\n\
             \tchain forward {\n\t\ttype filter hook forward priority 0; policy accept;\n\t\tjump miniupnpd\n\t}\n\
             \tchain miniupnpd {\n\t}\n\
             \tchain prerouting {\n\t\ttype nat hook prerouting priority -100; policy accept;\n\t\tjump prerouting_miniupnpd\n\t}\n\
             \tchain postrouting {\n\t\ttype nat hook postrouting priority 100; policy accept;\n\t\tjump postrouting_miniupnpd\n\t}\n\
             \tchain prerouting_miniupnpd {\n\t}\n\
             \tchain postrouting_miniupnpd {\n\t}\n\
             }\n",
        )
        .expect("writing miniupnpd.nft");
        self.exec(R1, &[&nft, "-f", rules.to_str().expect("UTF-8 path")])
            .ok();
        let conf = dir.join("miniupnpd.conf");
        fs::write(
            &conf,
            format!(
                "ext_ifname=wan\n\
                 listening_ip=lan\n\
                 http_port=5000\n\
                 enable_natpmp=yes\n\
                 enable_upnp=yes\n\
                 secure_mode=yes\n\
                 system_uptime=yes\n\
                 notify_interval=60\n\
                 uuid=4d696e69-5550-6e50-0000-{:012x}\n\
                 lease_file={}\n\
                 allow 1024-65535 192.168.1.0/24 1024-65535\n\
                 deny 0-65535 0.0.0.0/0 0-65535\n",
                std::process::id(),
                dir.join("miniupnpd.leases").display()
            ),
        )
        .expect("writing miniupnpd.conf");
        let pid = dir.join("miniupnpd.pid");
        Some(self.spawn(
            R1,
            "miniupnpd",
            &[
                &miniupnpd,
                "-d",
                "-f",
                conf.to_str().expect("UTF-8 path"),
                "-P",
                pid.to_str().expect("UTF-8 path"),
            ],
        ))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let keep = std::env::var("MESHSYNC_NETNS_KEEP").is_ok_and(|v| v == "1");
        for ns in self.made.iter().rev() {
            if keep {
                eprintln!("MESHSYNC_NETNS_KEEP=1: leaving namespace {ns}");
            } else {
                destroy(ns);
            }
        }
        if keep {
            // The work directory (configs, logs) too.
            self.work.disable_cleanup(true);
            eprintln!(
                "MESHSYNC_NETNS_KEEP=1: leaving {}",
                self.work.path().display()
            );
        }
    }
}

/// A process started in a namespace; killed (SIGKILL) and reaped when
/// dropped.
pub struct NsChild {
    /// The name it was started under.
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl NsChild {
    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Its output so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP echo server thread (see [`Topology::udp_echo`]); stops when
/// dropped.
pub struct UdpEcho {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    fn serve(sock: UdpSocket) -> UdpEcho {
        let addr = sock.local_addr().expect("local_addr");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("set_read_timeout");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, from)) = sock.recv_from(&mut buf) {
                        seen.lock().unwrap().push(from);
                        let _ = sock.send_to(format!("seen {from}").as_bytes(), from);
                    }
                }
            })
        };
        UdpEcho {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Every sender address it has received from, in order.
    pub fn seen(&self) -> Vec<SocketAddr> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends a probe from `sock` to `dst` every 200 ms until a [`UdpEcho`]
/// answers from `dst` or `within` passes: the address the echo saw us
/// come from, or `None`.
pub fn udp_ask(sock: &UdpSocket, dst: SocketAddr, within: Duration) -> Option<SocketAddr> {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("set_read_timeout");
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        // Errors (no route yet, ICMP unreachable) are "no answer".
        let _ = sock.send_to(b"probe", dst);
        let until = (Instant::now() + Duration::from_millis(200)).min(deadline);
        while Instant::now() < until {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == dst || dst.ip().is_multicast() => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    if let Some(addr) = text.strip_prefix("seen ")
                        && let Ok(a) = addr.parse()
                    {
                        return Some(a);
                    }
                }
                _ => {}
            }
        }
    }
    None
}

/// A socket address from an IPv4 address and port.
pub fn v4(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

/// The `meshsync init` flags that turn off every discovery method this
/// build of meshsync has (`--no-lan`, `--no-dht`, `--no-upnp`,
/// `--no-relay`, `--no-pex`; those `init --help` does not list are left
/// out), so a device uses only its static peers.
pub fn no_discovery_flags() -> Vec<&'static str> {
    let help = Command::new(env!("CARGO_BIN_EXE_meshsync"))
        .args(["init", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    [
        "--no-lan",
        "--no-dht",
        "--no-upnp",
        "--no-relay",
        "--no-pex",
    ]
    .into_iter()
    .filter(|f| help.contains(f))
    .collect()
}

/// One meshsync device living in a namespace of a [`Topology`]: its state
/// directory (in the test's sandbox, which every namespace sees), its
/// addresses, and when started its daemon (`ip netns exec NS meshsync run`),
/// killed when this is dropped. Every CLI command runs inside the
/// namespace too, so `status` reaches the daemon's API on the namespace's
/// own loopback.
pub struct NsDevice<'t> {
    /// Its name (also the device name given to `init`).
    pub name: String,
    /// The topology host it runs in ([`A1`], [`INET`], …).
    pub host: &'static str,
    /// The state directory.
    pub home: PathBuf,
    /// Where it listens for peers (inside its namespace).
    pub listen: SocketAddr,
    /// Where its API listens (loopback of its namespace).
    pub api: SocketAddr,
    api_key: String,
    log: PathBuf,
    child: Option<Child>,
    topo: &'t Topology,
}

impl<'t> NsDevice<'t> {
    /// `meshsync init --listen LISTEN --api (unique) --name NAME FLAGS…` for
    /// a device in `host`, its home in `dir`. Not started.
    pub fn new(
        topo: &'t Topology,
        dir: &Dir,
        name: &str,
        host: &'static str,
        listen: SocketAddr,
        init_flags: &[&str],
    ) -> NsDevice<'t> {
        let mut d = NsDevice {
            name: name.into(),
            host,
            home: dir.path(&format!("home-{name}")),
            listen,
            api: topo.next_api(),
            api_key: String::new(),
            log: dir.path(&format!("log-{name}.txt")),
            child: None,
            topo,
        };
        let (listen, api) = (listen.to_string(), d.api.to_string());
        let mut args = vec!["init", "--listen", &listen, "--api", &api, "--name", name];
        args.extend_from_slice(init_flags);
        d.cli(&args).ok();
        let config = fs::read_to_string(d.home.join("config.toml")).expect("reading config.toml");
        let table: toml::Table = config.parse().expect("config.toml is TOML");
        d.api_key = table["device"]["api_key"]
            .as_str()
            .expect("device.api_key")
            .to_string();
        d
    }

    /// `ip netns exec NS meshsync --home HOME` (no log filter, stdin
    /// closed).
    pub fn command(&self) -> Command {
        let mut c = self.topo.command(self.host, env!("CARGO_BIN_EXE_meshsync"));
        c.arg("--home")
            .arg(&self.home)
            .env_remove("MESHSYNC_HOME")
            .env_remove("RUST_LOG");
        c
    }

    /// Runs `meshsync --home HOME <args>` in the namespace to completion.
    pub fn cli(&self, args: &[&str]) -> CmdOutput {
        let out = self
            .command()
            .args(args)
            .output()
            .expect("running meshsync");
        CmdOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `meshsync share DIR --json --peer P…`: the keys.
    pub fn share(&self, dir: &Path, peers: &[SocketAddr]) -> Keys {
        let peers: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
        let mut args = vec!["share", dir.to_str().expect("UTF-8 test path"), "--json"];
        for p in &peers {
            args.extend(["--peer", p.as_str()]);
        }
        let out = self.cli(&args).ok();
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("share --json printed no JSON ({e}): {}", out.stdout));
        let field = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("share --json lacks {k}: {v}"))
                .to_string()
        };
        Keys {
            read_write: field("read_write"),
            read_only: field("read_only"),
            encrypted: field("encrypted"),
            share_id: field("share_id"),
        }
    }

    /// `meshsync join KEY DIR --peer P…`.
    pub fn join(&self, key: &str, dir: &Path, peers: &[SocketAddr]) {
        let peers: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
        let mut args = vec!["join", key, dir.to_str().expect("UTF-8 test path")];
        for p in &peers {
            args.extend(["--peer", p.as_str()]);
        }
        self.cli(&args).ok();
    }

    /// Starts `meshsync run` in the namespace (logging to `log-NAME.txt` at
    /// info level, or as `$MESHSYNC_TEST_LOG` says) and waits until its
    /// API answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} runs already", self.name);
        self.child = Some(crate::daemon_util::spawn_run(self.command(), &self.log));
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                self.child = None;
                panic!(
                    "daemon {} exited at start ({status})\n{}",
                    self.name,
                    self.log_text()
                );
            }
            if self.health() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon {} did not answer on its API\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Kills the daemon (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` on the daemon's API from inside its namespace (with the
    /// API key): status and body; `None` if nothing answers.
    pub fn api_get(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("http://{}{path}", self.api);
        self.topo.in_ns(self.host, || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .proxy(None)
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .into();
            let mut resp = agent
                .get(&url)
                .header("X-API-Key", &self.api_key)
                .call()
                .ok()?;
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            Some((resp.status().as_u16(), body))
        })
    }

    /// Whether `GET /rest/health` answers 200.
    pub fn health(&self) -> bool {
        self.api_get("/rest/health")
            .is_some_and(|(code, _)| code == 200)
    }

    /// `GET /rest/status` of the running daemon.
    pub fn status(&self) -> Result<Value, String> {
        match self.api_get("/rest/status") {
            Some((200, body)) => serde_json::from_str(&body).map_err(|e| format!("{e}: {body}")),
            Some((code, body)) => Err(format!("GET /rest/status on {}: {code} {body}", self.name)),
            None => Err(format!("{}'s API does not answer", self.name)),
        }
    }

    /// The connected peers as `(name, address, via)`.
    pub fn peers(&self) -> Result<Vec<(String, String, String)>, String> {
        let s = self.status()?;
        let peers = s["peers"]
            .as_array()
            .ok_or_else(|| format!("no peers: {s}"))?;
        Ok(peers
            .iter()
            .map(|p| {
                let f = |k: &str| p[k].as_str().unwrap_or_default().to_string();
                (f("name"), f("address"), f("via"))
            })
            .collect())
    }
}

impl Drop for NsDevice<'_> {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 100 ms until it returns `Ok`, for at most
/// [`TIMEOUT`]; then panics with the last reason and every device's status
/// and log tail.
#[track_caller]
pub fn eventually<T>(
    what: &str,
    devices: &[&NsDevice],
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match check() {
            Ok(v) => return v,
            Err(why) => {
                if Instant::now() > deadline {
                    panic!(
                        "timed out after {TIMEOUT:?} waiting for {what}: {why}\n{}",
                        report(devices)
                    );
                }
            }
        }
        std::thread::sleep(POLL);
    }
}

/// Every device's status (if its API answers) and the last 40 lines of its
/// log (`MESHSYNC_TEST_LOG_LINES` for more).
pub fn report(devices: &[&NsDevice]) -> String {
    let lines: usize = std::env::var("MESHSYNC_TEST_LOG_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let mut s = String::new();
    for d in devices {
        let status = d.status().map_or_else(|e| e, |v| v.to_string());
        let log = d.log_text();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let _ = write!(
            s,
            "=== device {} in {} ===\nstatus: {status}\nlog (last {lines} lines):\n{}\n",
            d.name,
            d.host,
            tail.join("\n")
        );
    }
    s
}
