//! End-to-end tests of the daemon (`meshsync run`): real daemons on
//! 127.0.0.1, each with its own state directory and free ports, set up with
//! the real `init`/`share`/`join` commands, watched through `status --json`,
//! the REST API and the disk.
//!
//! Every wait is a poll with a deadline ([`eventually`]); things that must
//! *not* happen are checked over a window after a positive barrier showed
//! the devices are talking ([`holds_for`]). Every daemon is killed when its
//! [`Device`] is dropped, panics included. Tests named `regression_…` pin a
//! bug found while writing this suite: they fail until it is fixed.
//!
//! Each daemon logs to `log-NAME.txt` in its test's sandbox at info level
//! (`MESHSYNC_TEST_LOG` sets another `RUST_LOG` filter); a failed wait
//! prints every device's status and the last 40 lines of its log
//! (`MESHSYNC_TEST_LOG_LINES` for more).

mod daemon_util;
mod security_util;
mod util;

use std::fs;
use std::path::Path;
use std::time::Duration;

use daemon_util::{
    Device, absent, describe, eventually, eventually_within, has_content, holds_for, names_in,
    same_trees, snapshot,
};
use util::{Dir, MIB, Node, random_bytes};

/// Fixed mtimes (with nanoseconds, to catch truncation).
const T1: (i64, u32) = (1_600_000_000, 123_456_789);
const T2: (i64, u32) = (1_600_100_000, 987_654_321);

/// Two devices sharing one folder: A shares `a` (filled by `fill` first), B
/// joins it at `b` with A as its static peer. Neither is started.
fn pair(dir: &Dir, fill: impl FnOnce(&Dir)) -> (Device, Device) {
    dir.mkdir("a");
    fill(dir);
    let a = Device::new(dir, "A");
    let b = Device::new(dir, "B");
    let keys = a.share(&dir.path("a"), None);
    b.join(&keys.read_write, &dir.path("b"), &[&a], None);
    (a, b)
}

/// Waits until the trees at `x` and `y` are equal.
#[track_caller]
fn converge(devices: &[&Device], x: &Path, y: &Path) {
    eventually(
        &format!("{} and {} to converge", x.display(), y.display()),
        devices,
        || same_trees(x, y),
    );
}

// ---------------------------------------------------------------------------
// 1. Initial share

