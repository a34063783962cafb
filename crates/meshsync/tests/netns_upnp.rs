//! Port mapping against a real home-router daemon: Debian's `miniupnpd`
//! (UPnP IGD and PCP / NAT-PMP, nftables backend) runs in a router
//! namespace, a meshsync daemon with only UPnP on runs on a host behind it,
//! and a daemon on the "internet" side connects to it through the mapped
//! port: given the address (UPnP IGD; PCP with UPnP off on the router), or
//! found on a DHT where A announced the mapped port.
//!
//! ```text
//!   <p>-inet   wan-side host 11.200.0.100 (device P); the DHT test's
//!              testnet on 10.99.0.100 (routed from r1)
//!       | veth
//!   <p>-r1     wan 11.200.0.1: NAT out of wan, miniupnpd (LAN side: SSDP,
//!              HTTP :5000, PCP/NAT-PMP :5351)
//!       | veth lan 192.168.1.1/24
//!   <p>-a1     eth0 192.168.1.10, default route via r1 (device A)
//! ```
//!
//! The WAN addresses are outside every reserved range because miniupnpd
//! refuses to map ports on a reserved external address ("Port forwarding is
//! impossible"); they exist only inside these namespaces, which have no
//! link to the host's interfaces, so no packet can reach the network that
//! really owns them. The SSDP search the daemon multicasts goes out of a1's
//! only interface into r1. Nothing here touches the host's network.
//!
//! Each test makes its own namespaces (`msu-<tag>-<pid>-<role>`) and
//! deletes them when done, panics included (their processes are killed
//! first); namespaces left by a killed run are removed by the next.
//!
//! Daemons log at info (`MESHSYNC_TEST_LOG` sets another `RUST_LOG`).
//!
//! Needs root, `ip`, `nft` and the nftables build of `miniupnpd`
//! (`apt-get install -y miniupnpd nftables`; `.ci/run` installs them).
//! Without them a test prints why and passes, unless
//! `MESHSYNC_NETNS_REQUIRED=1`.

mod util;

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::Dir;

const R1_WAN: Ipv4Addr = Ipv4Addr::new(11, 200, 0, 1);
const INET_HOST: Ipv4Addr = Ipv4Addr::new(11, 200, 0, 100);
const R1_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const A1_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
const QUIC_PORT: u16 = 22000;
/// Slow CI: a positive condition may take this long.
const TIMEOUT: Duration = Duration::from_secs(60);
const PREFIX: &str = "msu-";

/// `ip netns add` races with itself the first time (it sets up the shared
/// mount of /run/netns): one at a time in this process.
static NETNS_ADD: Mutex<()> = Mutex::new(());

fn required() -> bool {
    std::env::var("MESHSYNC_NETNS_REQUIRED").is_ok_and(|v| v == "1")
}

/// Skips (prints why) or, with `MESHSYNC_NETNS_REQUIRED=1`, fails.
fn skip<T>(why: &str) -> Option<T> {
    assert!(
        !required(),
        "MESHSYNC_NETNS_REQUIRED=1 but the UPnP namespace test cannot run: {why}"
    );
    eprintln!("SKIPPED (UPnP network-namespace test): {why}");
    None
}

/// `program` on PATH or in the sbin directories.
fn tool(program: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// Runs a command to completion: stdout, or an error with its output.
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

/// Kills every process in namespace `ns` and deletes it.
fn destroy(ip: &Path, ns: &str) {
    if let Ok(pids) = run(Command::new(ip).args(["netns", "pids", ns])) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill(2) on a process inside a namespace this test made.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    let _ = run(Command::new(ip).args(["netns", "del", ns]));
}

/// Removes namespaces of runs whose process is gone.
fn sweep_stale(ip: &Path) {
    let Ok(dir) = fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        if let [_, pid, _] = rest.split('-').collect::<Vec<_>>()[..]
            && let Ok(pid) = pid.parse::<u32>()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            destroy(ip, &name);
        }
    }
}

/// A process started in a namespace: SIGKILLed when dropped, and when the
/// test process dies.
struct NsChild {
    child: Child,
    log: PathBuf,
}

