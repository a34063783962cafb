//! LAN discovery between real daemons, inside a network namespace each test
//! makes for itself: multicast never touches a real interface.
//!
//! A test moves its own thread into a fresh network namespace
//! (`unshare(CLONE_NEWNET)`: only that thread, and every process it starts
//! from then on), brings its loopback up with multicast on and routes
//! 239.0.0.0/8 to it. The daemons it starts, their free ports, the API
//! calls and any datagram the test sends all live in that namespace, which
//! disappears with the thread and its processes: nothing to clean up, and
//! nothing can leak to the host's networks.
//!
//! The last test uses the multi-host topology of `netns_util` instead: two
//! hosts on one bridged home LAN, and a third behind another router.
//!
//! Needs root (CAP_SYS_ADMIN for the namespace) and `ip` (and `iptables` for
//! the topology); without them a test prints why and passes, unless
//! `MESHSYNC_NETNS_REQUIRED=1` (set by `.ci/run`) makes that a failure.

mod daemon_util;
mod netns_util;
mod util;

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use daemon_util::{Device, eventually, same_trees};
use meshsync_core::ids::DeviceId;
use meshsync_core::keys::ReadWriteKey;
use meshsync_core::keys::discovery::{LanTagKey, lan_window};
use serde_json::Value;
use util::Dir;

/// The LAN group and port the daemons use (the defaults).
const GROUP: &str = "239.192.83.77:21029";

/// Moves this thread into a new network namespace with a multicast-capable
/// loopback. `false` (after printing why) when this machine cannot.
fn enter_private_network() -> bool {
    let required = std::env::var("MESHSYNC_NETNS_REQUIRED").is_ok_and(|v| v == "1");
    let skip = |why: &str| {
        assert!(!required, "network namespace tests are required: {why}");
        eprintln!("skipped: {why}");
        false
    };
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("not root (a network namespace needs CAP_SYS_ADMIN)");
    }
    // SAFETY: unshare(2) with CLONE_NEWNET changes only this thread's
    // network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return skip(&format!(
            "unshare(CLONE_NEWNET) refused: {}",
            std::io::Error::last_os_error()
        ));
    }
    for args in [
        &["link", "set", "lo", "up"][..],
        &["link", "set", "lo", "multicast", "on"],
        &["route", "add", "239.0.0.0/8", "dev", "lo"],
    ] {
        match Command::new("ip").args(args).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => return skip(&format!("no `ip` (iproute2): {e}")),
        }
    }
    true
}

/// Turns LAN discovery on in the device's `config.toml` (the test devices
/// are made `--offline`), leaving DHT, UPnP and the rest off.
fn lan_on(d: &Device) {
    let path = d.home.join("config.toml");
    let mut table: toml::Table = fs::read_to_string(&path)
        .expect("reading config.toml")
        .parse()
        .expect("config.toml is TOML");
    let discovery = table
        .entry("discovery")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("[discovery] is a table");
    discovery.insert("lan".into(), true.into());
    for off in ["dht", "upnp", "relay", "pex"] {
        discovery.insert(off.into(), false.into());
    }
    fs::write(&path, toml::to_string(&table).expect("TOML")).expect("writing config.toml");
}

