//! End-to-end tests of storage-only (encrypted-key) peers: real daemons on
//! 127.0.0.1, set up with the real `share`/`join` commands.
//!
//! The storage peer S joins with the folder's encrypted key. It must hold
//! only ciphertext (no plaintext name or content anywhere on its disk: its
//! folder, its state directory with the index database, its log), relay the
//! signed entries so that a device that was never online with the author
//! restores from S alone, repair what is damaged on its disk without ever
//! passing it on, and never be able to change the folder itself.

mod daemon_util;
mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use daemon_util::{Device, eventually, files_below, has_content, holds_for, same_trees};
use util::{Dir, MIB, random_bytes};

/// Fixed mtimes (with nanoseconds, to catch truncation).
const T1: (i64, u32) = (1_600_000_000, 123_456_789);
const T2: (i64, u32) = (1_600_100_000, 987_654_321);

const SECRET_TEXT: &str = "PLAINTEXT CONTENT MARKER: the eagle lands at midnight\n";

/// What the storage peer must never see, in any form.
struct Secrets {
    needles: Vec<Vec<u8>>,
}

impl Secrets {
    fn new() -> Self {
        Secrets {
            needles: Vec::new(),
        }
    }

    fn name(&mut self, s: &str) {
        self.needles.push(s.as_bytes().to_vec());
    }

    /// Distinctive windows of a file's content.
    fn content(&mut self, bytes: &[u8]) {
        let w = 32.min(bytes.len());
        for at in [0, bytes.len() / 3, bytes.len() / 2, bytes.len() - w] {
            self.needles.push(bytes[at..at + w].to_vec());
        }
    }

    /// Panics if any file under `roots` (names and bytes) holds a secret.
    #[track_caller]
    fn assert_absent_below(&self, roots: &[&Path]) {
        let mut scanned = 0usize;
        for root in roots {
            for path in all_paths(root) {
                let name = path.to_string_lossy().into_owned();
                for n in &self.needles {
                    assert!(
                        !contains(name.as_bytes(), n),
                        "a plaintext name {:?} is in the path {name}",
                        String::from_utf8_lossy(n)
                    );
                }
            }
            for (path, bytes) in files_below(root) {
                scanned += bytes.len();
                for n in &self.needles {
                    assert!(
                        !contains(&bytes, n),
                        "plaintext {:?} found in {}",
                        String::from_utf8_lossy(n),
                        path.display()
                    );
                }
            }
        }
        assert!(scanned > 0, "nothing was scanned");
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    hay.iter()
        .enumerate()
        .filter(|(_, b)| **b == first)
        .any(|(i, _)| hay[i + 1..].starts_with(rest))
}

/// Every path below `dir` (files, directories, symlinks), relative to it.
fn all_paths(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        out.push(p.clone());
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            out.extend(all_paths(&p));
        }
    }
    out
}

/// The storage peer's folder reports `files` files kept and nothing to fetch.
#[track_caller]
fn storage_holds(s: &Device, dir: &Path, files: u64, all: &[&Device]) {
    eventually(&format!("{} to hold {files} files", s.name), all, || {
        let f = s.folder_status(dir);
        if f["key_type"] != "encrypted" {
            return Err(format!("not a storage folder: {f}"));
        }
        if f["local_files"] == files && f["need_files"] == 0 && f["state"] == "idle" {
            Ok(())
        } else {
            Err(format!("{f}"))
        }
    });
}

