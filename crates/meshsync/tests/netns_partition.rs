//! A network partition and its heal, across network namespaces (the
//! harness of `tests/netns_util`): three real daemons, a1 and a2 on one
//! LAN behind router r1, and a "public" device P on the internet's server
//! address, every one with static peers (a1 and a2 dial each other on the
//! LAN and both dial P through the NAT).
//!
//! The partition pulls a1's cable: its port on r1's LAN bridge goes down,
//! so a1 reaches nobody and nobody reaches it, until the port comes up
//! again. Both sides change the folder meanwhile; after the heal every
//! device must hold the same tree, with nothing lost.
//!
//! Needs root, `ip` and `iptables` (`.ci/run` installs them); without them
//! it prints why and passes, unless `MESHSYNC_NETNS_REQUIRED=1`.

mod daemon_util;
mod netns_util;
mod util;

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use daemon_util::{absent, has_content, names_in, same_trees, snapshot};
use netns_util::{
    A1, A1_IP, A2, A2_IP, INET, NsDevice, R1, SERVER, Topology, eventually, no_discovery_flags,
    report, v4,
};
use util::{Dir, MIB, Node, random_bytes};

/// A fixed mtime for the files made before the partition.
const T0: (i64, u32) = (1_600_000_000, 0);
/// The older and the newer side of a concurrent edit.
const OLDER: (i64, u32) = (1_600_000_100, 0);
const NEWER: (i64, u32) = (1_600_000_200, 0);

/// How long the healed swarm must then stay converged with one conflict
/// copy per conflict.
const QUIET: Duration = Duration::from_secs(3);

/// Names of conflict copies of `stem.ext` in `dir`.
fn conflict_copies(dir: &Path, stem: &str, ext: &str) -> Vec<String> {
    names_in(dir)
        .into_iter()
        .filter(|n| n.starts_with(&format!("{stem}.sync-conflict-")) && n.ends_with(ext))
        .collect()
}

/// `Ok` when `d` is connected to exactly the peers named `want`.
fn peers_are(d: &NsDevice, want: &[&str]) -> Result<(), String> {
    let mut names: Vec<String> = d.peers()?.into_iter().map(|(n, _, _)| n).collect();
    names.sort();
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    (names == want).then_some(()).ok_or(format!(
        "{} is connected to {names:?}, not {want:?}",
        d.name
    ))
}

/// `Ok` when `d`'s only folder is idle with nothing to fetch and `files`
/// live files in its index.
fn settled(d: &NsDevice, files: u64) -> Result<(), String> {
    let s = d.status()?;
    let f = &s["folders"][0];
    (f["state"] == "idle" && f["need_files"] == 0 && f["local_files"] == files)
        .then_some(())
        .ok_or(format!("{}: {f}", d.name))
}

/// The regular files of `root` with their content (`.meshsync` left out).
fn files_of(root: &Path) -> Result<BTreeMap<String, String>, String> {
    Ok(snapshot(root)?
        .into_iter()
        .filter_map(|(p, n)| match n {
            Node::File { content, .. } => Some((p, content)),
            _ => None,
        })
        .collect())
}

