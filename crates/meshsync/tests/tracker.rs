//! Trackers and relays end to end, on loopback: a real `meshsync tracker`
//! introduces two daemons that have no static peers and they sync; with
//! `force_relay` they sync through the tracker's relay and both show the
//! path as `relayed`; trackers that answer garbage, lie or do not answer at
//! all leave a daemon running and syncing with its static peer.
//!
//! Prints the time from start to connected for each path (the figures in
//! docs/benchmarks.md, "Discovery").

mod daemon_util;
mod util;

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use daemon_util::{Device, eventually_within, has_content, holds_for};
use serde_json::Value;
use util::Dir;

/// A slow 2-core CI machine gets this long for discovery plus the sync.
const DEADLINE: Duration = Duration::from_secs(60);

/// A `meshsync tracker` process on 127.0.0.1, killed when dropped.
struct TrackerProcess {
    addr: SocketAddr,
    child: Child,
}

impl TrackerProcess {
    fn start(extra: &[&str]) -> TrackerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meshsync"))
            .args(["tracker", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting meshsync tracker");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("reading the tracker's address");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("tracker printed {line:?}"))
            .parse()
            .expect("an address");
        TrackerProcess { addr, child }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for TrackerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Points `device` at `trackers` (the test helpers init with `--offline`),
/// with the relay on or off and relaying forced or not.
fn use_trackers(device: &Device, trackers: &[String], relay: bool, force_relay: bool) {
    let path = device.home.join("config.toml");
    let mut config: toml::Table = fs::read_to_string(&path)
        .expect("config.toml")
        .parse()
        .expect("config.toml is TOML");
    let discovery = config
        .entry("discovery")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("[discovery] is a table");
    discovery.insert(
        "trackers".into(),
        toml::Value::Array(trackers.iter().cloned().map(toml::Value::String).collect()),
    );
    discovery.insert("relay".into(), toml::Value::Boolean(relay));
    discovery.insert("force_relay".into(), toml::Value::Boolean(force_relay));
    fs::write(&path, toml::to_string(&config).expect("TOML")).expect("writing config.toml");
}

/// The peers `device`'s status lists, as (address, via, path).
fn peers(device: &Device) -> Vec<(String, String, String)> {
    let field = |p: &Value, k: &str| p[k].as_str().unwrap_or_default().to_owned();
    device.status()["peers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| (field(p, "address"), field(p, "via"), field(p, "path")))
        .collect()
}

/// Starts both, waits until both list the other, and returns the time it
/// took.
fn connect(a: &mut Device, b: &mut Device) -> Duration {
    let started = Instant::now();
    a.start();
    b.start();
    eventually_within(DEADLINE, "A and B connected", &[a, b], || {
        let (pa, pb) = (peers(a), peers(b));
        if pa.is_empty() || pb.is_empty() {
            return Err(format!("A's peers {pa:?}, B's peers {pb:?}"));
        }
        Ok(())
    });
    started.elapsed()
}

#[test]
fn two_daemons_without_static_peers_sync_through_a_tracker_introduction() {
    let mut tracker = TrackerProcess::start(&[]);
    let dir = Dir::new("tracker-direct");
    dir.mkdir("a");
    dir.mkdir("b");
    fs::write(dir.path("a/hello.txt"), b"introduced by a tracker").unwrap();
    let mut a = Device::new(&dir, "A");
    let mut b = Device::new(&dir, "B");
    let trackers = [tracker.addr.to_string()];
    use_trackers(&a, &trackers, true, false);
    use_trackers(&b, &trackers, true, false);
    let keys = a.share(&dir.path("a"), None);
    b.join(&keys.read_write, &dir.path("b"), &[], None);

    let connected = connect(&mut a, &mut b);
    eventually_within(DEADLINE, "B has A's file", &[&a, &b], || {
        has_content(&dir.path("b/hello.txt"), b"introduced by a tracker")
    });
    println!(
        "tracker, direct (loopback): start to connected {:.2} s",
        connected.as_secs_f64()
    );

    let all: Vec<(String, String, String)> = peers(&a).into_iter().chain(peers(&b)).collect();
    assert!(
        all.iter().any(|(_, via, _)| via == "tracker"),
        "no connection shows via tracker: {all:?}"
    );
    assert!(
        all.iter()
            .all(|(_, via, path)| (via == "tracker" || via == "incoming") && path == "direct"),
        "only the tracker's introduction may have connected them, directly: {all:?}"
    );
    // The tracker told each its reflexive address (its own, on loopback).
    for d in [&a, &b] {
        let own = d.status()["discovery"]["own_addresses"].clone();
        assert!(
            own.as_array()
                .is_some_and(|o| o.iter().any(|x| x == &d.listen.to_string())),
            "{} own addresses {own}",
            d.name
        );
        let methods = d.status()["discovery"]["methods"].clone();
        assert!(
            methods.as_array().unwrap().iter().any(|m| m == "tracker"),
            "{methods}"
        );
    }
    assert!(tracker.running());
    a.stop();
    b.stop();
}

#[test]
fn with_relaying_forced_two_daemons_sync_through_the_relay() {
    let tracker = TrackerProcess::start(&[]);
    let dir = Dir::new("tracker-relay");
    dir.mkdir("a");
    dir.mkdir("b");
    let big: Vec<u8> = (0..(4u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(dir.path("a/big.bin"), &big).unwrap();
    fs::write(dir.path("a/hello.txt"), b"through the relay").unwrap();
    let mut a = Device::new(&dir, "A");
    let mut b = Device::new(&dir, "B");
    let trackers = [tracker.addr.to_string()];
    use_trackers(&a, &trackers, true, true);
    use_trackers(&b, &trackers, true, true);
    let keys = a.share(&dir.path("a"), None);
    b.join(&keys.read_write, &dir.path("b"), &[], None);

    let connected = connect(&mut a, &mut b);
    let started = Instant::now();
    eventually_within(DEADLINE, "B has A's files", &[&a, &b], || {
        has_content(&dir.path("b/hello.txt"), b"through the relay")?;
        has_content(&dir.path("b/big.bin"), &big)
    });
    println!(
        "tracker, relayed (loopback): start to connected {:.2} s; 4 MiB synced {:.2} s after",
        connected.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    // Both sides see the relay: the dialler connected to its tunnel, the
    // other's connection came from its own tunnel.
    for d in [&a, &b] {
        let ps = peers(d);
        assert_eq!(ps.len(), 1, "{}: {ps:?}", d.name);
        let (address, via, path) = &ps[0];
        assert_eq!(
            (via.as_str(), path.as_str()),
            ("tracker", "relayed"),
            "{}: {ps:?}",
            d.name
        );
        let address: SocketAddr = address.parse().unwrap();
        assert_ne!(address, a.listen, "not A's own address: a tunnel");
        assert_ne!(address, b.listen, "not B's own address: a tunnel");
    }
    // And an edit goes the other way.
    fs::write(dir.path("b/reply.txt"), b"back through the relay").unwrap();
    b.cli(&["rescan"]).ok();
    eventually_within(DEADLINE, "A has B's reply", &[&a, &b], || {
        has_content(&dir.path("a/reply.txt"), b"back through the relay")
    });
    a.stop();
    b.stop();
}

/// A UDP socket on loopback that answers every datagram with garbage.
fn garbage_udp_server(stop: Arc<AtomicBool>) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut n = 1u32;
        while !stop.load(Ordering::Relaxed) {
            if let Ok((len, from)) = socket.recv_from(&mut buf) {
                for b in &mut buf[..len] {
                    n = n.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    *b ^= (n >> 16) as u8;
                }
                let _ = socket.send_to(&buf[..len], from);
            }
        }
    });
    addr
}

/// A QUIC server that speaks the tracker ALPN and then lies (peers that do
/// not exist, at addresses that do not answer or belong to someone else)
/// and sends garbage frames.
fn lying_quic_tracker(runtime: &tokio::runtime::Runtime, b_listen: SocketAddr) -> SocketAddr {
    use meshsync_proto::tracker::{PeerInfo, ServerMessage, encode_server};
    let identity =
        meshsync_store::identity::DeviceIdentity::from_seed(&[77; 32]).expect("identity");
    let _guard = runtime.enter();
    let transport = meshsync_net::Transport::bind_service(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        meshsync_net::TransportOptions::default(),
        meshsync_net::TRACKER_ALPN,
    )
    .expect("binding the lying tracker");
    let addr = transport.local_addr();
    runtime.spawn(async move {
        while let Some(Ok(client)) = transport.accept().await {
            tokio::spawn(async move {
                let Ok((mut send, _recv)) = client.connection.accept_bi().await else {
                    return;
                };
                let lie = |n: u8, addr: SocketAddr| PeerInfo {
                    device: meshsync_core::ids::DeviceId::from_bytes([n; 32]),
                    observed: addr,
                    addrs: vec![addr],
                };
                let peers = ServerMessage::Peers {
                    key: [0; 32],
                    peers: vec![lie(1, b_listen), lie(2, "127.0.0.1:9".parse().unwrap())],
                };
                let _ = send.write_all(&encode_server(&peers).unwrap()).await;
                let punch = ServerMessage::PunchNow {
                    peer: meshsync_core::ids::DeviceId::from_bytes([1; 32]),
                    addrs: vec![b_listen],
                    delay_ms: 0,
                };
                let _ = send.write_all(&encode_server(&punch).unwrap()).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                // A frame that declares 2 GiB, then noise.
                let _ = send.write_all(&[0x7f, 0xff, 0xff, 0xff, 1, 2, 3]).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    addr
}

#[test]
fn garbage_lying_and_unreachable_trackers_leave_the_daemon_syncing() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let dir = Dir::new("tracker-garbage");
    dir.mkdir("a");
    dir.mkdir("b");
    fs::write(dir.path("a/hello.txt"), b"despite the trackers").unwrap();
    let mut a = Device::new(&dir, "A");
    let mut b = Device::new(&dir, "B");
    let garbage = garbage_udp_server(Arc::clone(&stop));
    let liar = lying_quic_tracker(&runtime, b.listen);
    let unreachable = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let trackers = [
        garbage.to_string(),
        liar.to_string(),
        unreachable.to_string(),
        "no-such-host.invalid:1".to_string(),
    ];
    use_trackers(&a, &trackers, true, false);
    let keys = a.share(&dir.path("a"), None);
    b.join(&keys.read_write, &dir.path("b"), &[&a], None);

    a.start();
    b.start();
    eventually_within(DEADLINE, "B has A's file", &[&a, &b], || {
        has_content(&dir.path("b/hello.txt"), b"despite the trackers")
    });
    holds_for(Duration::from_secs(3), "A keeps running", &[&a, &b], || {
        if a.health() {
            Ok(())
        } else {
            Err("A's API stopped answering".into())
        }
    });
    assert!(a.running(), "A died:\n{}", a.log_text());
    // Only B, pinned and proven, is A's peer; the lies were dials at most.
    let pa = peers(&a);
    assert_eq!(pa.len(), 1, "{pa:?}");
    stop.store(true, Ordering::Relaxed);
    a.stop();
    b.stop();
    let log = a.log_text();
    if std::env::var_os("TRACKER_TEST_SHOW_LOGS").is_some() {
        println!("{log}");
    }
    assert!(
        log.contains("tracker"),
        "the daemon said nothing about its trackers:\n{log}"
    );
}

/// Sync throughput through an uncapped relay against a direct path, one
/// folder of `TRACKER_BENCH_MIB` (default 128) MiB, for docs/benchmarks.md:
/// `cargo test --release -p meshsync --test tracker -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn relayed_and_direct_sync_throughput() {
    let mib: usize = std::env::var("TRACKER_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let tracker = TrackerProcess::start(&["--relay-session-rate", "0", "--relay-total-rate", "0"]);
    for force_relay in [false, true] {
        let label = if force_relay { "relayed" } else { "direct" };
        let dir = Dir::new(&format!("tracker-bench-{label}"));
        dir.mkdir("a");
        dir.mkdir("b");
        let data: Vec<u8> = (0..mib << 20)
            .map(|i| ((i as u32).wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        fs::write(dir.path("a/data.bin"), &data).unwrap();
        let mut a = Device::new(&dir, "A");
        let mut b = Device::new(&dir, "B");
        let trackers = [tracker.addr.to_string()];
        use_trackers(&a, &trackers, true, force_relay);
        use_trackers(&b, &trackers, true, force_relay);
        let keys = a.share(&dir.path("a"), None);
        b.join(&keys.read_write, &dir.path("b"), &[], None);
        connect(&mut a, &mut b);
        let started = Instant::now();
        eventually_within(
            Duration::from_secs(600),
            "B has the data",
            &[&a, &b],
            // The file appears whole (renamed into place): compare it once.
            || match fs::metadata(dir.path("b/data.bin")) {
                Ok(m) if m.len() == data.len() as u64 => Ok(()),
                _ => Err("not yet".to_string()),
            },
        );
        let secs = started.elapsed().as_secs_f64();
        has_content(&dir.path("b/data.bin"), &data).unwrap();
        let path = peers(&a)[0].2.clone();
        println!(
            "{label} ({path}): {mib} MiB in {secs:.2} s from connected, {:.0} MiB/s",
            mib as f64 / secs
        );
        a.stop();
        b.stop();
    }
}