#[test]
fn a_storage_peer_holds_only_ciphertext_and_restores_other_devices() {
    let dir = Dir::new("storage-restore");
    let photo = random_bytes(7, 3 * MIB + 4321);
    let mut secrets = Secrets::new();
    dir.write_with(
        "a/Quarterly-Confidential-Report.txt",
        SECRET_TEXT.repeat(40),
        0o640,
        T1,
    );
    dir.write_with("a/photo-archive-holiday.bin", &photo, 0o600, T2);
    dir.write_with(
        "a/Secret Plans/Nested Dir/notes-of-the-meeting.md",
        "the owl flies at dawn, bring the map\n",
        0o644,
        T1,
    );
    dir.mkdir("a/Empty Folder Name");
    dir.symlink(
        "Secret Plans/Nested Dir/notes-of-the-meeting.md",
        "a/symlink-to-notes",
    );
    for n in [
        "Quarterly-Confidential-Report",
        "photo-archive-holiday",
        "Secret Plans",
        "Nested Dir",
        "notes-of-the-meeting",
        "Empty Folder Name",
        "symlink-to-notes",
        "the eagle lands at midnight",
        "the owl flies at dawn",
    ] {
        secrets.name(n);
    }
    secrets.content(&photo);
    secrets.content(SECRET_TEXT.repeat(40).as_bytes());

    let mut a = Device::new(&dir, "A");
    let mut s = Device::new(&dir, "S");
    let keys = a.share(&dir.path("a"), None);
    s.join(&keys.encrypted, &dir.path("s"), &[&a], None);
    a.start();
    s.start();
    storage_holds(&s, &dir.path("s"), 3, &[&a, &s]);
    assert!(
        !files_below(&dir.path("s/.meshsync/blobs")).is_empty(),
        "no ciphertext stored"
    );
    // Nothing but the marker directory in the storage folder.
    assert_eq!(daemon_util::names_in(&dir.path("s")), vec![".meshsync"]);
    secrets.assert_absent_below(&[&dir.path("s"), &s.home, &dir.path("log-S.txt")]);

    // A goes away; B, which never met A, restores from S alone.
    a.stop();
    let mut b = Device::new(&dir, "B");
    b.join(&keys.read_write, &dir.path("b"), &[&s], None);
    b.start();
    eventually("B to restore A's folder from S", &[&b, &s], || {
        same_trees(&dir.path("a"), &dir.path("b"))
    });

    // An edit and a new file on B go to S, then to A when it returns.
    dir.write_with(
        "b/Secret Plans/Nested Dir/notes-of-the-meeting.md",
        "edited on B: the heron waits by the river\n",
        0o644,
        T2,
    );
    dir.write_with(
        "b/added-on-B-budget.xlsx",
        "budget figures 2031\n",
        0o644,
        T1,
    );
    secrets.name("the heron waits by the river");
    secrets.name("added-on-B-budget");
    secrets.name("budget figures 2031");
    b.rescan(&dir.path("b"));
    storage_holds(&s, &dir.path("s"), 4, &[&b, &s]);
    a.start();
    eventually("A to receive B's changes through S", &[&a, &b, &s], || {
        same_trees(&dir.path("a"), &dir.path("b"))
    });
    has_content(
        &dir.path("a/Secret Plans/Nested Dir/notes-of-the-meeting.md"),
        b"edited on B: the heron waits by the river\n",
    )
    .unwrap();

    // A read-only device restores from S too.
    let mut c = Device::new(&dir, "C");
    c.join(&keys.read_only, &dir.path("c"), &[&s], None);
    c.start();
    eventually("C (read-only) to restore from S", &[&c, &s], || {
        same_trees(&dir.path("a"), &dir.path("c"))
    });

    // A file put into the storage folder's directory by hand is never
    // scanned or sent: S cannot make changes.
    dir.write("s/planted-by-storage.txt", "not from a writer\n");
    s.rescan(&dir.path("s"));
    holds_for(
        Duration::from_secs(3),
        "a file planted on S stays there",
        &[&a, &s],
        || match dir.path("a/planted-by-storage.txt").exists() {
            true => Err("A received a file S made".into()),
            false => Ok(()),
        },
    );
    fs::remove_file(dir.path("s/planted-by-storage.txt")).unwrap();

    // After all that traffic, still nothing in the clear on S.
    storage_holds(&s, &dir.path("s"), 4, &[&s]);
    s.stop();
    secrets.assert_absent_below(&[&dir.path("s"), &s.home, &dir.path("log-S.txt")]);
}

#[test]
fn a_damaged_chunk_on_the_storage_peer_is_never_served_and_is_repaired() {
    let dir = Dir::new("storage-damage");
    let big = random_bytes(11, 2 * MIB + 777);
    dir.write_with("a/big.bin", &big, 0o644, T1);
    dir.write_with("a/small.txt", "small\n", 0o644, T2);
    let mut a = Device::new(&dir, "A");
    let mut s = Device::new(&dir, "S");
    let keys = a.share(&dir.path("a"), None);
    s.join(&keys.encrypted, &dir.path("s"), &[&a], None);
    a.start();
    s.start();
    storage_holds(&s, &dir.path("s"), 2, &[&a, &s]);
    a.stop();

    // Flip one byte of big.bin's first encrypted chunk on S's disk (in the
    // pack that holds its chunks).
    let (blob, bytes) = files_below(&dir.path("s/.meshsync/blobs"))
        .into_iter()
        .find(|(_, b)| b.len() > 1024)
        .expect("the pack of big.bin");
    let mut damaged = bytes.clone();
    damaged[100] ^= 0x01;
    fs::write(&blob, &damaged).unwrap();

    let mut b = Device::new(&dir, "B");
    b.join(&keys.read_write, &dir.path("b"), &[&s], None);
    b.start();
    eventually("B to get the intact file", &[&b, &s], || {
        has_content(&dir.path("b/small.txt"), b"small\n")
    });
    // B never holds a wrong big.bin; S noticed and never served the chunk.
    holds_for(
        Duration::from_secs(2),
        "B holds no corrupt file",
        &[&b, &s],
        || match fs::read(dir.path("b/big.bin")) {
            Ok(got) if got != big => Err("B wrote a corrupt big.bin".into()),
            _ => Ok(()),
        },
    );
    assert!(
        s.log_text().contains("damaged"),
        "S did not report the damaged chunk:\n{}",
        s.log_text()
    );

    // When A is back, S fetches the chunk again and B completes.
    a.start();
    let deadline = Instant::now() + daemon_util::TIMEOUT;
    loop {
        if has_content(&dir.path("b/big.bin"), &big).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B did not complete big.bin after S's repair\n{}",
            daemon_util::report(&[&a, &b, &s])
        );
        // A failed download waits for the next wake-up; ask for one.
        b.rescan(&dir.path("b"));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        fs::read(&blob).unwrap(),
        bytes,
        "S repaired the chunk in place"
    );
}