impl NsChild {
    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (up to 15 s) for the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ignored SIGTERM\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The three namespaces; deleted on drop.
struct Net {
    ip: PathBuf,
    prefix: String,
    made: Vec<String>,
    dir: Dir,
}

impl Net {
    /// Builds the topology, or `None` (skipped) without root or tools.
    fn new(tag: &str) -> Option<Net> {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return skip("not root");
        }
        let (Some(ip), Some(nft), Some(upnpd)) = (tool("ip"), tool("nft"), tool("miniupnpd"))
        else {
            return skip(
                "ip, nft or miniupnpd missing (apt-get install -y iproute2 nftables miniupnpd)",
            );
        };
        let version = run(Command::new(&upnpd).arg("--version")).unwrap_or_else(|e| e);
        if !version.contains("nftables") {
            return skip(&format!("miniupnpd is not the nftables build: {version}"));
        }
        sweep_stale(&ip);
        let mut net = Net {
            prefix: format!("{PREFIX}{tag}-{}", std::process::id()),
            ip,
            made: Vec::new(),
            dir: Dir::new(&format!("upnp-{tag}")),
        };
        for role in ["inet", "r1", "a1"] {
            let ns = net.ns(role);
            let added = {
                let _one = NETNS_ADD.lock().unwrap_or_else(|e| e.into_inner());
                run(Command::new(&net.ip).args(["netns", "add", &ns]))
            };
            if let Err(e) = added {
                return skip(&format!("cannot make a network namespace: {e}"));
            }
            net.made.push(ns);
            net.ip_in(role, &["link", "set", "lo", "up"]);
        }
        let (inet, a1) = (net.ns("inet"), net.ns("a1"));
        net.ip_in(
            "r1",
            &[
                "link", "add", "wan", "type", "veth", "peer", "name", "r1", "netns", &inet,
            ],
        );
        net.ip_in(
            "r1",
            &[
                "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", &a1,
            ],
        );
        net.ip_in(
            "r1",
            &["addr", "add", &format!("{R1_WAN}/24"), "dev", "wan"],
        );
        net.ip_in(
            "r1",
            &["addr", "add", &format!("{R1_LAN}/24"), "dev", "lan"],
        );
        net.ip_in(
            "inet",
            &["addr", "add", &format!("{INET_HOST}/24"), "dev", "r1"],
        );
        net.ip_in(
            "a1",
            &["addr", "add", &format!("{A1_IP}/24"), "dev", "eth0"],
        );
        for (role, dev) in [("r1", "wan"), ("r1", "lan"), ("inet", "r1"), ("a1", "eth0")] {
            net.ip_in(role, &["link", "set", dev, "up"]);
        }
        net.ip_in(
            "a1",
            &["route", "add", "default", "via", &R1_LAN.to_string()],
        );
        net.exec("r1", &["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .expect("ip_forward");
        // A home router: NAT out of wan, and the chains miniupnpd's
        // nftables backend fills (its default names).
        let rules = net.dir.path("router.nft");
        fs::write(
            &rules,
            "table inet filter {\n\
             \tchain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }\n\
             \tchain miniupnpd { }\n\
             \tchain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }\n\
             \tchain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; oifname \"wan\" masquerade; }\n\
             \tchain prerouting_miniupnpd { }\n\
             \tchain postrouting_miniupnpd { }\n\
             }\n",
        )
        .expect("writing router.nft");
        net.exec(
            "r1",
            &[nft.to_str().unwrap(), "-f", rules.to_str().unwrap()],
        )
        .expect("loading the router's rules");
        Some(net)
    }

    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    #[track_caller]
    fn ip_in(&self, role: &str, args: &[&str]) {
        let mut cmd = Command::new(&self.ip);
        cmd.args(["-n", &self.ns(role)]).args(args);
        if let Err(e) = run(&mut cmd) {
            panic!("{e}");
        }
    }

    fn command(&self, role: &str, program: &Path) -> Command {
        let mut cmd = Command::new(&self.ip);
        cmd.args(["netns", "exec", &self.ns(role)]).arg(program);
        cmd
    }

    fn exec(&self, role: &str, args: &[&str]) -> Result<String, String> {
        run(self.command(role, Path::new(args[0])).args(&args[1..]))
    }

    /// Starts `cmd` (made by [`Net::command`]) logging to `name.log`.
    fn spawn(&self, name: &str, mut cmd: Command) -> NsChild {
        let log = self.dir.path(&format!("{name}.log"));
        let out = File::create(&log).expect("creating a log");
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out);
        // SAFETY: prctl(2) in the child before exec; async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        NsChild {
            child: cmd.spawn().expect("spawning in a namespace"),
            log,
        }
    }