// a1 is cut off while the two sides make, between them, every kind of
// change: concurrent edits (one won by each side), edits on one side only,
// deletes on one side only, a delete against a concurrent edit (each way),
// renames of a file and of a directory, and new files. After the heal all
// three converge to the same tree, where every concurrent edit's loser is
// kept as exactly one conflict copy, deletes took effect only where nobody
// edited the file meanwhile, and renames left nothing under the old name.
#[test]
fn partition_and_heal_converges_and_loses_nothing() {
    let started = Instant::now();
    let Some(t) = Topology::new("partition") else {
        return;
    };
    let dir = Dir::new("netns-partition");
    let flags = no_discovery_flags();
    let any = |port| v4(Ipv4Addr::UNSPECIFIED, port);
    let public = v4(SERVER, 22000);
    let mut p = NsDevice::new(&t, &dir, "P", INET, public, &flags);
    let mut a1 = NsDevice::new(&t, &dir, "A1", A1, any(22000), &flags);
    let mut a2 = NsDevice::new(&t, &dir, "A2", A2, any(22000), &flags);

    for (name, content) in [
        ("both-a1-wins.txt", "original\n"),
        ("both-a2-wins.txt", "original\n"),
        ("edit-a1.txt", "original\n"),
        ("edit-p.txt", "original\n"),
        ("del-a1.txt", "deleted on a1 only\n"),
        ("del-p.txt", "deleted on P only\n"),
        ("del-a1-edit-a2.txt", "original\n"),
        ("edit-a1-del-p.txt", "original\n"),
        ("docs/report.txt", "the report\n"),
        ("photos/one.jpg", "one\n"),
        ("photos/two.jpg", "two\n"),
    ] {
        dir.write_with(&format!("a1/{name}"), content, 0o644, T0);
    }
    dir.write_with("a1/big.bin", random_bytes(1, 2 * MIB), 0o644, T0);
    let keys = a1.share(&dir.path("a1"), &[public, v4(A2_IP, 22000)]);
    a2.join(
        &keys.read_write,
        &dir.path("a2"),
        &[public, v4(A1_IP, 22000)],
    );
    p.join(&keys.read_write, &dir.path("p"), &[]);
    p.start();
    a1.start();
    a2.start();
    let (pa1, pa2, pp) = (dir.path("a1"), dir.path("a2"), dir.path("p"));
    let all = [&p, &a1, &a2];
    let converged = || {
        same_trees(&pa1, &pa2)?;
        same_trees(&pa1, &pp)
    };
    eventually("the three to converge", &all, converged);
    eventually("the full mesh", &all, || {
        peers_are(&a1, &["A2", "P"])?;
        peers_are(&a2, &["A1", "P"])?;
        peers_are(&p, &["A1", "A2"])
    });
    let synced_at = started.elapsed();

    // Pull a1's cable.
    t.exec(R1, &["ip", "link", "set", "a1", "down"]).ok();

    // a1's side of the partition.
    dir.write_with(
        "a1/both-a1-wins.txt",
        "a1's concurrent edit\n",
        0o644,
        NEWER,
    );
    dir.write_with("a1/both-a2-wins.txt", "a1's losing edit\n", 0o644, OLDER);
    dir.write_with("a1/edit-a1.txt", "edited on a1 alone\n", 0o644, T0);
    fs::remove_file(pa1.join("del-a1.txt")).unwrap();
    fs::remove_file(pa1.join("del-a1-edit-a2.txt")).unwrap();
    dir.write_with(
        "a1/edit-a1-del-p.txt",
        "edited on a1, deleted on P\n",
        0o644,
        T0,
    );
    fs::rename(
        pa1.join("docs/report.txt"),
        pa1.join("docs/final-report.txt"),
    )
    .unwrap();
    dir.write_with("a1/new-a1.bin", random_bytes(2, MIB + 5), 0o644, T0);
    // The other side (a2 and P, still connected to each other).
    dir.write_with("a2/both-a1-wins.txt", "a2's losing edit\n", 0o644, OLDER);
    dir.write_with(
        "a2/both-a2-wins.txt",
        "a2's concurrent edit\n",
        0o644,
        NEWER,
    );
    dir.write_with(
        "a2/del-a1-edit-a2.txt",
        "edited on a2, deleted on a1\n",
        0o644,
        T0,
    );
    dir.write_with("p/edit-p.txt", "edited on P\n", 0o644, T0);
    fs::remove_file(pp.join("del-p.txt")).unwrap();
    fs::remove_file(pp.join("edit-a1-del-p.txt")).unwrap();
    fs::rename(pp.join("photos"), pp.join("pictures")).unwrap();
    dir.write_with("p/new-p.txt", "new on P\n", 0o644, T0);

    // The partition is real: the connections to a1 die (QUIC's idle
    // timeout) and the other side goes on without it.
    eventually("a1 cut off from both", &all, || {
        peers_are(&a1, &[])?;
        peers_are(&a2, &["P"])?;
        peers_are(&p, &["A2"])
    });
    eventually("the majority side to converge without a1", &all, || {
        same_trees(&pa2, &pp)?;
        has_content(&pa2.join("edit-p.txt"), b"edited on P\n")?;
        has_content(
            &pp.join("del-a1-edit-a2.txt"),
            b"edited on a2, deleted on a1\n",
        )?;
        absent(&pa2.join("photos"))
    });
    // a1 has taken its own changes in (11 live files on its disk).
    eventually("a1 to scan its changes", &all, || settled(&a1, 11));
    has_content(&pa1.join("edit-p.txt"), b"original\n").unwrap();
    has_content(&pa1.join("both-a1-wins.txt"), b"a1's concurrent edit\n").unwrap();
    let partitioned_at = started.elapsed();

    // Heal.
    t.exec(R1, &["ip", "link", "set", "a1", "up"]).ok();
    eventually("the mesh to reconnect", &all, || {
        peers_are(&a1, &["A2", "P"])?;
        peers_are(&a2, &["A1", "P"])?;
        peers_are(&p, &["A1", "A2"])
    });
    let conflicts_resolved = || {
        converged()?;
        for stem in ["both-a1-wins", "both-a2-wins"] {
            let copies = conflict_copies(&pa1, stem, ".txt");
            if copies.len() != 1 {
                return Err(format!("conflict copies of {stem}.txt: {copies:?}"));
            }
        }
        Ok(())
    };
    eventually(
        "all three to converge after the heal",
        &all,
        conflicts_resolved,
    );
    // And stay so (no second copy, no late revert).
    let quiet_end = Instant::now() + QUIET;
    while Instant::now() < quiet_end {
        if let Err(why) = conflicts_resolved() {
            panic!("after the heal: {why}\n{}", report(&all));
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // What every device holds now.
    let mut want: BTreeMap<String, String> = [
        ("both-a1-wins.txt", "a1's concurrent edit\n"),
        ("both-a2-wins.txt", "a2's concurrent edit\n"),
        ("edit-a1.txt", "edited on a1 alone\n"),
        ("edit-p.txt", "edited on P\n"),
        ("del-a1-edit-a2.txt", "edited on a2, deleted on a1\n"),
        ("edit-a1-del-p.txt", "edited on a1, deleted on P\n"),
        ("docs/final-report.txt", "the report\n"),
        ("pictures/one.jpg", "one\n"),
        ("pictures/two.jpg", "two\n"),
        ("new-p.txt", "new on P\n"),
    ]
    .into_iter()
    .map(|(p, c)| (p.to_string(), daemon_util::describe(c.as_bytes())))
    .collect();
    want.insert(
        "big.bin".into(),
        daemon_util::describe(&random_bytes(1, 2 * MIB)),
    );
    want.insert(
        "new-a1.bin".into(),
        daemon_util::describe(&random_bytes(2, MIB + 5)),
    );
    for (stem, loser) in [
        ("both-a1-wins", "a2's losing edit\n"),
        ("both-a2-wins", "a1's losing edit\n"),
    ] {
        let copy = conflict_copies(&pa1, stem, ".txt").remove(0);
        want.insert(copy, daemon_util::describe(loser.as_bytes()));
    }
    for root in [&pa1, &pa2, &pp] {
        let have = files_of(root).unwrap();
        if have != want {
            panic!(
                "{} holds {have:#?}\nexpected {want:#?}\n{}",
                root.display(),
                report(&all)
            );
        }
        for gone in ["del-a1.txt", "del-p.txt", "docs/report.txt", "photos"] {
            absent(&root.join(gone)).unwrap();
        }
    }
    eprintln!(
        "synced in {synced_at:?}, partitioned (both sides settled) at {partitioned_at:?}, \
         healed and converged at {:?}",
        started.elapsed()
    );
}
