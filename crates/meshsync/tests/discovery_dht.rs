//! Two daemons that know nothing of each other (no static peers, no
//! tracker, no LAN) find each other through a DHT and sync a folder.
//!
//! The DHT is a local mainline testnet run inside this test process, bound
//! to 127.0.0.1 (`Testnet::builder`, never `Testnet::new`, which binds every
//! interface); each daemon is pointed at it with `dht_bootstrap`, so neither
//! ever contacts the public DHT. Prints the time from start to connected
//! (and both daemons' logs with `DHT_TEST_SHOW_LOGS=1`).

mod daemon_util;
mod util;

use std::fs;
use std::time::{Duration, Instant};

use daemon_util::{Device, eventually_within, has_content};
use serde_json::Value;
use util::Dir;

/// A slow 2-core CI machine gets this long for discovery plus the sync.
const DEADLINE: Duration = Duration::from_secs(90);

/// Turns the DHT on in `device`'s config (the test helpers init with
/// `--offline`), with `bootstrap` as its only bootstrap nodes.
fn use_dht(device: &Device, bootstrap: &[String]) {
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
    discovery.insert("dht".into(), toml::Value::Boolean(true));
    discovery.insert(
        "dht_bootstrap".into(),
        toml::Value::Array(bootstrap.iter().cloned().map(toml::Value::String).collect()),
    );
    fs::write(&path, toml::to_string(&config).expect("TOML")).expect("writing config.toml");
}

/// The peers `device`'s status lists, as (address, via).
fn peers(device: &Device) -> Vec<(String, String)> {
    device.status()["peers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            (
                p["address"].as_str().unwrap_or_default().to_owned(),
                p["via"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn dht_candidates(status: &Value) -> Vec<String> {
    status["discovery"]["candidates"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|c| c["via"] == "dht")
        .map(|c| c["address"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn two_daemons_find_each_other_through_a_local_dht_and_sync() {
    let testnet = mainline::Testnet::builder(8)
        .build()
        .expect("starting a local DHT testnet");
    for node in &testnet.bootstrap {
        let addr: std::net::SocketAddr = node.parse().unwrap();
        assert!(addr.ip().is_loopback(), "testnet node {addr} off loopback");
    }

    let dir = Dir::new("dht");
    dir.mkdir("a");
    dir.mkdir("b");
    fs::write(dir.path("a/hello.txt"), b"found through the DHT").unwrap();
    let mut a = Device::new(&dir, "A");
    let mut b = Device::new(&dir, "B");
    use_dht(&a, &testnet.bootstrap);
    use_dht(&b, &testnet.bootstrap);
    let keys = a.share(&dir.path("a"), None);
    b.join(&keys.read_write, &dir.path("b"), &[], None);

    let started = Instant::now();
    a.start();
    b.start();
    eventually_within(DEADLINE, "A and B connected", &[&a, &b], || {
        let (pa, pb) = (peers(&a), peers(&b));
        if pa.is_empty() || pb.is_empty() {
            return Err(format!("A's peers {pa:?}, B's peers {pb:?}"));
        }
        Ok(())
    });
    let connected = started.elapsed();
    eventually_within(DEADLINE, "B has A's file", &[&a, &b], || {
        has_content(&dir.path("b/hello.txt"), b"found through the DHT")
    });
    let synced = started.elapsed();
    println!(
        "DHT testnet (8 nodes, loopback): start to connected {:.2} s, to first file synced {:.2} s",
        connected.as_secs_f64(),
        synced.as_secs_f64()
    );

    // The DHT found them: whoever dialled shows `via dht`, and its address
    // book holds the other's address as found on the DHT.
    let (sa, sb) = (a.status(), b.status());
    for s in [&sa, &sb] {
        let methods = s["discovery"]["methods"].as_array().unwrap();
        assert!(methods.iter().any(|m| m == "dht"), "dht not on: {s}");
    }
    let vias: Vec<String> = peers(&a)
        .into_iter()
        .chain(peers(&b))
        .map(|(_, via)| via)
        .collect();
    assert!(
        vias.iter().any(|v| v == "dht"),
        "no connection shows via dht: {vias:?}"
    );
    assert!(
        vias.iter().all(|v| v == "dht" || v == "incoming"),
        "only the DHT (or the other's dial) may have connected them: {vias:?}"
    );
    let found: Vec<String> = dht_candidates(&sa)
        .into_iter()
        .chain(dht_candidates(&sb))
        .collect();
    assert!(
        found.contains(&a.listen.to_string()) || found.contains(&b.listen.to_string()),
        "the DHT found neither daemon's address: {found:?}"
    );
    assert!(
        !dht_candidates(&sa).contains(&a.listen.to_string())
            && !dht_candidates(&sb).contains(&b.listen.to_string()),
        "a daemon offered its own address to itself"
    );
    a.stop();
    b.stop();
    if std::env::var_os("DHT_TEST_SHOW_LOGS").is_some() {
        println!("{}\n{}", a.log_text(), b.log_text());
    }
}
