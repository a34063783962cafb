//! Trackers across real NATs, in network namespaces (`netns_util` has the
//! topology): a tracker on the "internet" server address, one device behind
//! each home router, no static peers, no other discovery.
//!
//! - The routers drop unsolicited inbound packets, so the two devices can
//!   only meet by hole punching: the tracker times both dials, and both
//!   devices show the path `hole-punched`.
//! - With hole punching blocked (every packet between the routers' public
//!   addresses dropped), they sync through the tracker's relay: `relayed`.
//!
//! Each prints the time from start to connected (docs/benchmarks.md,
//! "Discovery"). Run as root: `cargo test -p meshsync --test
//! netns_tracker` (without root or the tools the tests print `SKIPPED` and
//! pass, unless `MESHSYNC_NETNS_REQUIRED=1`).

mod daemon_util;
mod netns_util;
mod util;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use daemon_util::same_trees;
use netns_util::{
    A1, B1, INET, NsChild, NsDevice, R1_WAN, R2_WAN, SERVER, Topology, eventually,
    no_discovery_flags, v4,
};
use util::{Dir, MIB, random_bytes};

const TRACKER_PORT: u16 = 22070;

/// Starts `meshsync tracker` on the server address and waits until it
/// listens.
fn start_tracker(t: &Topology) -> NsChild {
    let listen = v4(SERVER, TRACKER_PORT).to_string();
    let mut tracker = t.spawn_meshsync(INET, "tracker", &["tracker", "--listen", &listen]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !tracker.log_text().contains("listening on") {
        assert!(
            tracker.running(),
            "the tracker exited:\n{}",
            tracker.log_text()
        );
        assert!(Instant::now() < deadline, "the tracker did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    tracker
}

/// `init` flags: nothing but the tracker (and its relay when `relay`).
fn flags(relay: bool) -> Vec<String> {
    let mut f: Vec<String> = no_discovery_flags()
        .into_iter()
        .filter(|f| !(relay && *f == "--no-relay"))
        .map(str::to_owned)
        .collect();
    f.extend(["--tracker".into(), v4(SERVER, TRACKER_PORT).to_string()]);
    f
}

/// The connected peers of `d` as (name, address, via, path).
fn peers(d: &NsDevice) -> Result<Vec<(String, String, String, String)>, String> {
    let s = d.status()?;
    let peers = s["peers"]
        .as_array()
        .ok_or_else(|| format!("no peers: {s}"))?;
    Ok(peers
        .iter()
        .map(|p| {
            let f = |k: &str| p[k].as_str().unwrap_or_default().to_string();
            (f("name"), f("address"), f("via"), f("path"))
        })
        .collect())
}

/// a1 and b1 behind their NATs, sharing a folder through the tracker only;
/// returns the time from start to both connected, after checking the path
/// each shows and that the folder synced both ways.
fn sync_through_tracker(tag: &str, block_punching: bool, want_path: &str) -> Option<Duration> {
    let t = Topology::new(tag)?;
    if block_punching {
        t.block_hole_punching();
    }
    let mut tracker = start_tracker(&t);
    let dir = Dir::new(&format!("netns-{tag}"));
    let flags = flags(block_punching);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let any_22000 = v4(Ipv4Addr::UNSPECIFIED, 22000);
    let mut a1 = NsDevice::new(&t, &dir, "A1", A1, any_22000, &flags);
    let mut b1 = NsDevice::new(&t, &dir, "B1", B1, any_22000, &flags);
    dir.write("a/hello.txt", "hello through the tracker\n");
    dir.write("a/sub/big.bin", random_bytes(9, MIB + 777));
    let keys = a1.share(&dir.path("a"), &[]);
    b1.join(&keys.read_write, &dir.path("b"), &[]);

    let started = Instant::now();
    a1.start();
    b1.start();
    let all = [&a1, &b1];
    eventually("a1 and b1 connected", &all, || {
        let (pa, pb) = (peers(&a1)?, peers(&b1)?);
        if pa.is_empty() || pb.is_empty() {
            return Err(format!("a1's peers {pa:?}, b1's peers {pb:?}"));
        }
        Ok(())
    });
    let connected = started.elapsed();
    eventually("a1's folder on b1", &all, || {
        same_trees(&dir.path("a"), &dir.path("b"))
    });
    let synced = started.elapsed();
    dir.write("b/from-b1.txt", "and back\n");
    eventually("b1's file on a1", &all, || {
        same_trees(&dir.path("b"), &dir.path("a"))
    });

    for (d, other, other_wan) in [(&a1, "B1", R2_WAN), (&b1, "A1", R1_WAN)] {
        let ps = peers(d).unwrap();
        assert_eq!(ps.len(), 1, "{}: {ps:?}", d.name);
        let (name, address, via, path) = &ps[0];
        assert_eq!(name, other, "{}: {ps:?}", d.name);
        assert_eq!(
            (via.as_str(), path.as_str()),
            ("tracker", want_path),
            "{}: {ps:?}\n{}",
            d.name,
            d.log_text()
        );
        let address: SocketAddr = address.parse().unwrap();
        if want_path == "hole-punched" {
            // Straight to the other router's public address.
            assert_eq!(address.ip(), other_wan, "{}: {ps:?}", d.name);
        } else {
            // Through a tunnel on this host, standing in for the peer.
            assert!(address.ip() != other_wan, "{}: {ps:?}", d.name);
        }
        // The tracker told each its router's public address.
        let own = d.status().unwrap()["discovery"]["own_addresses"].clone();
        let wan = if d.name == "A1" { R1_WAN } else { R2_WAN };
        assert!(
            own.as_array().is_some_and(|o| o.iter().any(|x| x
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("{wan}:"))))),
            "{} own addresses {own}",
            d.name
        );
    }
    assert!(
        tracker.running(),
        "the tracker died:\n{}",
        tracker.log_text()
    );
    println!(
        "tracker across two NATs, {want_path}: start to connected {:.2} s, 1 MiB synced at {:.2} s",
        connected.as_secs_f64(),
        synced.as_secs_f64()
    );
    Some(connected)
}

#[test]
fn peers_behind_two_nats_connect_by_hole_punching_via_the_tracker() {
    sync_through_tracker("trkpunch", false, "hole-punched");
}

#[test]
fn with_hole_punching_blocked_peers_behind_nats_sync_through_the_relay() {
    sync_through_tracker("trkrelay", true, "relayed");
}