    /// miniupnpd in r1: UPnP IGD when `igd`, PCP / NAT-PMP always.
    fn start_miniupnpd(&self, igd: bool) -> NsChild {
        let conf = self.dir.path("miniupnpd.conf");
        fs::write(
            &conf,
            format!(
                "ext_ifname=wan\n\
                 listening_ip=lan\n\
                 http_port=5000\n\
                 enable_natpmp=yes\n\
                 enable_upnp={}\n\
                 secure_mode=yes\n\
                 system_uptime=yes\n\
                 uuid=4d696e69-5550-6e50-0001-{:012x}\n\
                 lease_file={}\n\
                 allow 1024-65535 192.168.1.0/24 1024-65535\n\
                 deny 0-65535 0.0.0.0/0 0-65535\n",
                if igd { "yes" } else { "no" },
                std::process::id(),
                self.dir.path("miniupnpd.leases").display()
            ),
        )
        .expect("writing miniupnpd.conf");
        let mut cmd = self.command("r1", &tool("miniupnpd").unwrap());
        cmd.args(["-d", "-f", conf.to_str().unwrap()])
            .args(["-P", self.dir.path("miniupnpd.pid").to_str().unwrap()]);
        let mut upnpd = self.spawn("miniupnpd", cmd);
        wait_for("miniupnpd to listen", || {
            if let Some(status) = upnpd.child.try_wait().unwrap() {
                return Err(format!("miniupnpd exited ({status})\n{}", upnpd.log_text()));
            }
            let log = upnpd.log_text();
            if log.contains("Listening for NAT-PMP") {
                Ok(())
            } else {
                Err(log)
            }
        });
        upnpd
    }

    /// The router's forwarding rules (nftables), as text.
    fn router_rules(&self) -> String {
        self.exec(
            "r1",
            &[tool("nft").unwrap().to_str().unwrap(), "list", "ruleset"],
        )
        .unwrap_or_else(|e| e)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            destroy(&self.ip, ns);
        }
    }
}

/// A meshsync device in one of the namespaces.
struct NsDaemon<'n> {
    net: &'n Net,
    role: &'static str,
    home: PathBuf,
    name: String,
    daemon: Option<NsChild>,
}

impl<'n> NsDaemon<'n> {
    fn new(net: &'n Net, role: &'static str, name: &str, init: &[&str]) -> Self {
        let d = NsDaemon {
            net,
            role,
            home: net.dir.path(&format!("home-{name}")),
            name: name.to_owned(),
            daemon: None,
        };
        let mut args = vec!["init", "--api", "127.0.0.1:8384", "--name", name];
        args.extend(init);
        d.cli(&args);
        d
    }

    #[track_caller]
    fn cli(&self, args: &[&str]) -> String {
        let mut cmd = self
            .net
            .command(self.role, Path::new(env!("CARGO_BIN_EXE_meshsync")));
        cmd.arg("--home")
            .arg(&self.home)
            .args(args)
            .env_remove("RUST_LOG");
        run(&mut cmd).unwrap_or_else(|e| panic!("{e}"))
    }

    fn start(&mut self) {
        let mut cmd = self
            .net
            .command(self.role, Path::new(env!("CARGO_BIN_EXE_meshsync")));
        cmd.arg("--home").arg(&self.home).arg("run").env(
            "RUST_LOG",
            std::env::var("MESHSYNC_TEST_LOG").unwrap_or_else(|_| "warn,meshsync=info".into()),
        );
        self.daemon = Some(self.net.spawn(&format!("daemon-{}", self.name), cmd));
    }

    fn status(&self) -> Result<Value, String> {
        let mut cmd = self
            .net
            .command(self.role, Path::new(env!("CARGO_BIN_EXE_meshsync")));
        cmd.arg("--home").arg(&self.home).args(["status", "--json"]);
        let out = run(&mut cmd)?;
        serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))
    }

    fn log_text(&self) -> String {
        self.daemon
            .as_ref()
            .map(NsChild::log_text)
            .unwrap_or_default()
    }

    /// SIGTERM; the daemon must exit cleanly.
    fn stop(&mut self) {
        let mut d = self.daemon.take().expect("running");
        let status = d.terminate();
        assert!(
            status.success(),
            "{} exited with {status}\n{}",
            self.name,
            d.log_text()
        );
        self.daemon = Some(d); // keep the log readable
    }
}