/// The peer named `name` in `d`'s status, if connected.
fn peer(d: &Device, name: &str) -> Option<Value> {
    d.status()["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
}

/// `d`'s LAN counters.
fn lan_counter(d: &Device, name: &str) -> u64 {
    d.status()["discovery"]["lan"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no discovery.lan.{name} in {}'s status", d.name))
}

/// Two devices with no static peer on one (loopback) LAN find each other by
/// their announcements and sync. Prints how long after the second daemon
/// started they were connected (docs/benchmarks.md, "Discovery").
#[test]
fn two_devices_on_a_lan_find_each_other_and_sync() {
    if !enter_private_network() {
        return;
    }
    let dir = Dir::new("lan-find");
    dir.write("a/hello.txt", "found on the LAN\n");
    let mut a = Device::new(&dir, "A");
    let mut b = Device::new(&dir, "B");
    let keys = a.share(&dir.path("a"), None);
    b.join(&keys.read_write, &dir.path("b"), &[], None);
    lan_on(&a);
    lan_on(&b);
    a.start();
    let started = Instant::now();
    b.start();
    let all = [&a, &b];
    let link = eventually("A and B to find each other", &all, || {
        match (peer(&a, "B"), peer(&b, "A")) {
            (Some(_), Some(l)) => Ok(l),
            other => Err(format!("{other:?}")),
        }
    });
    let connected = started.elapsed();
    eventually("B to get A's folder", &all, || {
        same_trees(&dir.path("a"), &dir.path("b"))
    });
    let synced = started.elapsed();
    println!(
        "LAN discovery: connected {:.0} ms after the second daemon started, folder synced at {:.0} ms",
        connected.as_secs_f64() * 1000.0,
        synced.as_secs_f64() * 1000.0
    );
    assert_eq!(link["path"], "direct", "{link}");
    let via: Vec<Value> = [peer(&a, "B"), peer(&b, "A")]
        .into_iter()
        .flatten()
        .map(|p| p["via"].clone())
        .collect();
    assert!(via.contains(&"lan".into()), "found via LAN: {via:?}");
    assert!(
        via.iter().all(|v| v == "lan" || v == "incoming"),
        "nothing but LAN found them: {via:?}"
    );
    // A heard B's first announcement (B started after A's and will hear
    // A's next one, up to 30 s later: the connection needs only one).
    assert!(lan_counter(&a, "accepted") > 0, "A heard B");
    for d in all {
        assert!(lan_counter(d, "sent") > 0, "{} announced", d.name);
        let s = d.status();
        let candidates = s["discovery"]["candidates"].as_array().expect("candidates");
        assert!(
            candidates.iter().all(|c| c["via"] == "lan"),
            "only LAN candidates: {candidates:?}"
        );
    }

    // An edit on B goes back to A.
    dir.write("b/reply.txt", "and back\n");
    eventually("B's edit to reach A", &all, || {
        same_trees(&dir.path("b"), &dir.path("a"))
    });
}

/// Garbage, a flood, forged tags and a replay of another device's id sent
/// to the announcement group: the daemon counts and drops them, stays up,
/// and still finds its real peer, whose announcements come from another
/// source address than the flood's.
#[test]
fn malformed_spoofed_and_flooding_announcements_are_survived() {
    if !enter_private_network() {
        return;
    }
    let dir = Dir::new("lan-hostile");
    dir.write("a/hello.txt", "still here\n");
    let mut a = Device::new(&dir, "A");
    let mut b = Device::new(&dir, "B");
    let keys = a.share(&dir.path("a"), None);
    b.join(&keys.read_write, &dir.path("b"), &[], None);
    lan_on(&a);
    lan_on(&b);
    a.start();

    let group: SocketAddr = GROUP.parse().unwrap();
    // Well-formed announcements with forged tags (a folder A does not run)
    // from a stranger's device id.
    let stranger = ReadWriteKey::from_secret(&[0x66; 32]);
    let window = lan_window(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    let forged = meshsync_proto::lan::encode(
        &DeviceId::from_bytes([0x77; 32]),
        window,
        9,
        &["127.0.0.2".parse().unwrap()],
        &[LanTagKey::new(stranger.access_key())],
    );
    let spoof = UdpSocket::bind("127.0.0.3:0").expect("binding 127.0.0.3");
    for _ in 0..10 {
        let _ = spoof.send_to(&forged[0], group);
    }
    // Sent before the flood, which overflows the socket's receive buffer.
    std::thread::sleep(Duration::from_millis(300));
    // Garbage of every size, a flood of it.
    let attacker = UdpSocket::bind("127.0.0.2:0").expect("binding 127.0.0.2");
    for i in 0..3000usize {
        let junk = vec![(i % 251) as u8; i % 1500];
        let _ = attacker.send_to(&junk, group);
    }
    eventually("A to count the hostile datagrams", &[&a], || {
        let (m, r, i) = (
            lan_counter(&a, "malformed"),
            lan_counter(&a, "rate_limited"),
            lan_counter(&a, "ignored"),
        );
        if m > 0 && r > 0 && i >= 10 {
            Ok(())
        } else {
            Err(format!("malformed {m}, rate-limited {r}, ignored {i}"))
        }
    });
    assert!(
        a.status()["discovery"]["candidates"]
            .as_array()
            .expect("candidates")
            .is_empty(),
        "nothing hostile reached the address book"
    );
    assert!(a.running(), "A survived");

    // The real peer is still found (its announcements come from 127.0.0.1;
    // the global budget refills within a second).
    std::thread::sleep(Duration::from_millis(500));
    b.start();
    let all = [&a, &b];
    eventually(
        "A and B to find each other after the flood",
        &all,
        || match (peer(&a, "B"), peer(&b, "A")) {
            (Some(_), Some(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    eventually("B to get A's folder", &all, || {
        same_trees(&dir.path("a"), &dir.path("b"))
    });
}

/// a1 and a2 share one bridged LAN (192.168.1.0/24, behind router r1); b1
/// is on another LAN behind router r2. All three hold the folder, with no
/// static peer and nothing but LAN discovery on. a1 and a2 find each other
/// by their announcements (their real LAN addresses, with listeners on
/// 0.0.0.0) and sync; b1 hears nothing (announcements are not routed) and
/// stays alone.
#[test]
fn hosts_on_one_bridged_lan_find_each_other_and_routed_ones_do_not() {
    use netns_util::{A1, A1_IP, A2, A2_IP, B1, NsDevice, Topology, v4};
    let Some(t) = Topology::new("lan") else {
        return;
    };
    let dir = Dir::new("netns-lan");
    dir.write("a1/hello.txt", "across the bridge\n");
    let flags = ["--no-dht", "--no-upnp", "--no-relay", "--no-pex"];
    let any = v4(std::net::Ipv4Addr::UNSPECIFIED, 22000);
    let mut a1 = NsDevice::new(&t, &dir, "A1", A1, any, &flags);
    let mut a2 = NsDevice::new(&t, &dir, "A2", A2, any, &flags);
    let mut b1 = NsDevice::new(&t, &dir, "B1", B1, any, &flags);
    let keys = a1.share(&dir.path("a1"), &[]);
    a2.join(&keys.read_write, &dir.path("a2"), &[]);
    b1.join(&keys.read_write, &dir.path("b1"), &[]);
    a1.start();
    let started = Instant::now();
    a2.start();
    b1.start();
    let all = [&a1, &a2, &b1];
    let peers = netns_util::eventually("a1 and a2 to find each other", &all, || {
        match (a1.peers()?, a2.peers()?) {
            (p1, p2) if !p1.is_empty() && !p2.is_empty() => Ok((p1, p2)),
            other => Err(format!("{other:?}")),
        }
    });
    let connected = started.elapsed();
    netns_util::eventually("a2 to get a1's folder", &all, || {
        same_trees(&dir.path("a1"), &dir.path("a2"))
    });
    println!(
        "LAN discovery across a bridge: connected {:.0} ms after the second daemon started, synced at {:.0} ms",
        connected.as_secs_f64() * 1000.0,
        started.elapsed().as_secs_f64() * 1000.0
    );
    let (p1, p2) = peers;
    assert_eq!(p1.len(), 1, "a1: {p1:?}");
    assert_eq!(p2.len(), 1, "a2: {p2:?}");
    let (name, addr, via) = &p2[0];
    assert_eq!(name, "A1");
    let addr: SocketAddr = addr.parse().expect("an address");
    let (_, addr1, via1) = &p1[0];
    let addr1: SocketAddr = addr1.parse().expect("an address");
    assert_eq!(addr.ip(), A1_IP, "a2 reached a1 at its LAN address");
    assert_eq!(addr1.ip(), A2_IP, "a1 reached a2 at its LAN address");
    assert!(
        [via.as_str(), via1.as_str()].contains(&"lan"),
        "found via LAN: {via}, {via1}"
    );
    // b1, behind another router, never hears them.
    std::thread::sleep(Duration::from_secs(2));
    let alone = b1.peers().expect("b1's status");
    assert!(alone.is_empty(), "b1 found someone: {alone:?}");
    let s = b1.status().expect("b1's status");
    assert_eq!(
        s["discovery"]["lan"]["accepted"], 0,
        "b1 accepted an announcement: {s}"
    );
}