/// A file large enough to be hinted (16 MiB and up) reaches the storage
/// peer through chunks fetched ahead of its signed entry, and comes back
/// intact from the storage peer alone.
#[test]
fn a_large_file_is_fetched_ahead_from_hints_and_restores_intact() {
    let dir = Dir::new("storage-hints");
    let large = random_bytes(21, 40 * MIB + 99);
    dir.write_with("a/large.bin", &large, 0o644, T1);
    let mut a = Device::new(&dir, "A");
    let mut s = Device::new(&dir, "S");
    let keys = a.share(&dir.path("a"), None);
    s.join(&keys.encrypted, &dir.path("s"), &[&a], None);
    a.start();
    s.start();
    storage_holds(&s, &dir.path("s"), 1, &[&a, &s]);
    assert!(
        s.log_text()
            .contains("takes up the pack filled ahead from its hints"),
        "S fetched nothing ahead of the entry:\n{}",
        s.log_text()
    );
    assert!(
        files_below(&dir.path("s/.meshsync/blobs/partial")).is_empty(),
        "a partial pack is left on S"
    );
    a.stop();
    let mut b = Device::new(&dir, "B");
    b.join(&keys.read_write, &dir.path("b"), &[&s], None);
    b.start();
    eventually("B to restore the large file from S", &[&b, &s], || {
        has_content(&dir.path("b/large.bin"), &large)
    });
}

#[test]
fn the_storage_peer_cannot_change_the_folder() {
    use meshsync_core::ids::DeviceId;
    use meshsync_core::version::VersionVector;
    use meshsync_store::db::IndexDb;

    let dir = Dir::new("storage-forge");
    dir.write_with("a/ledger.txt", "balance: 100\n", 0o644, T1);
    let mut a = Device::new(&dir, "A");
    let mut s = Device::new(&dir, "S");
    let keys = a.share(&dir.path("a"), None);
    s.join(&keys.encrypted, &dir.path("s"), &[&a], None);
    a.start();
    s.start();
    storage_holds(&s, &dir.path("s"), 1, &[&a, &s]);
    s.stop();
    a.stop();

    // S's owner edits its index: the ledger deleted, with a version that
    // dominates A's. S has no signing key, so the signature stays A's.
    let tree = format!("sealed-{}", keys.share_id);
    {
        let db = IndexDb::open(&s.home).unwrap();
        let stored = db.load_sealed(&tree).unwrap();
        assert_eq!(stored.entries.len(), 1, "{stored:?}");
        let mut forged = stored.entries[0].clone();
        let mut version: VersionVector = forged.version.clone();
        version.bump(DeviceId::from_bytes([0xee; 32]).short());
        forged.version = version;
        forged.deleted = true;
        forged.chunks.clear();
        forged.sequence = stored.last_sequence + 1;
        db.commit_sealed(
            &tree,
            forged.sequence,
            &[&forged],
            &[stored.entries[0].sequence],
        )
        .unwrap();
    }
    s.start();
    a.start();
    eventually(
        "A to hear S's forged entry and refuse it",
        &[&a, &s],
        || {
            if a.log_text().contains("does not verify") {
                Ok(())
            } else {
                Err("no refusal logged yet".into())
            }
        },
    );
    holds_for(
        Duration::from_secs(3),
        "A keeps its ledger",
        &[&a, &s],
        || has_content(&dir.path("a/ledger.txt"), b"balance: 100\n"),
    );
}

#[test]
fn a_storage_folder_without_its_marker_stays_closed_and_gets_no_marker() {
    let dir = Dir::new("storage-marker");
    dir.write_with("a/f.txt", "data\n", 0o644, T1);
    let mut a = Device::new(&dir, "A");
    let mut s = Device::new(&dir, "S");
    let keys = a.share(&dir.path("a"), None);
    s.join(&keys.encrypted, &dir.path("s"), &[&a], None);
    // The disk is not mounted: the directory is there, its marker is not.
    fs::remove_dir(dir.path("s/.meshsync")).unwrap();
    a.start();
    s.start();
    eventually("S to connect to A", &[&a, &s], || match s.peer_count() {
        1 => Ok(()),
        n => Err(format!("{n} peers")),
    });
    holds_for(
        Duration::from_secs(3),
        "S writes nothing into the unmounted folder",
        &[&a, &s],
        || match fs::read_dir(dir.path("s")).map(|d| d.count()) {
            Ok(0) => Ok(()),
            Ok(n) => Err(format!("{n} entries in S's folder")),
            Err(e) => Err(e.to_string()),
        },
    );
}