#[test]
fn two_devices_converge_on_an_initial_share() {
    let dir = Dir::new("daemon-initial");
    let big = random_bytes(1, 3 * MIB + 12_345);
    let (mut a, mut b) = pair(&dir, |d| {
        d.write_with("a/top.txt", "top level\n", 0o644, T1);
        d.write_with("a/sub/deep/er/leaf.txt", "leaf\n", 0o640, T2);
        d.mkdir("a/empty/dir");
        d.symlink("sub/deep/er/leaf.txt", "a/link");
        d.symlink("../nowhere", "a/sub/dangling");
        d.symlink("/etc/hostname", "a/absolute");
        d.symlink("sub", "a/dirlink");
        d.write_with("a/run.sh", "#!/bin/sh\necho hi\n", 0o755, T1);
        d.write_with("a/zero", "", 0o644, T2);
        d.write_with("a/big.bin", &big, 0o600, T1);
        d.write_with("a/ünïcödé 😀/名前.txt", "unicode\n", 0o644, T2);
    });
    a.start();
    b.start();
    converge(&[&a, &b], &dir.path("a"), &dir.path("b"));

    let t = snapshot(&dir.path("b")).unwrap();
    // Spot checks on top of equality, so a tree that lost a kind of entry
    // on both sides cannot pass.
    assert_eq!(
        t.get("run.sh"),
        Some(&Node::File {
            content: describe(b"#!/bin/sh\necho hi\n"),
            mode: 0o755,
            mtime: T1
        })
    );
    assert_eq!(
        t.get("link"),
        Some(&Node::Symlink {
            target: "sub/deep/er/leaf.txt".into()
        })
    );
    assert!(
        matches!(t.get("empty/dir"), Some(Node::Dir { .. })),
        "{t:?}"
    );
    assert!(matches!(t.get("zero"), Some(Node::File { content, .. }) if content == "\"\""));
    has_content(&dir.path("b/big.bin"), &big).unwrap();
    has_content(&dir.path("b/ünïcödé 😀/名前.txt"), b"unicode\n").unwrap();

    // Both report the folder idle with the same local counts.
    eventually("both folders idle and counted", &[&a, &b], || {
        let (fa, fb) = (
            a.folder_status(&dir.path("a")),
            b.folder_status(&dir.path("b")),
        );
        for f in [&fa, &fb] {
            if f["state"] != "idle" || f["need_files"] != 0 || f["peers"] != 1 {
                return Err(format!("{f}"));
            }
        }
        if fa["local_files"] != fb["local_files"] || fa["local_bytes"] != fb["local_bytes"] {
            return Err(format!("counts differ: {fa} vs {fb}"));
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// 2. Edits, deletes, renames and moves, both ways

#[test]
fn edits_deletes_renames_and_moves_propagate_both_ways() {
    let dir = Dir::new("daemon-changes");
    let big = random_bytes(2, 2 * MIB);
    let inner = random_bytes(3, MIB + 7);
    let (mut a, mut b) = pair(&dir, |d| {
        d.write_with("a/doc.txt", "version 1\n", 0o644, T1);
        d.write_with("a/gone.txt", "delete me\n", 0o644, T1);
        d.write_with("a/big.bin", &big, 0o644, T1);
        d.write_with("a/dir1/inner.bin", &inner, 0o644, T1);
        d.write_with("a/dir1/sub/note.txt", "note\n", 0o644, T1);
        d.write_with("a/from-b.txt", "b will change this\n", 0o644, T1);
        d.write_with("a/b-deletes.txt", "b will delete this\n", 0o644, T1);
    });
    a.start();
    b.start();
    let (pa, pb) = (dir.path("a"), dir.path("b"));
    converge(&[&a, &b], &pa, &pb);

    // A -> B: an edit (new content, mode and mtime) and a delete.
    dir.write_with("a/doc.txt", "version 2, longer\n", 0o600, T2);
    fs::remove_file(dir.path("a/gone.txt")).unwrap();
    converge(&[&a, &b], &pa, &pb);
    has_content(&dir.path("b/doc.txt"), b"version 2, longer\n").unwrap();
    absent(&dir.path("b/gone.txt")).unwrap();

    // A -> B: a rename costs no transfer (B has the chunks already).
    let before = b.bytes_in();
    fs::rename(dir.path("a/big.bin"), dir.path("a/renamed.bin")).unwrap();
    converge(&[&a, &b], &pa, &pb);
    has_content(&dir.path("b/renamed.bin"), &big).unwrap();
    absent(&dir.path("b/big.bin")).unwrap();
    let fetched = b.bytes_in().saturating_sub(before);
    assert!(
        fetched <= 64 * 1024,
        "renaming a {} byte file made B fetch {fetched} bytes",
        big.len()
    );

    // B -> A: an edit and a delete.
    dir.write_with("b/from-b.txt", "changed on B\n", 0o644, T2);
    fs::remove_file(dir.path("b/b-deletes.txt")).unwrap();
    converge(&[&a, &b], &pa, &pb);
    has_content(&dir.path("a/from-b.txt"), b"changed on B\n").unwrap();
    absent(&dir.path("a/b-deletes.txt")).unwrap();

    // B -> A: a directory move into a new parent costs no transfer.
    let before = a.bytes_in();
    dir.mkdir("b/moved/deeper");
    fs::rename(dir.path("b/dir1"), dir.path("b/moved/deeper/dir1")).unwrap();
    converge(&[&a, &b], &pa, &pb);
    has_content(&dir.path("a/moved/deeper/dir1/inner.bin"), &inner).unwrap();
    has_content(&dir.path("a/moved/deeper/dir1/sub/note.txt"), b"note\n").unwrap();
    absent(&dir.path("a/dir1")).unwrap();
    let fetched = a.bytes_in().saturating_sub(before);
    assert!(
        fetched <= 64 * 1024,
        "moving a directory holding {} bytes made A fetch {fetched} bytes",
        inner.len()
    );

    // A -> B: a copy of a file B holds costs no transfer either.
    let before = b.bytes_in();
    fs::copy(pa.join("renamed.bin"), pa.join("copy.bin")).unwrap();
    converge(&[&a, &b], &pa, &pb);
    let fetched = b.bytes_in().saturating_sub(before);
    assert!(
        fetched <= 64 * 1024,
        "copying a {} byte file made B fetch {fetched} bytes",
        big.len()
    );

    // A -> B: a few bytes changed in the middle of a large file cost a
    // chunk or two (chunks average 64 KiB), not the file.
    let before = b.bytes_in();
    let mut edited = big.clone();
    edited[MIB..MIB + 10].copy_from_slice(b"0123456789");
    dir.write_with("a/renamed.bin", &edited, 0o644, T2);
    converge(&[&a, &b], &pa, &pb);
    has_content(&pb.join("renamed.bin"), &edited).unwrap();
    let fetched = b.bytes_in().saturating_sub(before);
    assert!(
        fetched <= 512 * 1024,
        "changing 10 bytes of a {} byte file made B fetch {fetched} bytes",
        big.len()
    );
}

#[test]
fn metadata_and_kind_changes_propagate() {
    let dir = Dir::new("daemon-kinds");
    let (mut a, mut b) = pair(&dir, |d| {
        d.write_with("a/mode.txt", "mode\n", 0o644, T1);
        d.write_with("a/mtime.txt", "mtime\n", 0o644, T1);
        d.write_with("a/becomes-dir", "a file for now\n", 0o644, T1);
        d.mkdir("a/becomes-file");
        d.write_with("a/becomes-file/inside.txt", "inside\n", 0o644, T1);
        d.symlink("mode.txt", "a/link");
        d.write_with("a/tree/x/y/z.txt", "deep\n", 0o644, T1);
        d.write_with("a/tree/w.txt", "w\n", 0o644, T1);
        d.mkdir("a/empty");
    });
    a.start();
    b.start();
    let (pa, pb) = (dir.path("a"), dir.path("b"));
    converge(&[&a, &b], &pa, &pb);

    dir.chmod("a/mode.txt", 0o700);
    dir.set_mtime("a/mtime.txt", T2);
    fs::remove_file(dir.path("a/becomes-dir")).unwrap();
    dir.write_with("a/becomes-dir/child.txt", "now a dir\n", 0o644, T2);
    fs::remove_dir_all(dir.path("a/becomes-file")).unwrap();
    dir.write_with("a/becomes-file", "now a file\n", 0o644, T2);
    fs::remove_file(dir.path("a/link")).unwrap();
    dir.symlink("mtime.txt", "a/link");
    fs::remove_dir_all(dir.path("a/tree")).unwrap();
    fs::remove_dir(dir.path("a/empty")).unwrap();
    converge(&[&a, &b], &pa, &pb);

    let t = snapshot(&pb).unwrap();
    assert!(matches!(
        t.get("mode.txt"),
        Some(Node::File { mode: 0o700, .. })
    ));
    assert!(matches!(t.get("mtime.txt"), Some(Node::File { mtime, .. }) if *mtime == T2));
    has_content(&pb.join("becomes-dir/child.txt"), b"now a dir\n").unwrap();
    has_content(&pb.join("becomes-file"), b"now a file\n").unwrap();
    assert_eq!(
        t.get("link"),
        Some(&Node::Symlink {
            target: "mtime.txt".into()
        })
    );
    absent(&pb.join("tree")).unwrap();
    absent(&pb.join("empty")).unwrap();
}

#[test]
fn an_edit_beats_a_concurrent_delete() {
    let dir = Dir::new("daemon-edit-delete");
    let (mut a, mut b) = pair(&dir, |d| {
        d.write_with("a/contested.txt", "original\n", 0o644, T1);
        d.write_with("a/dir/inner.txt", "inner\n", 0o644, T1);
        d.write_with("a/dir/other.txt", "other\n", 0o644, T1);
    });
    a.start();
    b.start();
    let (pa, pb) = (dir.path("a"), dir.path("b"));
    converge(&[&a, &b], &pa, &pb);

    a.pause(&pa);
    b.pause(&pb);
    eventually("both folders stopped", &[&a, &b], || {
        for (d, p) in [(&a, &pa), (&b, &pb)] {
            if d.folder_status(p)["state"] != "stopped" {
                return Err(format!("{} not stopped", d.name));
            }
        }
        Ok(())
    });
    fs::remove_file(pa.join("contested.txt")).unwrap();
    dir.write_with("b/contested.txt", "edited on B\n", 0o644, T2);
    // The same for a directory: A removes it, B edits a file in it.
    fs::remove_dir_all(pa.join("dir")).unwrap();
    dir.write_with("b/dir/inner.txt", "inner edited on B\n", 0o644, T2);
    a.resume(&pa);
    b.resume(&pb);
    eventually("the edits on both", &[&a, &b], || {
        same_trees(&pa, &pb)?;
        has_content(&pa.join("contested.txt"), b"edited on B\n")?;
        has_content(&pa.join("dir/inner.txt"), b"inner edited on B\n")
    });
}

#[test]
fn a_rename_against_a_concurrent_edit_loses_nothing() {
    let dir = Dir::new("daemon-rename-edit");
    let (mut a, mut b) = pair(&dir, |d| {
        d.write_with("a/x.txt", "original\n", 0o644, T1);
    });
    a.start();
    b.start();
    let (pa, pb) = (dir.path("a"), dir.path("b"));
    let all = [&a, &b];
    converge(&all, &pa, &pb);
    pause_and_wait(&a, &pa, &all);
    pause_and_wait(&b, &pb, &all);
    fs::rename(pa.join("x.txt"), pa.join("y.txt")).unwrap();
    dir.write_with("b/x.txt", "edited on B\n", 0o644, T2);
    a.resume(&pa);
    b.resume(&pb);
    eventually("both versions on both devices", &all, || {
        same_trees(&pa, &pb)?;
        let t = snapshot(&pa)?;
        let has = |content: &[u8]| {
            t.values()
                .any(|n| matches!(n, Node::File { content: c, .. } if *c == describe(content)))
        };
        if !has(b"edited on B\n") {
            return Err(format!("B's edit is gone: {:?}", t.keys()));
        }
        has_content(&pa.join("y.txt"), b"original\n")
    });
}

#[test]
fn a_paused_folder_takes_nothing_until_resumed() {
    let dir = Dir::new("daemon-pause");
    let (mut a, mut b) = pair(&dir, |d| {
        d.write_with("a/first.txt", "first\n", 0o644, T1);
    });
    a.start();
    b.start();
    let (pa, pb) = (dir.path("a"), dir.path("b"));
    converge(&[&a, &b], &pa, &pb);

    b.pause(&pb);
    eventually("B's folder stopped", &[&a, &b], || {
        let f = b.folder_status(&pb);
        (f["state"] == "stopped")
            .then_some(())
            .ok_or(format!("{f}"))
    });
    dir.write_with("a/while-paused.txt", "sent while B was paused\n", 0o644, T2);
    fs::remove_file(pa.join("first.txt")).unwrap();
    dir.write_with("b/local-while-paused.txt", "made while paused\n", 0o644, T2);
    eventually("A scanned its changes", &[&a, &b], || {
        let f = a.folder_status(&pa);
        // Only while-paused.txt (24 bytes).
        (f["local_files"] == 1 && f["local_bytes"] == 24)
            .then_some(())
            .ok_or(format!("{f}"))
    });
    holds_for(QUIET, "B holding still", &[&a, &b], || {
        absent(&pb.join("while-paused.txt"))?;
        has_content(&pb.join("first.txt"), b"first\n")?;
        absent(&pa.join("local-while-paused.txt"))
    });
    // The pause is saved in the config (a restart keeps it).
    let config = fs::read_to_string(b.home.join("config.toml")).unwrap();
    assert!(config.contains("paused = true"), "{config}");

    b.resume(&pb);
    converge(&[&a, &b], &pa, &pb);
    has_content(&pa.join("local-while-paused.txt"), b"made while paused\n").unwrap();
    absent(&pb.join("first.txt")).unwrap();
}

// Bug: a folder paused when a peer connected was refused on that connection
// and `resume` never offered it again: it stayed unsynced until one side
// restarted.
#[test]
fn regression_folder_resumed_while_connected_is_offered() {
    let dir = Dir::new("daemon-resume-connected");
    let (mut a, mut b) = pair(&dir, |d| {
        d.write_with("a/x.txt", "from A\n", 0o644, T1);
    });
    let (pa, pb) = (dir.path("a"), dir.path("b"));
    // No daemon runs yet: the pause goes into B's config.
    b.pause(&pb);
    a.start();
    b.start();
    eventually("A and B connected", &[&a, &b], || {
        (a.peer_count() == 1 && b.peer_count() == 1)
            .then_some(())
            .ok_or_else(|| "not connected".to_owned())
    });
    holds_for(QUIET, "B holding still while paused", &[&a, &b], || {
        absent(&pb.join("x.txt"))
    });
    b.resume(&pb);
    converge(&[&a, &b], &pa, &pb);
}

// Bug: a folder added while the daemon runs (share/join, picked up by the
// config reload) is synced once but never watched: its later local changes
// wait for the hourly rescan (watch_folders runs once, at start).
#[test]
fn regression_folder_added_while_running_is_watched() {
    let dir = Dir::new("daemon-live-join");
    let mut a = Device::new(&dir, "A");
    let mut b = Device::new(&dir, "B");
    a.start();
    b.start();
    dir.write_with("a/hello.txt", "shared while running\n", 0o644, T1);
    let keys = a.share(&dir.path("a"), None);
    b.join(&keys.read_write, &dir.path("b"), &[&a], None);
    let (pa, pb) = (dir.path("a"), dir.path("b"));
    converge(&[&a, &b], &pa, &pb);
    has_content(&pb.join("hello.txt"), b"shared while running\n").unwrap();
    dir.write_with("b/back.txt", "and back\n", 0o644, T2);
    converge(&[&a, &b], &pa, &pb);
    has_content(&pa.join("back.txt"), b"and back\n").unwrap();
}

// Bug: the config was read again only after 2 s without any event, so a
// folder shared while another folder kept changing (a file written every
// few hundred milliseconds: scans, state events) was never opened.
#[test]
fn regression_folder_shared_while_events_flow_is_opened() {
    let dir = Dir::new("daemon-join-busy");
    dir.write_with("busy/log.txt", "0\n", 0o644, T1);
    let mut a = Device::new(&dir, "A");
    a.share(&dir.path("busy"), None);
    a.start();
    // Events keep flowing: the busy folder changes every 300 ms.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, log) = (std::sync::Arc::clone(&stop), dir.path("busy/log.txt"));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                fs::write(&log, format!("{n}\n")).unwrap();
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let mut events = a.events(Duration::from_secs(10));
    let mut seen = 0;
    while seen < 3 {
        events
            .next_event()
            .expect("events while the busy folder changes");
        seen += 1;
    }
    dir.write_with("late/hello.txt", "shared while busy\n", 0o644, T1);
    a.share(&dir.path("late"), None);
    let late = fs::canonicalize(dir.path("late")).unwrap();
    eventually_within(
        Duration::from_secs(20),
        "the late folder to be opened",
        &[&a],
        || {
            let status = a.status();
            let files = status["folders"]
                .as_array()
                .expect("folders")
                .iter()
                .find(|f| f["path"].as_str().map(Path::new) == Some(late.as_path()))
                .and_then(|f| f["local_files"].as_u64());
            match files {
                Some(1) => Ok(()),
                other => Err(format!("local_files {other:?}")),
            }
        },
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
}

// ---------------------------------------------------------------------------
// 3. More devices

#[test]
fn five_devices_in_star_and_chain_converge() {
    // A is the hub; B and C dial A (star); D dials C, E dials D (chain).
    let dir = Dir::new("daemon-five");
    dir.write_with("a/from-a.txt", "initial, from A\n", 0o644, T1);
    dir.write_with("a/sub/payload.bin", random_bytes(5, 300_000), 0o644, T1);
    let mut a = Device::new(&dir, "A");
    let keys = a.share(&dir.path("a"), None);
    let mut b = Device::new(&dir, "B");
    b.join(&keys.read_write, &dir.path("b"), &[&a], None);
    let mut c = Device::new(&dir, "C");
    c.join(&keys.read_write, &dir.path("c"), &[&a], None);
    let mut d = Device::new(&dir, "D");
    d.join(&keys.read_write, &dir.path("d"), &[&c], None);
    let mut e = Device::new(&dir, "E");
    e.join(&keys.read_write, &dir.path("e"), &[&d], None);
    for dev in [&mut a, &mut b, &mut c, &mut d, &mut e] {
        dev.start();
    }
    let all = [&a, &b, &c, &d, &e];
    let paths: Vec<_> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| dir.path(n))
        .collect();
    let all_equal = || -> Result<(), String> {
        for p in &paths[1..] {
            same_trees(&paths[0], p).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        Ok(())
    };
    eventually("A's initial files on all five", &all, all_equal);

    // From the end of the chain to everyone, and from a star leaf to the
    // end of the chain.
    dir.write_with("e/from-e.txt", "added on E\n", 0o644, T2);
    dir.write_with("b/from-b/deep.txt", "added on B\n", 0o644, T2);
    eventually("E's and B's files on all five", &all, || {
        all_equal()?;
        has_content(&dir.path("a/from-e.txt"), b"added on E\n")?;
        has_content(&dir.path("e/from-b/deep.txt"), b"added on B\n")
    });
}

#[test]
fn devices_that_dial_each_other_keep_one_connection() {
    let dir = Dir::new("daemon-mutual");
    dir.write_with("a/from-a.txt", "a\n", 0o644, T1);
    let mut a = Device::new(&dir, "A");
    let mut b = Device::new(&dir, "B");
    // B lists A, and A (re-shared config) lists B: both dial.
    let keys = a.share(&dir.path("a"), None);
    b.join(&keys.read_write, &dir.path("b"), &[&a], None);
    let config = a.home.join("config.toml");
    let text = fs::read_to_string(&config).unwrap();
    let text = text.replace("peers = []", &format!("peers = [\"{}\"]", b.listen));
    assert!(text.contains(&b.listen.to_string()), "{text}");
    fs::write(&config, text).unwrap();
    a.start();
    b.start();
    let (pa, pb) = (dir.path("a"), dir.path("b"));
    converge(&[&a, &b], &pa, &pb);
    dir.write_with("b/from-b.txt", "b\n", 0o644, T2);
    converge(&[&a, &b], &pa, &pb);

    // A dial made before the other side was up may still complete (QUIC
    // retransmits its handshake) and be closed as a duplicate; let that
    // settle. Then, over two redial rounds (every 3 s), nothing may churn.
    std::thread::sleep(Duration::from_secs(2));
    let connects = |d: &Device| d.log_text().matches(" connected (").count();
    let (ca, cb) = (connects(&a), connects(&b));
    holds_for(
        Duration::from_secs(7),
        "one stable connection",
        &[&a, &b],
        || {
            for d in [&a, &b] {
                if d.peer_count() != 1 {
                    return Err(format!("{} has {} peers", d.name, d.peer_count()));
                }
            }
            if connects(&a) != ca || connects(&b) != cb {
                return Err("a new connection was made".into());
            }
            Ok(())
        },
    );
}

#[test]
fn two_folders_sync_separately() {
    // A shares two folders; B joins both, C only the second.
    let dir = Dir::new("daemon-two-folders");
    dir.write_with("a1/one.txt", "folder one\n", 0o644, T1);
    dir.write_with("a2/two.txt", "folder two\n", 0o644, T1);
    let mut a = Device::new(&dir, "A");
    let mut b = Device::new(&dir, "B");
    let mut c = Device::new(&dir, "C");
    let k1 = a.share(&dir.path("a1"), None);
    let k2 = a.share(&dir.path("a2"), None);
    b.join(&k1.read_write, &dir.path("b1"), &[&a], None);
    b.join(&k2.read_write, &dir.path("b2"), &[&a], None);
    c.join(&k2.read_write, &dir.path("c2"), &[&a], None);
    a.start();
    b.start();
    c.start();
    let all = [&a, &b, &c];
    eventually("each folder on its devices", &all, || {
        same_trees(&dir.path("a1"), &dir.path("b1"))?;
        same_trees(&dir.path("a2"), &dir.path("b2"))?;
        same_trees(&dir.path("a2"), &dir.path("c2"))
    });
    dir.write_with("c2/from-c.txt", "from C\n", 0o644, T2);
    dir.write_with("b1/from-b.txt", "from B\n", 0o644, T2);
    eventually("the changes in their own folders only", &all, || {
        has_content(&dir.path("b2/from-c.txt"), b"from C\n")?;
        has_content(&dir.path("a1/from-b.txt"), b"from B\n")?;
        same_trees(&dir.path("a1"), &dir.path("b1"))?;
        same_trees(&dir.path("a2"), &dir.path("b2"))?;
        same_trees(&dir.path("a2"), &dir.path("c2"))
    });
    assert_eq!(a.folder_status(&dir.path("a1"))["peers"], 1);
    assert_eq!(a.folder_status(&dir.path("a2"))["peers"], 2);
    assert_eq!(c.status()["folders"].as_array().unwrap().len(), 1);
}

#[test]
fn ignored_paths_are_not_sent() {
    let dir = Dir::new("daemon-ignore");
    let (mut a, mut b) = pair(&dir, |d| {
        d.write("a/.meshsyncignore", "*.tmp\n/build/\n");
        d.write_with("a/keep.txt", "kept\n", 0o644, T1);
        d.write_with("a/skip.tmp", "ignored\n", 0o644, T1);
        d.write_with("a/build/out.o", "ignored\n", 0o644, T1);
        d.write_with("a/src/build/kept.txt", "not anchored\n", 0o644, T1);
    });
    a.start();
    b.start();
    let (pa, pb) = (dir.path("a"), dir.path("b"));
    eventually("the kept files on B", &[&a, &b], || {
        has_content(&pb.join("keep.txt"), b"kept\n")?;
        has_content(&pb.join("src/build/kept.txt"), b"not anchored\n")
    });
    dir.write_with("a/later.tmp", "ignored too\n", 0o644, T2);
    dir.write_with("a/later.txt", "sent\n", 0o644, T2);
    eventually("A's later file on B", &[&a, &b], || {
        has_content(&pb.join("later.txt"), b"sent\n")
    });
    holds_for(QUIET, "ignored paths staying on A", &[&a, &b], || {
        absent(&pb.join("skip.tmp"))?;
        absent(&pb.join("later.tmp"))?;
        absent(&pb.join("build"))
    });
    has_content(&pa.join("skip.tmp"), b"ignored\n").unwrap();
}

// ---------------------------------------------------------------------------
// 4. Conflicts

/// Names of conflict copies of `stem.ext` in `dir`.
fn conflict_copies(dir: &Path, stem: &str, ext: &str) -> Vec<String> {
    names_in(dir)
        .into_iter()
        .filter(|n| n.starts_with(&format!("{stem}.sync-conflict-")) && n.ends_with(ext))
        .collect()
}

#[test]
fn concurrent_edits_keep_the_loser_as_a_conflict_copy_everywhere() {
    // A and B edit; C (dialling A) only watches.
    let dir = Dir::new("daemon-conflict");
    let (mut a, mut b) = pair(&dir, |d| {
        d.write_with("a/note.txt", "original\n", 0o644, T1);
    });
    let mut c = Device::new(&dir, "C");
    c.join(&a.folder_key(0), &dir.path("c"), &[&a], None);
    a.start();
    b.start();
    c.start();
    let (pa, pb, pc) = (dir.path("a"), dir.path("b"), dir.path("c"));
    let all = [&a, &b, &c];
    eventually("the three to converge", &all, || {
        same_trees(&pa, &pb)?;
        same_trees(&pa, &pc)
    });
    pause_and_wait(&a, &pa, &all);
    pause_and_wait(&b, &pb, &all);
    // B's edit is newer (by mtime): it keeps the name.
    let older = (T2.0 + 100, 0);
    let newer = (T2.0 + 200, 0);
    dir.write_with("a/note.txt", "edited on A\n", 0o644, older);
    dir.write_with("b/note.txt", "edited on B\n", 0o644, newer);
    a.resume(&pa);
    b.resume(&pb);

    eventually("the conflict resolved the same on all three", &all, || {
        same_trees(&pa, &pb)?;
        same_trees(&pa, &pc)?;
        let copies = conflict_copies(&pa, "note", ".txt");
        if copies.len() != 1 {
            return Err(format!("conflict copies on A: {copies:?}"));
        }
        Ok(())
    });
    for p in [&pa, &pb, &pc] {
        has_content(&p.join("note.txt"), b"edited on B\n").unwrap();
        let copies = conflict_copies(p, "note", ".txt");
        assert_eq!(copies.len(), 1, "{copies:?}");
        has_content(&p.join(&copies[0]), b"edited on A\n").unwrap();
        // NAME.sync-conflict-YYYYMMDD-HHMMSS-DEVICE-tag.EXT
        let middle = copies[0]
            .strip_prefix("note.sync-conflict-")
            .and_then(|s| s.strip_suffix(".txt"))
            .unwrap();
        let parts: Vec<&str> = middle.splitn(3, '-').collect();
        assert!(
            parts.len() == 3
                && parts[0].len() == 8
                && parts[1].len() == 6
                && parts[0]
                    .chars()
                    .chain(parts[1].chars())
                    .all(|c| c.is_ascii_digit())
                && parts[2].split_once('-').is_some_and(|(device, tag)| {
                    !device.is_empty()
                        && tag.len() == 6
                        && tag.bytes().all(|b| b.is_ascii_lowercase())
                }),
            "conflict copy name {:?}",
            copies[0]
        );
    }
}

/// Pauses the folder and waits until its state says so.
#[track_caller]
fn pause_and_wait(d: &Device, p: &Path, all: &[&Device]) {
    d.pause(p);
    eventually(&format!("{}'s folder stopped", d.name), all, || {
        let f = d.folder_status(p);
        (f["state"] == "stopped")
            .then_some(())
            .ok_or(format!("{f}"))
    });
}

/// Concurrent edits on A (older) and B (newer, the winner), each device
/// scanning its edit while the other holds still; then `first` syncs alone,
/// and the other one joins in a later second (conflict names carry the
/// time). Every device must end with B's edit at the name and one copy of
/// A's.
fn staggered_conflict(name: &str, loser_first: bool) {
    let dir = Dir::new(name);
    let (mut a, mut b) = pair(&dir, |d| {
        d.write_with("a/note.txt", "original\n", 0o644, T1);
    });
    a.start();
    b.start();
    let (pa, pb) = (dir.path("a"), dir.path("b"));
    let all = [&a, &b];
    converge(&all, &pa, &pb);
    pause_and_wait(&a, &pa, &all);
    pause_and_wait(&b, &pb, &all);
    dir.write_with("a/note.txt", "edited on A\n", 0o644, (T2.0 + 100, 0));
    dir.write_with("b/note.txt", "edited on B\n", 0o644, (T2.0 + 200, 0));
    let (first, pf, second, ps) = if loser_first {
        (&a, &pa, &b, &pb)
    } else {
        (&b, &pb, &a, &pa)
    };
    // The second device scans and announces its edit, then holds still.
    second.resume(ps);
    eventually("the second device to scan its edit", &all, || {
        let f = second.folder_status(ps);
        (f["state"] == "idle" && f["local_bytes"] == 12)
            .then_some(())
            .ok_or(format!("{f}"))
    });
    std::thread::sleep(Duration::from_millis(500));
    pause_and_wait(second, ps, &all);
    // The first one syncs alone ...
    first.resume(pf);
    eventually("the first device to settle", &all, || {
        let f = first.folder_status(pf);
        (f["state"] == "idle" && f["need_files"] == 0)
            .then_some(())
            .ok_or(format!("{f}"))
    });
    // ... then the second, a second later.
    std::thread::sleep(Duration::from_millis(1100));
    second.resume(ps);
    eventually("the conflict resolved the same on both", &all, || {
        same_trees(&pa, &pb)?;
        has_content(&pa.join("note.txt"), b"edited on B\n")
    });
    holds_for(QUIET, "one conflict copy", &all, || {
        same_trees(&pa, &pb)?;
        let copies = conflict_copies(&pa, "note", ".txt");
        if copies.len() != 1 {
            return Err(format!("conflict copies: {copies:?}"));
        }
        has_content(&pa.join(&copies[0]), b"edited on A\n")
    });
}

#[test]
fn a_conflict_the_winner_syncs_first_makes_one_copy() {
    staggered_conflict("daemon-conflict-winner-first", false);
}

#[test]
fn a_conflict_the_loser_syncs_first_makes_one_copy() {
    staggered_conflict("daemon-conflict-loser-first", true);
}

// ---------------------------------------------------------------------------
// 5. Folder modes and key types

/// How long a change that must not propagate is watched for, after a
/// barrier showed the devices are exchanging changes.
const QUIET: Duration = Duration::from_secs(2);

#[test]
fn send_only_device_sends_but_ignores_remote_edits() {
    let dir = Dir::new("daemon-send-only");
    dir.write_with("s/shared.txt", "from S\n", 0o644, T1);
    dir.write_with("s/a-deletes.txt", "A will delete this\n", 0o644, T1);
    let mut s = Device::new(&dir, "S");
    let mut a = Device::new(&dir, "A");
    let keys = s.share(&dir.path("s"), Some("send-only"));
    a.join(&keys.read_write, &dir.path("a"), &[&s], None);
    s.start();
    a.start();
    let (ps, pa) = (dir.path("s"), dir.path("a"));
    converge(&[&s, &a], &ps, &pa);
    assert_eq!(s.folder_status(&ps)["mode"], "send-only");

    // A remote edit and a remote addition are not applied on S...
    dir.write_with("a/shared.txt", "edited on A\n", 0o644, T2);
    dir.write_with("a/from-a.txt", "added on A\n", 0o644, T2);
    fs::remove_file(dir.path("a/a-deletes.txt")).unwrap();
    // ... while S's own changes still go out (the barrier: S's later edit
    // reaches A, so A's changes had time to reach S).
    eventually("A scanned its edits", &[&s, &a], || {
        let f = a.folder_status(&pa);
        // shared.txt (12 bytes) and from-a.txt (11).
        (f["local_files"] == 2 && f["local_bytes"] == 23)
            .then_some(())
            .ok_or(format!("{f}"))
    });
    dir.write_with("s/from-s.txt", "added on S\n", 0o644, T2);
    eventually("S's addition reaches A", &[&s, &a], || {
        has_content(&dir.path("a/from-s.txt"), b"added on S\n")
    });
    holds_for(QUIET, "S ignoring A's edits", &[&s, &a], || {
        has_content(&dir.path("s/shared.txt"), b"from S\n")?;
        has_content(&dir.path("s/a-deletes.txt"), b"A will delete this\n")?;
        absent(&dir.path("s/from-a.txt"))?;
        // A's own edit is not reverted either.
        has_content(&dir.path("a/shared.txt"), b"edited on A\n")
    });
}

#[test]
fn receive_only_device_keeps_its_edits_local() {
    let dir = Dir::new("daemon-receive-only");
    let (mut a, mut r) = {
        dir.write_with("a/shared.txt", "from A\n", 0o644, T1);
        let a = Device::new(&dir, "A");
        let r = Device::new(&dir, "R");
        let keys = a.share(&dir.path("a"), None);
        r.join(
            &keys.read_write,
            &dir.path("r"),
            &[&a],
            Some("receive-only"),
        );
        (a, r)
    };
    a.start();
    r.start();
    let (pa, pr) = (dir.path("a"), dir.path("r"));
    converge(&[&a, &r], &pa, &pr);

    dir.write_with("r/shared.txt", "edited on R\n", 0o644, T2);
    dir.write_with("r/from-r.txt", "added on R\n", 0o644, T2);
    eventually("R to scan its edits", &[&a, &r], || {
        let f = r.folder_status(&pr);
        (f["mode"] == "receive-only" && f["local_files"] == 2)
            .then_some(())
            .ok_or(format!("{f}"))
    });
    // Barrier: A's later change reaches R.
    dir.write_with("a/later.txt", "later, from A\n", 0o644, T2);
    eventually("A's later file reaches R", &[&a, &r], || {
        has_content(&dir.path("r/later.txt"), b"later, from A\n")
    });
    holds_for(QUIET, "R's edits staying local", &[&a, &r], || {
        has_content(&dir.path("a/shared.txt"), b"from A\n")?;
        absent(&dir.path("a/from-r.txt"))?;
        has_content(&dir.path("r/shared.txt"), b"edited on R\n")?;
        has_content(&dir.path("r/from-r.txt"), b"added on R\n")
    });
}

#[test]
fn backup_device_never_deletes() {
    let dir = Dir::new("daemon-backup");
    dir.write_with("a/keep.txt", "deleted on A, kept on K\n", 0o644, T1);
    dir.write_with("a/edit.txt", "first version\n", 0o644, T1);
    let mut a = Device::new(&dir, "A");
    let mut k = Device::new(&dir, "K");
    let keys = a.share(&dir.path("a"), None);
    k.join(&keys.read_write, &dir.path("k"), &[&a], Some("backup"));
    a.start();
    k.start();
    let (pa, pk) = (dir.path("a"), dir.path("k"));
    converge(&[&a, &k], &pa, &pk);
    assert_eq!(k.folder_status(&pk)["mode"], "backup");

    fs::remove_file(dir.path("a/keep.txt")).unwrap();
    dir.write_with("a/edit.txt", "second version\n", 0o644, T2);
    let versions = pk.join(".meshsync/versions");
    eventually("K to take the edit", &[&a, &k], || {
        has_content(&dir.path("k/edit.txt"), b"second version\n")
    });
    // The replaced version and the deleted file survive: at their path or
    // under .meshsync/versions/ (the daemon moves them there).
    let survives = |content: &[u8]| -> bool {
        daemon_util::files_below(&pk)
            .iter()
            .any(|(_, c)| c.as_slice() == content)
    };
    eventually("the old version kept in versions", &[&a, &k], || {
        daemon_util::files_below(&versions)
            .iter()
            .any(|(_, c)| c.as_slice() == b"first version\n")
            .then_some(())
            .ok_or(format!(
                "versions: {:?}",
                daemon_util::files_below(&versions)
            ))
    });
    holds_for(QUIET, "the deleted file to survive on K", &[&a, &k], || {
        survives(b"deleted on A, kept on K\n")
            .then_some(())
            .ok_or("keep.txt's content is gone from K".into())
    });
    // A is not given the file back, and K is not treated as having it.
    absent(&dir.path("a/keep.txt")).unwrap();
}

#[test]
fn read_only_key_device_edits_never_propagate() {
    let dir = Dir::new("daemon-read-only");
    dir.write_with("a/shared.txt", "from A\n", 0o644, T1);
    dir.write_with("a/a-deletes.txt", "A will delete this\n", 0o644, T1);
    dir.write_with("a/o-deletes.txt", "O will delete this\n", 0o644, T1);
    let mut a = Device::new(&dir, "A");
    let mut o = Device::new(&dir, "O");
    let keys = a.share(&dir.path("a"), None);
    // Even with a mode that would send, the read-only key cannot.
    o.join(&keys.read_only, &dir.path("o"), &[&a], Some("send-receive"));
    a.start();
    o.start();
    let (pa, po) = (dir.path("a"), dir.path("o"));
    converge(&[&a, &o], &pa, &po);
    assert_eq!(o.folder_status(&po)["key_type"], "read-only");

    dir.write_with("o/shared.txt", "edited on O\n", 0o644, T2);
    dir.write_with("o/from-o.txt", "added on O\n", 0o644, T2);
    fs::create_dir(dir.path("o/dir-from-o")).unwrap();
    fs::remove_file(dir.path("o/o-deletes.txt")).unwrap();
    eventually("O to scan its edits", &[&a, &o], || {
        let f = o.folder_status(&po);
        // shared.txt (12 bytes), from-o.txt (11), a-deletes.txt (19).
        (f["local_files"] == 3 && f["local_bytes"] == 42)
            .then_some(())
            .ok_or(format!("{f}"))
    });
    // O still receives: an addition and a delete.
    dir.write_with("a/later.txt", "later, from A\n", 0o644, T2);
    fs::remove_file(dir.path("a/a-deletes.txt")).unwrap();
    eventually("A's later changes reach O", &[&a, &o], || {
        has_content(&dir.path("o/later.txt"), b"later, from A\n")?;
        absent(&dir.path("o/a-deletes.txt"))
    });
    holds_for(QUIET, "O's edits staying local", &[&a, &o], || {
        has_content(&dir.path("a/shared.txt"), b"from A\n")?;
        has_content(&dir.path("a/o-deletes.txt"), b"O will delete this\n")?;
        absent(&dir.path("a/from-o.txt"))?;
        absent(&dir.path("a/dir-from-o"))
    });
}

// Bug: `local_only_changes` stays 0 on receive-only and read-only-key
// devices that hold local changes (the plan is made against a global view
// that already contains the local index, so nothing is "local only").
#[test]
fn regression_local_only_changes_are_counted() {
    let dir = Dir::new("daemon-local-only");
    dir.write_with("a/shared.txt", "from A\n", 0o644, T1);
    let mut a = Device::new(&dir, "A");
    let mut r = Device::new(&dir, "R");
    let mut o = Device::new(&dir, "O");
    let keys = a.share(&dir.path("a"), None);
    r.join(
        &keys.read_write,
        &dir.path("r"),
        &[&a],
        Some("receive-only"),
    );
    o.join(&keys.read_only, &dir.path("o"), &[&a], None);
    a.start();
    r.start();
    o.start();
    let (pa, pr, po) = (dir.path("a"), dir.path("r"), dir.path("o"));
    eventually("R and O to receive A's file", &[&a, &r, &o], || {
        same_trees(&pa, &pr)?;
        same_trees(&pa, &po)
    });
    for p in [&pr, &po] {
        fs::write(p.join("shared.txt"), "edited locally\n").unwrap();
        fs::write(p.join("local.txt"), "added locally\n").unwrap();
    }
    daemon_util::eventually_within(
        Duration::from_secs(8),
        "R and O to report local-only changes",
        &[&r, &o],
        || {
            for (d, p) in [(&r, &pr), (&o, &po)] {
                let f = d.folder_status(p);
                if f["local_files"] != 2 || f["local_only_changes"].as_u64() < Some(2) {
                    return Err(format!("{}: {f}", d.name));
                }
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------
// 6. Wrong key

#[test]
fn device_with_another_folders_key_receives_nothing() {
    let dir = Dir::new("daemon-wrong-key");
    dir.write_with("a/secret.txt", "only for holders of A's key\n", 0o644, T1);
    let mut a = Device::new(&dir, "A");
    a.share(&dir.path("a"), None);
    // A key of another folder (made on a device that never runs).
    let other = Device::new(&dir, "X");
    let other_keys = other.share(&dir.path("x"), None);
    let mut c = Device::new(&dir, "C");
    c.join(&other_keys.read_write, &dir.path("c"), &[&a], None);
    a.start();
    c.start();

    // The devices connect, and the folder is refused.
    eventually(
        "the connection and a refusal in the logs",
        &[&a, &c],
        || {
            if c.peer_count() != 1 {
                return Err("C is not connected to A".into());
            }
            let logs = format!("{}\n{}", a.log_text(), c.log_text()).to_lowercase();
            logs.contains("refused")
                .then_some(())
                .ok_or("no \"refused\" in the logs".into())
        },
    );
    holds_for(QUIET, "C receiving nothing", &[&a, &c], || {
        let names = names_in(&dir.path("c"));
        if names != [".meshsync"] {
            return Err(format!("C's folder holds {names:?}"));
        }
        let f = c.folder_status(&dir.path("c"));
        if f["peers"] != 0 {
            return Err(format!("C shares the folder with a peer: {f}"));
        }
        if c.bytes_in() != 0 {
            return Err("C fetched chunk data".into());
        }
        Ok(())
    });
    has_content(&dir.path("a/secret.txt"), b"only for holders of A's key\n").unwrap();
}

// ---------------------------------------------------------------------------
// 7. Crash safety

#[test]
fn killed_receiver_resumes_its_partial_download_without_a_torn_file() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    const SIZE: usize = 64 * MIB;
    let dir = Dir::new("daemon-crash");
    let data = random_bytes(7, SIZE);
    let want = blake3::hash(&data);
    let (mut a, mut b) = pair(&dir, |d| {
        d.write_with("a/huge.bin", &data, 0o644, T1);
    });
    drop(data);
    let target = dir.path("b/huge.bin");
    let partial_dir = dir.path("b/.meshsync/partial");

    // Watches the target the whole time: absent, or complete.
    let stop = Arc::new(AtomicBool::new(false));
    let torn: Arc<Mutex<Vec<String>>> = Arc::default();
    let watcher = {
        let (stop, torn, target) = (Arc::clone(&stop), Arc::clone(&torn), target.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(bytes) = fs::read(&target)
                    && blake3::hash(&bytes) != want
                {
                    torn.lock().unwrap().push(format!(
                        "{} held {} bytes that are not the file",
                        target.display(),
                        bytes.len()
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    a.start();
    b.start();
    // Kill B once a partial file exists and a good part has arrived.
    let fetched_before = eventually("B part-way through the download", &[&a, &b], || {
        let n = b.bytes_in();
        if target.exists() {
            panic!("the transfer finished before it could be interrupted ({n} bytes)");
        }
        let partials = names_in(&partial_dir);
        if n >= 16 * MIB as u64 && !partials.is_empty() {
            // Mid-transfer, the status says so.
            let f = b.folder_status(&dir.path("b"));
            assert_eq!(f["state"], "syncing", "{f}");
            assert_eq!(f["need_files"], 1, "{f}");
            let need = f["need_bytes"].as_u64().unwrap();
            assert!(need > 0 && need <= SIZE as u64, "{f}");
            Ok(n)
        } else {
            Err(format!("fetched {n}, partials {partials:?}"))
        }
    });
    b.kill();
    assert!(!target.exists());
    assert!(
        !names_in(&partial_dir).is_empty(),
        "the partial file is gone after the crash"
    );

    b.start();
    // 30 s: B redials every 3 s, then fetches the rest of 64 MiB.
    daemon_util::eventually_within(
        Duration::from_secs(30),
        "the download to finish after the restart",
        &[&a, &b],
        || same_trees(&dir.path("a"), &dir.path("b")),
    );
    let fetched_after = b.bytes_in();
    stop.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    let torn = torn.lock().unwrap();
    assert!(torn.is_empty(), "torn target: {torn:?}");
    assert!(
        fetched_after + 8 * MIB as u64 <= SIZE as u64,
        "after the restart B fetched {fetched_after} of {SIZE} bytes \
         (it had {fetched_before} before the crash): the partial file was not reused"
    );
    eventually("the partial file removed", &[&a, &b], || {
        let p = names_in(&partial_dir);
        p.is_empty().then_some(()).ok_or(format!("{p:?}"))
    });
}

// Bug: after a device is killed and restarted, its peer still holds the dead
// connection and closes every new one as a "duplicate connection" until
// QUIC's idle timeout (30 s) ends the old one.
#[test]
fn regression_restarted_peer_reconnects_at_once() {
    let dir = Dir::new("daemon-reconnect");
    let (mut a, mut b) = pair(&dir, |d| {
        d.write_with("a/first.txt", "first\n", 0o644, T1);
    });
    a.start();
    b.start();
    converge(&[&a, &b], &dir.path("a"), &dir.path("b"));
    b.kill();
    b.start();
    dir.write_with("a/second.txt", "second\n", 0o644, T2);
    daemon_util::eventually_within(
        Duration::from_secs(10),
        "B to reconnect and fetch A's new file",
        &[&a, &b],
        || has_content(&dir.path("b/second.txt"), b"second\n"),
    );
}

#[test]
fn a_file_rewritten_during_its_transfer_never_tears_the_target() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    const SIZE: usize = 32 * MIB;
    let dir = Dir::new("daemon-rewrite");
    let old = random_bytes(11, SIZE);
    let new = random_bytes(12, SIZE);
    let good = [blake3::hash(&old), blake3::hash(&new)];
    let (mut a, mut b) = pair(&dir, |d| {
        d.write_with("a/moving.bin", &old, 0o644, T1);
    });
    let target = dir.path("b/moving.bin");
    let stop = Arc::new(AtomicBool::new(false));
    let torn: Arc<Mutex<Vec<String>>> = Arc::default();
    let watcher = {
        let (stop, torn, target) = (Arc::clone(&stop), Arc::clone(&torn), target.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(bytes) = fs::read(&target)
                    && !good.contains(&blake3::hash(&bytes))
                {
                    torn.lock().unwrap().push(format!("{} bytes", bytes.len()));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    a.start();
    b.start();
    eventually("B part-way through the download", &[&a, &b], || {
        let n = b.bytes_in();
        (n >= 4 * MIB as u64)
            .then_some(())
            .ok_or(format!("fetched {n}"))
    });
    assert!(!target.exists(), "the transfer finished before the rewrite");
    // Rewrite in place (same inode), as an editor without a temp file does.
    fs::write(dir.path("a/moving.bin"), &new).unwrap();
    dir.set_mtime("a/moving.bin", T2);
    eventually("B to hold the new content", &[&a, &b], || {
        same_trees(&dir.path("a"), &dir.path("b"))
    });
    stop.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    let torn = torn.lock().unwrap();
    assert!(torn.is_empty(), "torn target: {torn:?}");
    has_content(&target, &new).unwrap();
}

#[test]
fn a_local_edit_during_a_download_of_the_same_file_is_not_lost() {
    const SIZE: usize = 32 * MIB;
    let dir = Dir::new("daemon-edit-during-download");
    let (mut a, mut b) = pair(&dir, |d| {
        d.write_with("a/f.bin", "small original\n", 0o644, T1);
    });
    a.start();
    b.start();
    let (pa, pb) = (dir.path("a"), dir.path("b"));
    converge(&[&a, &b], &pa, &pb);

    let big = random_bytes(14, SIZE);
    let before = b.bytes_in();
    dir.write_with("a/f.bin", &big, 0o644, T2);
    eventually("B part-way through the new version", &[&a, &b], || {
        let n = b.bytes_in() - before;
        (n >= 4 * MIB as u64)
            .then_some(())
            .ok_or(format!("fetched {n}"))
    });
    has_content(&pb.join("f.bin"), b"small original\n").expect("the download finished too early");
    // The user edits B's copy meanwhile (newer mtime than A's version).
    dir.write_with(
        "b/f.bin",
        "edited on B during the download\n",
        0o644,
        (T2.0 + 100, 0),
    );
    eventually("both versions kept, the same on both", &[&a, &b], || {
        same_trees(&pa, &pb)?;
        let files = daemon_util::files_below(&pa);
        let has = |c: &[u8]| {
            files
                .iter()
                .any(|(p, b)| b.as_slice() == c && !p.starts_with(pa.join(".meshsync")))
        };
        if !has(b"edited on B during the download\n") {
            return Err("B's edit is gone".into());
        }
        if !has(&big) {
            return Err("A's new version is gone".into());
        }
        Ok(())
    });
}

// Bug: a download abandoned because the file changed or went away on the
// source leaves its partial file (preallocated to the full size) in
// .meshsync/partial/ forever: nothing removes partials no longer wanted.
#[test]
fn regression_abandoned_partial_files_are_removed() {
    const SIZE: usize = 32 * MIB;
    let dir = Dir::new("daemon-abandoned-partial");
    let (mut a, mut b) = pair(&dir, |d| {
        d.write_with("a/doomed.bin", random_bytes(13, SIZE), 0o644, T1);
        d.write_with("a/small.txt", "small\n", 0o644, T1);
    });
    let partial_dir = dir.path("b/.meshsync/partial");
    a.start();
    b.start();
    eventually("B part-way through the download", &[&a, &b], || {
        let n = b.bytes_in();
        (n >= 4 * MIB as u64 && !names_in(&partial_dir).is_empty())
            .then_some(())
            .ok_or(format!("fetched {n}"))
    });
    assert!(
        !dir.path("b/doomed.bin").exists(),
        "the transfer finished before the delete"
    );
    fs::remove_file(dir.path("a/doomed.bin")).unwrap();
    converge(&[&a, &b], &dir.path("a"), &dir.path("b"));
    eventually("B idle with nothing to fetch", &[&a, &b], || {
        let f = b.folder_status(&dir.path("b"));
        (f["state"] == "idle" && f["need_files"] == 0)
            .then_some(())
            .ok_or(format!("{f}"))
    });
    daemon_util::eventually_within(
        Duration::from_secs(5),
        "the abandoned partial file removed",
        &[&a, &b],
        || {
            let p = names_in(&partial_dir);
            p.is_empty().then_some(()).ok_or(format!("{p:?}"))
        },
    );
}

// ---------------------------------------------------------------------------
// 8. The folder marker

#[test]
fn marker_removed_while_running_stops_the_folder_and_deletes_nothing() {
    let dir = Dir::new("daemon-marker-live");
    let (mut a, mut b) = pair(&dir, |d| {
        d.write_with("a/one.txt", "one\n", 0o644, T1);
        d.write_with("a/sub/two.txt", "two\n", 0o644, T1);
    });
    a.start();
    b.start();
    let (pa, pb) = (dir.path("a"), dir.path("b"));
    converge(&[&a, &b], &pa, &pb);
    let before = snapshot(&pa).unwrap();

    // B's disk "goes away": the marker first, then everything in it.
    fs::remove_dir_all(pb.join(".meshsync")).unwrap();
    fs::remove_file(pb.join("one.txt")).unwrap();
    fs::remove_dir_all(pb.join("sub")).unwrap();
    eventually("B's folder in state error", &[&a, &b], || {
        let f = b.folder_status(&pb);
        (f["state"] == "error" && f["error"].is_string())
            .then_some(())
            .ok_or(format!("{f}"))
    });
    // A's later change shows the devices still talk; B must not apply it
    // either (no marker, no writes).
    dir.write_with("a/later.txt", "later\n", 0o644, T2);
    holds_for(QUIET, "A keeping everything", &[&a, &b], || {
        let mut now = snapshot(&pa)?;
        now.remove("later.txt");
        daemon_util::diff_trees(&before, &now)?;
        absent(&pb.join("later.txt"))?;
        absent(&pb.join(".meshsync"))
    });
}

#[test]
fn marker_missing_at_start_stops_the_folder_and_deletes_nothing() {
    let dir = Dir::new("daemon-marker-start");
    let (mut a, mut b) = pair(&dir, |d| {
        d.write_with("a/one.txt", "one\n", 0o644, T1);
        d.write_with("a/sub/two.txt", "two\n", 0o644, T1);
    });
    a.start();
    b.start();
    let (pa, pb) = (dir.path("a"), dir.path("b"));
    converge(&[&a, &b], &pa, &pb);
    let before = snapshot(&pa).unwrap();

    // Stop B, "unmount" its folder (empty, no marker), start B again.
    b.stop();
    fs::remove_dir_all(&pb).unwrap();
    fs::create_dir(&pb).unwrap();
    b.start();
    eventually("B's folder in state error", &[&a, &b], || {
        let f = b.folder_status(&pb);
        (f["state"] == "error" && f["error"].is_string())
            .then_some(())
            .ok_or(format!("{f}"))
    });
    eventually("B connected to A again", &[&a, &b], || {
        (b.peer_count() == 1)
            .then_some(())
            .ok_or("not connected".into())
    });
    holds_for(QUIET, "A keeping everything", &[&a, &b], || {
        daemon_util::diff_trees(&before, &snapshot(&pa)?)?;
        let names = names_in(&pb);
        names
            .is_empty()
            .then_some(())
            .ok_or(format!("B's folder holds {names:?}"))
    });
}

// ---------------------------------------------------------------------------
// 9. Status, metrics, events, API

/// `value` is an object holding every key of `fields`, each of the JSON
/// type named (`s` string, `u` unsigned, `a` array, `o` optional string).
#[track_caller]
fn has_fields(value: &serde_json::Value, fields: &[(&str, char)]) {
    for (k, t) in fields {
        let v = &value[*k];
        let ok = match t {
            's' => v.is_string(),
            'u' => v.is_u64(),
            'a' => v.is_array(),
            'o' => v.is_string() || v.is_null(),
            _ => unreachable!(),
        };
        assert!(
            ok && value.get(*k).is_some(),
            "field {k} missing or not '{t}' in {value}"
        );
    }
}

const STATUS_FIELDS: &[(&str, char)] = &[
    ("device_id", 's'),
    ("device_name", 's'),
    ("listen", 's'),
    ("folders", 'a'),
    ("peers", 'a'),
];
const FOLDER_FIELDS: &[(&str, char)] = &[
    ("path", 's'),
    ("share_id", 's'),
    ("mode", 's'),
    ("key_type", 's'),
    ("state", 's'),
    ("need_files", 'u'),
    ("need_bytes", 'u'),
    ("local_files", 'u'),
    ("local_bytes", 'u'),
    ("local_only_changes", 'u'),
    ("peers", 'u'),
    ("error", 'o'),
];
const PEER_FIELDS: &[(&str, char)] = &[
    ("device_id", 's'),
    ("name", 's'),
    ("address", 's'),
    ("via", 's'),
    ("folders", 'a'),
    ("bytes_in", 'u'),
    ("bytes_out", 'u'),
];

#[test]
fn status_metrics_events_and_api_key() {
    let dir = Dir::new("daemon-status");
    let (mut a, mut b) = pair(&dir, |d| {
        d.write_with("a/file.bin", random_bytes(9, 200_000), 0o644, T1);
    });
    let (pa, pb) = (dir.path("a"), dir.path("b"));

    // Without a daemon: the config, every folder "stopped".
    let offline = b.status_cli();
    has_fields(&offline, STATUS_FIELDS);
    let folders = offline["folders"].as_array().unwrap();
    assert_eq!(folders.len(), 1, "{offline}");
    has_fields(&folders[0], FOLDER_FIELDS);
    assert_eq!(folders[0]["state"], "stopped");
    assert_eq!(offline["device_name"], "B");

    a.start();
    // Subscribe before B starts, so B's connection is an event.
    let events = a.events(Duration::from_secs(20));
    let reader = std::thread::spawn(move || {
        let mut events = events;
        let mut seen = Vec::new();
        while let Some(e) = events.next_event() {
            let done = e["type"] == "peer-connected";
            seen.push(e);
            if done {
                break;
            }
        }
        seen
    });
    b.start();
    let seen = reader.join().unwrap();
    let connected = seen
        .iter()
        .find(|e| e["type"] == "peer-connected")
        .unwrap_or_else(|| panic!("no peer-connected event in {seen:?}"));
    let b_id = b.status()["device_id"].clone();
    assert_eq!(connected["device_id"], b_id, "{connected}");
    converge(&[&a, &b], &pa, &pb);

    // The running daemon's status, through the CLI and the API.
    for s in [b.status_cli(), b.status()] {
        has_fields(&s, STATUS_FIELDS);
        assert_eq!(s["device_name"], "B");
        assert_eq!(s["listen"], b.listen.to_string());
        let f = &s["folders"][0];
        has_fields(f, FOLDER_FIELDS);
        assert_eq!(f["mode"], "send-receive");
        assert_eq!(f["key_type"], "read-write");
        assert!(
            ["idle", "scanning", "syncing"].contains(&f["state"].as_str().unwrap()),
            "{f}"
        );
        let peers = s["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 1, "{s}");
        has_fields(&peers[0], PEER_FIELDS);
        assert_eq!(peers[0]["name"], "A");
        assert_eq!(peers[0]["via"], "static");
        assert_eq!(peers[0]["folders"][0], f["share_id"]);
    }
    assert!(b.bytes_in() >= 200_000);

    // /metrics parses and has the families.
    let m = a.metrics();
    for name in [
        "meshsync_bytes_sent_total",
        "meshsync_bytes_received_total",
        "meshsync_files_synced_total",
        "meshsync_peers_connected",
        "meshsync_folders",
    ] {
        assert!(m.contains_key(name), "no {name} in {m:?}");
    }
    assert_eq!(m["meshsync_peers_connected"], 1.0);
    assert_eq!(m["meshsync_folders"], 1.0);
    let share = &b.status()["folders"][0]["share_id"];
    let state = format!("meshsync_folder_state{{share_id={share},state=\"idle\"}}");
    assert!(m.contains_key(&state), "no {state} in {m:?}");
    eventually("A's metrics to count the bytes sent", &[&a, &b], || {
        let m = a.metrics();
        (m["meshsync_bytes_sent_total"] >= 200_000.0)
            .then_some(())
            .ok_or(format!("{m:?}"))
    });

    // The key is required everywhere but health.
    for path in ["/rest/status", "/metrics", "/rest/events"] {
        let (code, _) = a.get(path, false);
        assert_eq!(code, 401, "GET {path} without the key");
    }
    assert_eq!(a.get("/rest/health", false), (200, "ok".into()));

    // A daemon with an open event stream still stops at once on SIGTERM
    // (exit status 0), and the stream ends.
    let mut stream = b.events(Duration::from_secs(15));
    let t = std::time::Instant::now();
    b.stop();
    while stream.next_event().is_some() {}
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the event stream outlived the daemon by {:?}",
        t.elapsed()
    );
}

// Bug: meshsync_bytes_received_total stays 0: the daemon's bytes_received
// counter is never incremented (only the per-peer bytes_in is).
#[test]
fn regression_metrics_count_received_bytes() {
    let dir = Dir::new("daemon-metrics-received");
    let (mut a, mut b) = pair(&dir, |d| {
        d.write_with("a/file.bin", random_bytes(10, 500_000), 0o644, T1);
    });
    a.start();
    b.start();
    converge(&[&a, &b], &dir.path("a"), &dir.path("b"));
    // The file is in place a moment before its round is counted.
    daemon_util::eventually_within(
        Duration::from_secs(5),
        "B's metrics to count the file",
        &[&a, &b],
        || {
            let m = b.metrics();
            (m["meshsync_bytes_received_total"] >= 500_000.0
                && m["meshsync_files_synced_total"] >= 1.0)
                .then_some(())
                .ok_or(format!(
                    "B fetched {} bytes (status), metrics say {m:?}",
                    b.bytes_in()
                ))
        },
    );
}

// Files with the same content (copies in several directories) cost one
// transfer: the first copy is fetched, the others are put together from it.
#[test]
fn copies_of_one_content_are_fetched_once() {
    let dir = Dir::new("daemon-copies-fetched-once");
    let body = random_bytes(11, 700_000);
    let other = random_bytes(12, 300_000);
    let (mut a, mut b) = pair(&dir, |d| {
        for path in ["a/one.bin", "a/x/two.bin", "a/y/z/three.bin"] {
            d.write_with(path, &body, 0o644, T1);
        }
        d.write_with("a/other.bin", &other, 0o600, T2);
    });
    a.start();
    b.start();
    converge(&[&a, &b], &dir.path("a"), &dir.path("b"));
    for path in ["b/one.bin", "b/x/two.bin", "b/y/z/three.bin"] {
        has_content(&dir.path(path), &body).unwrap();
    }
    let fetched = b.bytes_in();
    assert_eq!(
        fetched,
        (body.len() + other.len()) as u64,
        "each content fetched exactly once"
    );
}

// An edit in place of a big file costs its changed chunks and a few bytes of
// index: the entry's chunk list travels as a patch of the one sent before
// (protocol version 5), both ways (A's edit, then B's announcement of it).
#[test]
fn an_edited_big_file_travels_as_its_changed_chunks_and_a_patch() {
    let dir = Dir::new("daemon-big-file-patch");
    let mut body = random_bytes(13, 12 * MIB);
    let (mut a, mut b) = pair(&dir, |d| {
        d.write_with("a/big.bin", &body, 0o644, T1);
    });
    a.start();
    b.start();
    converge(&[&a, &b], &dir.path("a"), &dir.path("b"));
    let before = b.bytes_in();
    assert_eq!(b.metric("meshsync_index_entries_patched_total"), 0.0);

    body[6 * MIB..6 * MIB + 100_000].copy_from_slice(&random_bytes(14, 100_000));
    dir.write_with("a/big.bin", &body, 0o644, T2);
    a.rescan(&dir.path("a"));
    converge(&[&a, &b], &dir.path("a"), &dir.path("b"));
    has_content(&dir.path("b/big.bin"), &body).unwrap();
    let fetched = b.bytes_in() - before;
    assert!(
        fetched < 1024 * 1024,
        "{fetched} bytes fetched for a 100 kB edit"
    );
    eventually(
        "both sides to receive the entry as a patch",
        &[&a, &b],
        || {
            let (at_a, at_b) = (
                a.metric("meshsync_index_entries_patched_total"),
                b.metric("meshsync_index_entries_patched_total"),
            );
            (at_a >= 1.0 && at_b >= 1.0)
                .then_some(())
                .ok_or(format!("patched entries received: A {at_a}, B {at_b}"))
        },
    );
}

// A small file edited in place costs about the bytes that changed: its one
// chunk comes as a delta against the old version (protocol version 5).
#[test]
fn an_edited_small_file_travels_as_a_delta() {
    let dir = Dir::new("daemon-small-file-delta");
    let mut bodies: Vec<Vec<u8>> = (0..10).map(|n| random_bytes(20 + n, 12_000)).collect();
    let (mut a, mut b) = pair(&dir, |d| {
        for (n, body) in bodies.iter().enumerate() {
            d.write_with(&format!("a/f{n}.txt"), body, 0o644, T1);
        }
    });
    a.start();
    b.start();
    converge(&[&a, &b], &dir.path("a"), &dir.path("b"));
    let before = b.bytes_in();
    for (n, body) in bodies.iter_mut().enumerate() {
        body[5_000..5_100].copy_from_slice(&random_bytes(40 + n as u64, 100));
        dir.write_with(&format!("a/f{n}.txt"), &body[..], 0o644, T2);
    }
    a.rescan(&dir.path("a"));
    converge(&[&a, &b], &dir.path("a"), &dir.path("b"));
    for (n, body) in bodies.iter().enumerate() {
        has_content(&dir.path(&format!("b/f{n}.txt")), body).unwrap();
    }
    let fetched = b.bytes_in() - before;
    assert!(
        fetched < 10 * 2_000,
        "{fetched} bytes fetched for ten 100-byte edits of 12 kB files"
    );
}

// Bug: an idle daemon rescans its folders about twice a second forever: the
// watcher (notify's inotify backend watches IN_OPEN) reports the scan's own
// directory opens, which ask for the next scan.
#[test]
fn regression_idle_daemon_does_not_rescan_in_a_loop() {
    let dir = Dir::new("daemon-rescan-loop");
    let (mut a, mut b) = pair(&dir, |d| {
        d.write_with("a/sub/file.txt", "x\n", 0o644, T1);
    });
    a.start();
    b.start();
    converge(&[&a, &b], &dir.path("a"), &dir.path("b"));
    // Let the first rounds settle, then count scans over a quiet window.
    std::thread::sleep(Duration::from_secs(1));
    let before = a.metric("meshsync_scans_total");
    std::thread::sleep(Duration::from_secs(3));
    let after = a.metric("meshsync_scans_total");
    assert!(
        after - before <= 1.0,
        "{} scans in 3 s with nothing changing",
        after - before
    );
}

// Bug: after a scan the folder goes back to idle without a folder-state
// event (Folder::scan sets the state itself), so the event stream says
// "scanning" forever.
#[test]
fn regression_events_report_idle_after_a_scan() {
    let dir = Dir::new("daemon-idle-event");
    dir.write_with("a/file.txt", "x\n", 0o644, T1);
    let mut a = Device::new(&dir, "A");
    a.share(&dir.path("a"), None);
    a.start();
    let pa = dir.path("a");
    let events = a.events(Duration::from_secs(8));
    a.rescan(&pa);
    let mut events = events;
    let mut seen = Vec::new();
    let mut scanning = false;
    while let Some(e) = events.next_event() {
        if e["type"] == "folder-state" {
            scanning |= e["state"] == "scanning";
            if scanning && e["state"] == "idle" {
                return;
            }
        }
        seen.push(e);
    }
    panic!("no folder-state idle after scanning within 8 s; events: {seen:?}");
}

// Bug: Folder::scan takes the local index out of the folder state for the
// whole scan (mem::take), so anything reading it meanwhile sees an empty
// folder: status reports 0 local files, and an index update a connection
// sends during the scan (changes_since) carries no entries although its
// sequence range moves on — a change this device pulled is then never
// announced to its other peers (the cause of relays stalling in the five
// device test now and then).
#[test]
fn regression_local_index_stays_visible_during_a_scan() {
    const FILES: usize = 2000;
    let dir = Dir::new("daemon-scan-window");
    for i in 0..FILES {
        dir.write(&format!("a/d{}/f{i}.txt", i % 20), format!("{i}\n"));
    }
    let mut a = Device::new(&dir, "A");
    a.share(&dir.path("a"), None);
    a.start();
    let pa = dir.path("a");
    eventually("A to index its files", &[&a], || {
        let f = a.folder_status(&pa);
        (f["local_files"] == FILES)
            .then_some(())
            .ok_or(format!("{f}"))
    });
    let end = std::time::Instant::now() + Duration::from_secs(3);
    let mut polls = 0;
    while std::time::Instant::now() < end {
        if polls % 10 == 0 {
            a.rescan(&pa);
        }
        let f = a.folder_status(&pa);
        assert_eq!(
            f["local_files"], FILES,
            "after {polls} polls, during a scan: {f}"
        );
        polls += 1;
    }
}

// Bug (same cause as regression_local_index_stays_visible_during_a_scan): a
// relay that is scanning a large folder when its connection sends an index
// update announces an empty batch, and the files it pulled never reach the
// next device.
#[test]
fn regression_relay_announces_files_it_pulled_while_scanning() {
    const FILES: usize = 2000;
    let dir = Dir::new("daemon-relay");
    for i in 0..FILES {
        dir.write(&format!("a/d{}/f{i}.txt", i % 20), format!("{i}\n"));
    }
    let mut a = Device::new(&dir, "A");
    let keys = a.share(&dir.path("a"), None);
    let mut b = Device::new(&dir, "B");
    b.join(&keys.read_write, &dir.path("b"), &[&a], None);
    let mut c = Device::new(&dir, "C");
    c.join(&keys.read_write, &dir.path("c"), &[&b], None);
    a.start();
    b.start();
    c.start();
    daemon_util::eventually_within(
        Duration::from_secs(10),
        "A's files on B and C",
        &[&a, &b, &c],
        || {
            same_trees(&dir.path("a"), &dir.path("b"))?;
            same_trees(&dir.path("a"), &dir.path("c"))
        },
    );
    // Keep B scanning (as its own watcher does, see
    // regression_idle_daemon_does_not_rescan_in_a_loop) while A adds files.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spammer = {
        let (stop, api, key) = (stop.clone(), b.api, b.api_key().to_string());
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .proxy(None)
                .build()
                .into();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = agent
                    .post(format!("http://{api}/rest/rescan"))
                    .header(daemon_util::API_KEY_HEADER, &key)
                    .send("");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    for i in 0..10 {
        dir.write(&format!("a/new{i}.txt"), format!("new {i}\n"));
        std::thread::sleep(Duration::from_millis(300));
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        daemon_util::eventually_within(
            Duration::from_secs(10),
            "A's new files on C",
            &[&a, &b, &c],
            || same_trees(&dir.path("a"), &dir.path("c")),
        )
    }));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    spammer.join().unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

// ---------------------------------------------------------------------------
// 10. Swarm pulls (issue 4)

/// Small files that H (a read-only, send-only device that never pulls)
/// holds as well as A, and a big one only A has.
fn swarm_fill(dir: &Dir, root: &str) {
    for i in 0..120 {
        dir.write_with(
            &format!("{root}/s/f{i:03}.bin"),
            random_bytes(100 + i, 16_384 + i as usize),
            0o644,
            T1,
        );
    }
}

// A device announces the files it pulled batch by batch, not when its
// round ends: with the source frozen while B's round waits for a file only
// the source has, C (which knows only B) still gets what B fetched from H.
#[test]
fn a_round_announces_its_files_before_it_ends() {
    let dir = Dir::new("daemon-swarm-batches");
    swarm_fill(&dir, "a");
    let big = random_bytes(7, 32 * MIB);
    dir.write_with("a/big.bin", &big, 0o644, T1);
    swarm_fill(&dir, "h");
    let mut a = Device::new(&dir, "A");
    let keys = a.share(&dir.path("a"), None);
    let mut h = Device::new(&dir, "H");
    h.join(&keys.read_only, &dir.path("h"), &[&a], Some("send-only"));
    let mut b = Device::new(&dir, "B");
    b.join(&keys.read_write, &dir.path("b"), &[&a, &h], None);
    let mut c = Device::new(&dir, "C");
    c.join(&keys.read_write, &dir.path("c"), &[&b], None);
    // B hears H's index (availability only) before A's, so it plans its
    // round knowing H holds the small files.
    h.start();
    b.start();
    eventually("B connected to H", &[&b, &h], || {
        match b.folder_status(&dir.path("b"))["peers"].as_u64() {
            Some(1) => Ok(()),
            other => Err(format!("B has {other:?} peers on the folder")),
        }
    });
    c.start();
    a.start();
    // B's round runs once its partial download of big.bin exists: freeze
    // A there, so that file cannot be finished and the round cannot end.
    let partial = dir.path("b/.meshsync/partial");
    eventually("B downloading big.bin", &[&a, &b], || {
        if names_in(&partial).is_empty() {
            Err("no partial file yet".into())
        } else {
            Ok(())
        }
    });
    let frozen = security_util::Frozen::new(security_util::daemon_pid(&a.home));
    let got = eventually("C to get small files from B", &[&b, &c], || {
        let names = names_in(&dir.path("c/s"));
        if names.is_empty() {
            return Err("C has no small file yet".into());
        }
        Ok(names)
    });
    for name in &got {
        let want = fs::read(dir.path(&format!("a/s/{name}"))).unwrap();
        eventually(&format!("C's {name}"), &[&b, &c], || {
            has_content(&dir.path(&format!("c/s/{name}")), &want)
        });
    }
    // B's round is still waiting for the source.
    absent(&dir.path("b/big.bin")).unwrap();
    drop(frozen);
    eventually("everything on B and C", &[&a, &b, &c], || {
        same_trees(&dir.path("a"), &dir.path("b"))?;
        same_trees(&dir.path("a"), &dir.path("c"))
    });
    has_content(&dir.path("c/big.bin"), &big).unwrap();
}

/// Chunk bytes `d` received from each peer, by device id.
fn bytes_in_by_peer(d: &Device) -> std::collections::BTreeMap<String, u64> {
    d.status()["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| {
            (
                p["device_id"].as_str().expect("device_id").to_owned(),
                p["bytes_in"].as_u64().expect("bytes_in"),
            )
        })
        .collect()
}

// One source and three empty peers: a peer fetches chunks from the other
// peers, not only from the source. B and C pull from A at once (their
// exchange depends on timing and is only printed); D starts once they are
// complete, learns that B and C hold everything (at its plan or by index
// updates during its round) and spreads its requests over all three.
#[test]
fn peers_fetch_from_each_other_not_only_from_the_source() {
    let dir = Dir::new("daemon-swarm-peers");
    for i in 0..200 {
        dir.write_with(
            &format!("a/d{}/f{i:03}.bin", i % 4),
            random_bytes(500 + i, 64 * 1024 + i as usize),
            0o644,
            T1,
        );
    }
    let mut a = Device::new(&dir, "A");
    let keys = a.share(&dir.path("a"), None);
    let mut b = Device::new(&dir, "B");
    b.join(&keys.read_write, &dir.path("b"), &[&a], None);
    let mut c = Device::new(&dir, "C");
    c.join(&keys.read_write, &dir.path("c"), &[&a, &b], None);
    let mut d = Device::new(&dir, "D");
    d.join(&keys.read_write, &dir.path("d"), &[&a, &b, &c], None);
    // B and C know each other before the source appears, so each hears of
    // the other's files from its first batch on.
    b.start();
    c.start();
    eventually("B and C connected", &[&b, &c], || {
        match c.folder_status(&dir.path("c"))["peers"].as_u64() {
            Some(1) => Ok(()),
            other => Err(format!("C has {other:?} peers on the folder")),
        }
    });
    a.start();
    eventually("A's files on B and C", &[&a, &b, &c], || {
        same_trees(&dir.path("a"), &dir.path("b"))?;
        same_trees(&dir.path("a"), &dir.path("c"))
    });
    let id = |dev: &Device| dev.status()["device_id"].as_str().unwrap().to_owned();
    let (ia, ib, ic) = (id(&a), id(&b), id(&c));
    eprintln!(
        "B received {:?}, C received {:?} (A is {ia}, B {ib}, C {ic})",
        bytes_in_by_peer(&b),
        bytes_in_by_peer(&c)
    );
    d.start();
    eventually("A's files on D", &[&a, &b, &c, &d], || {
        same_trees(&dir.path("a"), &dir.path("d"))
    });
    let from = bytes_in_by_peer(&d);
    eprintln!("D received {from:?}");
    let from_peers = from.get(&ib).copied().unwrap_or(0) + from.get(&ic).copied().unwrap_or(0);
    let total: u64 = from.values().sum();
    assert!(from_peers > 0, "D took nothing from B or C: {from:?}");
    assert!(
        from.get(&ia).copied().unwrap_or(0) < total,
        "D took everything from A: {from:?}"
    );
}

/// Slows a daemon down, until dropped: frozen (SIGSTOP) most of the time.
struct Throttle {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Throttle {
    /// Lets `pid` (a daemon this test started) run 10 ms in every 50.
    fn new(pid: i32) -> Throttle {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                let _frozen = security_util::Frozen::new(pid);
                std::thread::sleep(Duration::from_millis(40));
                drop(_frozen);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Throttle {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// Peers downloading the same big file fetch parts of it from each other
// before either has it whole (protocol version 3, chunks held): with the
// source slowed down, B and C each start at their own place in big.bin,
// announce the chunks they verified, and serve them from their partial
// files to the other.
#[test]
fn peers_share_parts_of_a_big_file_they_are_still_downloading() {
    let dir = Dir::new("daemon-swarm-partial");
    let big = random_bytes(11, 48 * MIB);
    dir.write_with("a/big.bin", &big, 0o644, T1);
    let mut a = Device::new(&dir, "A");
    let keys = a.share(&dir.path("a"), None);
    let mut b = Device::new(&dir, "B");
    b.join(&keys.read_write, &dir.path("b"), &[&a], None);
    let mut c = Device::new(&dir, "C");
    c.join(&keys.read_write, &dir.path("c"), &[&a, &b], None);
    // B and C know each other before the source appears, so each hears of
    // the other's chunks from the start (they start at different places in
    // the file, by device id).
    b.start();
    c.start();
    eventually("B and C connected", &[&b, &c], || {
        match c.folder_status(&dir.path("c"))["peers"].as_u64() {
            Some(1) => Ok(()),
            other => Err(format!("C has {other:?} peers on the folder")),
        }
    });
    a.start();
    let throttle = Throttle::new(security_util::daemon_pid(&a.home));
    daemon_util::eventually_within(
        Duration::from_secs(120),
        "big.bin on B and C",
        &[&a, &b, &c],
        || {
            has_content(&dir.path("b/big.bin"), &big)?;
            has_content(&dir.path("c/big.bin"), &big)
        },
    );
    drop(throttle);
    let partial = |d: &Device| d.metric("meshsync_partial_bytes_sent_total") as u64;
    let (from_b, from_c) = (partial(&b), partial(&c));
    eprintln!(
        "served from partial files: B {from_b}, C {from_c}; B received {:?}, C received {:?}",
        bytes_in_by_peer(&b),
        bytes_in_by_peer(&c)
    );
    assert!(
        from_b + from_c > 0,
        "neither B nor C served a chunk of big.bin while downloading it"
    );
}

// ---------------------------------------------------------------------------
// Bandwidth limits

/// Sets `[device] key = value` in a device's config (before it starts).
fn set_device_option(device: &Device, key: &str, value: u64) {
    let config = device.home.join("config.toml");
    let text = fs::read_to_string(&config).unwrap();
    let text = text.replacen(&format!("{key} = 0\n"), &format!("{key} = {value}\n"), 1);
    assert!(text.contains(&format!("{key} = {value}\n")), "{text}");
    fs::write(&config, text).unwrap();
}

/// `max_send_kibps` holds a device's uploads to its rate, and
/// `max_recv_kibps` a device's downloads: 2 MiB at 512 KiB/s cannot arrive
/// in under 3.5 s (the bucket holds 128 KiB), where without a limit it takes
/// well under a second here. A lower bound only: a limit can make a
/// transfer slower, never faster, so the check cannot flake.
#[test]
fn bandwidth_limits_hold_uploads_and_downloads_to_their_rate() {
    let dir = Dir::new("daemon-bandwidth");
    let body = random_bytes(41, 2 * MIB);
    // A sends at most 512 KiB/s to B; C fetches at most 512 KiB/s from D.
    let (mut a, mut b) = pair(&dir, |d| {
        d.write_with("a/big.bin", &body, 0o644, T1);
    });
    dir.write_with("d/big.bin", &body, 0o644, T1);
    let mut d = Device::new(&dir, "D");
    let c = Device::new(&dir, "C");
    let keys = d.share(&dir.path("d"), None);
    c.join(&keys.read_write, &dir.path("c"), &[&d], None);
    let mut c = c;
    set_device_option(&a, "max_send_kibps", 512);
    set_device_option(&c, "max_recv_kibps", 512);
    a.start();
    d.start();
    let (pa, pb, pc, pd) = (dir.path("a"), dir.path("b"), dir.path("c"), dir.path("d"));
    let started = std::time::Instant::now();
    b.start();
    converge(&[&a, &b], &pa, &pb);
    let upload = started.elapsed();
    let started = std::time::Instant::now();
    c.start();
    converge(&[&c, &d], &pc, &pd);
    let download = started.elapsed();
    for (what, took) in [("upload", upload), ("download", download)] {
        assert!(
            took >= Duration::from_millis(3500),
            "the {what} of 2 MiB at 512 KiB/s took {took:?}"
        );
    }
}