/// Polls `check` every 100 ms until `Ok` or [`TIMEOUT`] (then panics).
#[track_caller]
fn wait_for<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match check() {
            Ok(v) => return v,
            Err(why) if Instant::now() > deadline => {
                panic!("timed out waiting for {what}: {why}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A's addresses as the router maps them (`discovery.own_addresses`).
fn own_addresses(status: &Value) -> Vec<String> {
    status["discovery"]["own_addresses"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect()
}

/// Whether the router forwards UDP `port` on wan to A.
fn forwards_to_a(rules: &str) -> bool {
    rules
        .lines()
        .any(|l| l.contains("dnat") && l.contains(&format!("{A1_IP}:{QUIC_PORT}")))
}

/// The whole story with `igd` (UPnP IGD) or without it (then PCP):
/// mapped, reachable from the internet side through the router, removed
/// when the daemon stops.
fn map_connect_unmap(tag: &str, igd: bool) {
    let Some(net) = Net::new(tag) else {
        return;
    };
    let upnpd = net.start_miniupnpd(igd);
    let listen = format!("0.0.0.0:{QUIC_PORT}");
    let mut a = NsDaemon::new(
        &net,
        "a1",
        "A",
        &[
            "--listen",
            &listen,
            "--no-lan",
            "--no-dht",
            "--no-relay",
            "--no-pex",
        ],
    );
    let folder_a = net.dir.mkdir("a");
    fs::write(folder_a.join("hello.txt"), b"through the mapped port").unwrap();
    let keys: Value =
        serde_json::from_str(&a.cli(&["share", folder_a.to_str().unwrap(), "--json"])).unwrap();
    let started = Instant::now();
    a.start();
    let external = SocketAddr::from((R1_WAN, QUIC_PORT)).to_string();
    wait_for("A's mapped address in its status", || {
        let own = own_addresses(&a.status()?);
        if own.contains(&external) {
            Ok(())
        } else {
            Err(format!(
                "own_addresses {own:?}\n{}\n{}",
                a.log_text(),
                upnpd.log_text()
            ))
        }
    });
    let mapped_in = started.elapsed();
    let method = if igd { "(UPnP IGD" } else { "(PCP" };
    assert!(
        a.log_text().contains(method),
        "not mapped by {method}:\n{}",
        a.log_text()
    );
    assert!(
        forwards_to_a(&net.router_rules()),
        "no forwarding rule:\n{}",
        net.router_rules()
    );

    // P, on the internet side, knows only the router's address.
    let mut p = NsDaemon::new(
        &net,
        "inet",
        "P",
        &[
            "--listen",
            &SocketAddr::from((INET_HOST, QUIC_PORT)).to_string(),
            "--offline",
        ],
    );
    let folder_p = net.dir.path("p");
    p.cli(&[
        "join",
        keys["read_write"].as_str().unwrap(),
        folder_p.to_str().unwrap(),
        "--peer",
        &external,
    ]);
    p.start();
    wait_for("P to sync A's file through the router", || {
        match fs::read(folder_p.join("hello.txt")) {
            Ok(b) if b == b"through the mapped port" => Ok(()),
            other => Err(format!(
                "{other:?}\nP: {}\nA: {}",
                p.log_text(),
                a.log_text()
            )),
        }
    });
    let synced_in = started.elapsed();
    let status = p.status().unwrap();
    let peer_addr = status["peers"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(peer_addr, external, "P reached A at the router's address");

    a.stop();
    wait_for("the mapping to be removed", || {
        let rules = net.router_rules();
        if forwards_to_a(&rules) {
            Err(rules)
        } else {
            Ok(())
        }
    });
    assert!(
        a.log_text().contains("port mapping: removed"),
        "{}",
        a.log_text()
    );
    p.stop();
    println!(
        "{}: start to mapped {:.2} s, to P synced through it {:.2} s",
        if igd { "UPnP IGD" } else { "PCP" },
        mapped_in.as_secs_f64(),
        synced_in.as_secs_f64()
    );
}

#[test]
fn upnp_igd_maps_the_port_a_peer_connects_through_and_unmaps_at_exit() {
    map_connect_unmap("igd", true);
}

/// With UPnP off on the router, PCP (crab_nat) maps the port instead.
#[test]
fn pcp_maps_the_port_when_the_router_has_no_upnp() {
    map_connect_unmap("pcp", false);
}

/// Runs `f` on a fresh thread inside namespace `ns` (sockets it makes, and
/// threads it spawns, stay in that namespace).
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(format!("/run/netns/{ns}")).expect("opening the namespace");
            // SAFETY: setns(2) on a descriptor we own; it moves only this
            // thread.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("the namespace thread panicked")
    })
}

/// Port mapping and the DHT together: A, behind the router, is announced
/// on a DHT (run on the internet side) at the router's mapped port, and P
/// finds it there and connects through the mapping. A cannot dial P (the
/// router drops new packets from the LAN to P's QUIC port), so the
/// connection can only be P's, through the mapped port.
#[test]
fn the_dht_announces_the_mapped_port_and_a_peer_connects_through_it() {
    let Some(net) = Net::new("dht") else {
        return;
    };
    let _upnpd = net.start_miniupnpd(true);
    // The DHT nodes sit on a private address of the internet namespace (a
    // mainline node trusts a node id on a public address only if it is
    // derived from that address, BEP 42), routed from r1.
    let dht_ip = Ipv4Addr::new(10, 99, 0, 100);
    net.ip_in(
        "inet",
        &["addr", "add", &format!("{dht_ip}/24"), "dev", "r1"],
    );
    net.ip_in(
        "r1",
        &[
            "route",
            "add",
            "10.99.0.0/24",
            "via",
            &INET_HOST.to_string(),
        ],
    );
    let nft = tool("nft").unwrap();
    net.exec(
        "r1",
        &[
            nft.to_str().unwrap(),
            "add rule inet filter forward iifname \"lan\" ip daddr 11.200.0.100 udp dport 22000 ct state new drop",
        ],
    )
    .expect("adding the drop rule");
    let testnet = in_ns(&net.ns("inet"), || {
        mainline::Testnet::builder(6)
            .bind_address(dht_ip)
            .build()
            .expect("a DHT testnet in the internet namespace")
    });
    let mut dht_flags: Vec<&str> = vec!["--no-lan", "--no-relay", "--no-pex"];
    for node in &testnet.bootstrap {
        dht_flags.extend(["--dht-bootstrap", node.as_str()]);
    }

    let listen_a = format!("0.0.0.0:{QUIC_PORT}");
    let mut flags_a = vec!["--listen", listen_a.as_str()];
    flags_a.extend(&dht_flags);
    let mut a = NsDaemon::new(&net, "a1", "A", &flags_a);
    let folder_a = net.dir.mkdir("a");
    fs::write(folder_a.join("hello.txt"), b"found on the DHT, behind NAT").unwrap();
    let keys: Value =
        serde_json::from_str(&a.cli(&["share", folder_a.to_str().unwrap(), "--json"])).unwrap();

    let listen_p = SocketAddr::from((INET_HOST, QUIC_PORT)).to_string();
    let mut flags_p = vec!["--listen", listen_p.as_str(), "--no-upnp"];
    flags_p.extend(&dht_flags);
    let mut p = NsDaemon::new(&net, "inet", "P", &flags_p);
    let folder_p = net.dir.path("p");
    p.cli(&[
        "join",
        keys["read_write"].as_str().unwrap(),
        folder_p.to_str().unwrap(),
    ]);

    let started = Instant::now();
    a.start();
    p.start();
    let external = SocketAddr::from((R1_WAN, QUIC_PORT)).to_string();
    wait_for("P to sync A's file", || {
        match fs::read(folder_p.join("hello.txt")) {
            Ok(b) if b == b"found on the DHT, behind NAT" => Ok(()),
            other => Err(format!(
                "{other:?}\nP: {}\nA: {}",
                p.log_text(),
                a.log_text()
            )),
        }
    });
    let synced_in = started.elapsed();
    let status = p.status().unwrap();
    assert_eq!(
        status["peers"][0]["address"].as_str(),
        Some(external.as_str()),
        "P reached A at the mapped address: {status}"
    );
    assert_eq!(status["peers"][0]["via"].as_str(), Some("dht"), "{status}");
    a.stop();
    p.stop();
    println!(
        "DHT + UPnP IGD across NAT: start to P synced {:.2} s",
        synced_in.as_secs_f64()
    );
}
