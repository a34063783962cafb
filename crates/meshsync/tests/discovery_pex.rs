//! Peer exchange between real daemons on 127.0.0.1: a device that knows one
//! peer of a folder learns the others from it and connects to them
//! directly.
//!
//! The devices are made with `init --offline` (nothing may leave loopback
//! in tests), which turns peer exchange off too; these tests turn it back on
//! in `config.toml` where they need it. Peer exchange only ever sends
//! addresses of connected peers, which here are all on loopback.

mod daemon_util;
mod util;

use std::fs;

use daemon_util::{Device, eventually, holds_for, same_trees};
use serde_json::Value;
use util::Dir;

/// Sets `[discovery] KEY = VALUE` in the device's `config.toml` (before
/// `start`).
fn set_discovery(d: &Device, key: &str, value: toml::Value) {
    let path = d.home.join("config.toml");
    let mut table: toml::Table = fs::read_to_string(&path)
        .expect("reading config.toml")
        .parse()
        .expect("config.toml is TOML");
    table
        .entry("discovery")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("[discovery] is a table")
        .insert(key.into(), value);
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

/// The addresses `d`'s address book holds, found `via`.
fn candidates_via(d: &Device, via: &str) -> Vec<String> {
    d.status()["discovery"]["candidates"]
        .as_array()
        .expect("discovery.candidates")
        .iter()
        .filter(|c| c["via"] == via)
        .map(|c| c["address"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A and C each know only B (their static peer); B knows nobody and is
/// dialled by both. B tells C where A is, C dials A directly (the
/// connection shows `via pex`), and A's folder reaches C. A runs with peer
/// exchange off: it hears B's list about C and ignores it, so the direct
/// connection is C's dial, and A never holds a candidate found by PEX.
#[test]
fn a_device_learns_a_peer_through_peer_exchange_and_connects_directly() {
    let dir = Dir::new("pex-direct");
    dir.write("b/hello.txt", "from B\n");
    let mut a = Device::new(&dir, "A");
    let mut b = Device::new(&dir, "B");
    let mut c = Device::new(&dir, "C");
    let keys = b.share(&dir.path("b"), None);
    a.join(&keys.read_write, &dir.path("a"), &[&b], None);
    c.join(&keys.read_write, &dir.path("c"), &[&b], None);
    set_discovery(&b, "pex", true.into());
    set_discovery(&c, "pex", true.into());
    a.start();
    b.start();
    c.start();
    let all = [&a, &b, &c];

    let link = eventually("C to connect to A directly", &all, || {
        peer(&c, "A").ok_or_else(|| "C is not connected to A".to_owned())
    });
    assert_eq!(link["via"], "pex", "{link}");
    assert_eq!(link["path"], "direct", "{link}");
    assert_eq!(link["address"], a.listen.to_string(), "{link}");
    assert!(
        candidates_via(&c, "pex").contains(&a.listen.to_string()),
        "C's book holds A's address from B"
    );
    eventually("A to see C", &all, || {
        peer(&a, "C").ok_or_else(|| "A has no link to C".to_owned())
    });

    // A's edit reaches C, and everything converges.
    dir.write("a/from-a.txt", "from A\n");
    for x in ["a", "c"] {
        eventually(&format!("b and {x} to converge"), &all, || {
            same_trees(&dir.path("b"), &dir.path(x))
        });
    }
    assert!(
        candidates_via(&a, "pex").is_empty(),
        "A has peer exchange off and must not take B's list"
    );
}

/// With peer exchange off (the `--offline` default of the test devices), a
/// device that knows only B never learns A: after B is connected to both,
/// C and A stay strangers.
#[test]
fn without_peer_exchange_peers_stay_unknown() {
    let dir = Dir::new("pex-off");
    dir.write("b/hello.txt", "from B\n");
    let mut a = Device::new(&dir, "A");
    let mut b = Device::new(&dir, "B");
    let mut c = Device::new(&dir, "C");
    let keys = b.share(&dir.path("b"), None);
    a.join(&keys.read_write, &dir.path("a"), &[&b], None);
    c.join(&keys.read_write, &dir.path("c"), &[&b], None);
    // B would tell, but C does not listen.
    set_discovery(&b, "pex", true.into());
    a.start();
    b.start();
    c.start();
    let all = [&a, &b, &c];
    eventually("B to connect to A and C", &all, || {
        match (peer(&b, "A"), peer(&b, "C")) {
            (Some(_), Some(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    eventually("C to get B's folder", &all, || {
        same_trees(&dir.path("b"), &dir.path("c"))
    });
    holds_for(
        std::time::Duration::from_secs(3),
        "A and C not meeting",
        &all,
        || match (peer(&c, "A"), candidates_via(&c, "pex").is_empty()) {
            (None, true) => Ok(()),
            other => Err(format!("C learned about A: {other:?}")),
        },
    );
}
