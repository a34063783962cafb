//! Integration tests of `meshsync sync SRC DST`, run against the real binary.
//!
//! Each test builds trees in its own sandbox ([`util::Dir`]), runs the
//! binary with its own `--home`, and checks what is on disk afterwards
//! (paths, kinds, contents, modes, mtimes, link targets) and what the JSON
//! summary and the exit code say. Tests named `bug_…` pin a bug found while
//! writing this suite: they fail until it is fixed.

mod util;

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use util::{Dir, KIB, MIB, Node, Output, TmpfsMount, is_root, random_bytes};

/// Fixed mtimes (with nanoseconds, to catch truncation to seconds).
const T1: (i64, u32) = (1_600_000_000, 123_456_789);
const T2: (i64, u32) = (1_600_100_000, 987_654_321);
const T3: (i64, u32) = (1_600_200_000, 1);
const T4: (i64, u32) = (1_700_000_000, 500_000_000);

/// Every field the JSON summary documents.
const JSON_FIELDS: &[&str] = &[
    "files_total",
    "files_copied",
    "files_deleted",
    "dirs_created",
    "symlinks_written",
    "metadata_updated",
    "conflicts",
    "bytes_from_source",
    "bytes_reused",
    "bytes_written",
    "duration_s",
    "scan_s",
    "dry_run",
    "errors",
    "warnings",
    "planned",
];

/// A file to create: path, content, mode, mtime.
type FileSpec = (&'static str, Vec<u8>, u32, (i64, u32));

/// A tree with every kind of entry: nested and empty directories, symlinks
/// inside, outside and nowhere, an executable, an empty file, a multi-MiB
/// file and unicode names. Returns the number of regular files and their
/// total size.
fn sample_tree(d: &Dir) -> (u64, u64) {
    d.mkdir("src");
    d.chmod("src", 0o755);
    let big = random_bytes(1, 3 * MIB + 12_345);
    let files: Vec<FileSpec> = vec![
        ("src/nested/deeper/leaf.txt", b"leaf\n".to_vec(), 0o644, T1),
        ("src/nested/mid.txt", b"mid\n".to_vec(), 0o600, T2),
        ("src/run.sh", b"#!/bin/sh\necho hi\n".to_vec(), 0o755, T3),
        ("src/zero", Vec::new(), 0o644, T1),
        ("src/big.bin", big, 0o640, T2),
        (
            "src/ünïcödé/日本語 ファイル.txt",
            b"unicode\n".to_vec(),
            0o644,
            T3,
        ),
    ];
    let mut bytes = 0;
    for (path, content, mode, mtime) in &files {
        bytes += content.len() as u64;
        d.write_with(path, content, *mode, *mtime);
    }
    d.mkdir("src/empty");
    d.chmod("src/empty", 0o750);
    d.write("outside/secret.txt", "secret\n");
    d.symlink("nested/deeper/leaf.txt", "src/link-in");
    d.symlink("../outside/secret.txt", "src/link-out-relative");
    let outside = d.path("outside");
    d.symlink(outside.to_str().unwrap(), "src/link-out-absolute");
    d.symlink("does/not/exist", "src/dangling");
    for (link, t) in [
        ("src/link-in", T1),
        ("src/link-out-relative", T2),
        ("src/link-out-absolute", T3),
        ("src/dangling", T4),
    ] {
        d.set_mtime(link, t);
    }
    // Directory mtimes last: creating children changes them.
    for (dir, t) in [
        ("src/nested/deeper", T1),
        ("src/nested", T2),
        ("src/empty", T3),
        ("src/ünïcödé", T4),
    ] {
        d.set_mtime(dir, t);
    }
    (files.len() as u64, bytes)
}

/// Inserts `insert` at `at` in file `rel` and gives it mtime `mtime`.
fn insert_bytes(d: &Dir, rel: &str, at: usize, insert: &[u8], mtime: (i64, u32)) -> Vec<u8> {
    let mut data = d.read(rel);
    data.splice(at..at, insert.iter().copied());
    let mode = d.mode(rel);
    d.write_with(rel, &data, mode, mtime);
    data
}

#[track_caller]
fn assert_same_tree(d: &Dir, a: &str, b: &str) {
    let (ta, tb) = (d.tree(a), d.tree(b));
    assert_eq!(ta, tb, "{a} and {b} differ");
}

#[track_caller]
fn assert_no_errors(out: &Output) {
    assert!(out.list("errors").is_empty(), "errors reported\n{out}");
}

// ---------------------------------------------------------------------------
// 1. Initial copy and idempotence

#[test]
fn initial_copy_preserves_everything_and_second_run_copies_nothing() {
    let d = Dir::new("initial");
    let (files, bytes) = sample_tree(&d);
    let src_before = d.tree("src");

    let out = d.sync_json(&["src", "dst"]);
    out.ok();
    for field in JSON_FIELDS {
        assert!(out.json().get(field).is_some(), "JSON lacks {field}\n{out}");
    }
    assert_eq!(out.num("files_total"), files, "{out}");
    assert_eq!(out.num("files_copied"), files, "{out}");
    assert_eq!(out.num("dirs_created"), 4, "{out}"); // nested, nested/deeper, empty, ünïcödé
    assert_eq!(out.num("symlinks_written"), 4, "{out}");
    assert_eq!(out.num("files_deleted"), 0, "{out}");
    assert_eq!(out.num("conflicts"), 0, "{out}");
    assert_eq!(out.num("bytes_written"), bytes, "{out}");
    assert_eq!(out.num("bytes_from_source"), bytes, "{out}");
    assert_eq!(out.num("bytes_reused"), 0, "{out}");
    assert_eq!(out.json()["dry_run"], false, "{out}");
    assert_no_errors(&out);
    assert!(out.list("warnings").is_empty(), "{out}");
    assert!(out.list("planned").is_empty(), "{out}");

    // Contents, kinds, modes, file mtimes (ns), link targets; no temp files.
    assert_eq!(d.tree("dst"), src_before);
    assert_eq!(d.tree("src"), src_before, "a one-way sync changed SRC");
    // Links are links, never followed: nothing of `outside` was copied.
    assert_eq!(
        d.tree("dst").get("link-out-absolute"),
        Some(&Node::Symlink {
            target: d.path("outside").to_str().unwrap().to_string()
        })
    );
    assert_eq!(
        d.read_link("dst/link-out-relative"),
        "../outside/secret.txt"
    );
    // The root takes SRC's mode; directory and symlink mtimes are kept too.
    assert_eq!(d.mode("dst"), 0o755);
    for p in [
        "nested",
        "nested/deeper",
        "empty",
        "ünïcödé",
        "link-in",
        "link-out-relative",
        "link-out-absolute",
        "dangling",
    ] {
        assert_eq!(
            d.mtime(&format!("dst/{p}")),
            d.mtime(&format!("src/{p}")),
            "mtime of {p}"
        );
    }

    // Second run: nothing to do, nothing changes.
    let dst_before = d.tree("dst");
    let out = d.sync_json(&["src", "dst"]);
    out.ok();
    for field in [
        "files_copied",
        "files_deleted",
        "dirs_created",
        "symlinks_written",
        "metadata_updated",
        "bytes_written",
        "bytes_from_source",
        "bytes_reused",
    ] {
        assert_eq!(out.num(field), 0, "second run: {field}\n{out}");
    }
    assert_eq!(out.num("files_total"), files, "{out}");
    assert_eq!(d.tree("dst"), dst_before);
    assert_eq!(d.tree("src"), src_before);
}

#[test]
fn human_summary_and_threads_flag() {
    let d = Dir::new("human");
    d.write("src/a", "a");
    d.write("src/sub/b", "bb");
    let out = d.sync(&["src", "dst", "--threads", "1"]);
    out.ok();
    assert!(
        out.stdout
            .contains("2 files in source; 2 copied, 0 deleted, 1 dirs created"),
        "{out}"
    );
    assert_same_tree(&d, "src", "dst");

    // A missing DST is created with its missing parents.
    d.sync(&["src", "deep/new/dst"]).ok();
    assert_same_tree(&d, "src", "deep/new/dst");
}

/// More files than the process may hold descriptors, over more directories
/// than one batch keeps open. A written file waits for its batch's flush
/// with its directory open; when every file held its own descriptor, a
/// sync of `small` under the usual `ulimit -n 1024` stopped with errors
/// after 1,016 files.
#[test]
fn regression_many_directories_within_a_low_open_file_limit() {
    let d = Dir::new("fd-limit");
    for dir in 0..600 {
        for f in 0..3 {
            d.write(&format!("src/d{dir:03}/f{f}"), format!("{dir}/{f}"));
        }
    }
    let mut cmd = d.command();
    // SAFETY: only setrlimit runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 384,
                rlim_max: 384,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = Output::of(cmd.args(["sync", "src", "dst", "--no-progress", "--json"]));
    out.ok();
    assert_no_errors(&out);
    assert_eq!(out.json.as_ref().unwrap()["files_copied"], 1800, "{out}");
    assert_same_tree(&d, "src", "dst");
}

#[test]
fn home_comes_from_meshsync_home_without_the_flag() {
    let d = Dir::new("env-home");
    d.write("src/f", "f");
    let out = Output::of(
        std::process::Command::new(env!("CARGO_BIN_EXE_meshsync"))
            .current_dir(d.root())
            .env("MESHSYNC_HOME", d.path("env-home"))
            .args(["sync", "src", "dst", "--no-progress"]),
    );
    out.ok();
    assert!(d.path("env-home/index.redb").is_file(), "{out}");
    assert!(!d.exists("home"));
}

// ---------------------------------------------------------------------------
// 2. Delta transfer and chunk reuse

#[test]
fn insert_near_start_of_big_file_resends_about_one_chunk() {
    let d = Dir::new("delta");
    d.write_with("src/data.bin", random_bytes(2, 4 * MIB), 0o644, T1);
    d.sync(&["src", "dst"]).ok();

    let new = insert_bytes(&d, "src/data.bin", 10_000, &[0xAB; 100], T2);
    let out = d.sync_json(&["src", "dst"]);
    out.ok();
    assert_no_errors(&out);
    assert_eq!(out.num("files_copied"), 1, "{out}");
    assert!(
        out.num("bytes_from_source") < 600 * KIB as u64,
        "too much re-sent\n{out}"
    );
    assert!(
        out.num("bytes_reused") > 3 * MIB as u64,
        "too little reused\n{out}"
    );
    assert_eq!(out.num("bytes_written"), new.len() as u64, "{out}");
    assert_eq!(d.read("dst/data.bin"), new);
    assert_same_tree(&d, "src", "dst");
}

#[test]
fn moved_file_costs_no_source_bytes() {
    let d = Dir::new("move");
    let data = random_bytes(3, 2 * MIB + 7);
    d.write_with("src/a/data.bin", &data, 0o644, T1);
    d.sync(&["src", "dst"]).ok();

    d.rename("src/a/data.bin", "src/moved/deeper/data.bin");
    let out = d.sync_json(&["src", "dst", "--delete"]);
    out.ok();
    assert_eq!(out.num("bytes_from_source"), 0, "{out}");
    assert_eq!(out.num("bytes_reused"), data.len() as u64, "{out}");
    assert_eq!(out.num("files_copied"), 1, "{out}");
    assert_eq!(out.num("files_deleted"), 1, "{out}");
    assert_eq!(out.num("dirs_created"), 2, "{out}");
    assert!(!d.exists("dst/a/data.bin"));
    assert_eq!(d.read("dst/moved/deeper/data.bin"), data);
    assert_same_tree(&d, "src", "dst");
}

#[test]
fn copy_under_new_name_reuses_existing_chunks() {
    let d = Dir::new("dup");
    let data = random_bytes(4, MIB + 3);
    d.write_with("src/orig.bin", &data, 0o644, T1);
    d.sync(&["src", "dst"]).ok();

    d.copy_file("src/orig.bin", "src/sub/copy.bin");
    let out = d.sync_json(&["src", "dst"]);
    out.ok();
    assert_eq!(out.num("files_copied"), 1, "{out}");
    assert_eq!(out.num("bytes_from_source"), 0, "{out}");
    assert_eq!(out.num("bytes_reused"), data.len() as u64, "{out}");
    assert_same_tree(&d, "src", "dst");
}

#[test]
fn touched_file_is_rewritten_from_local_chunks() {
    let d = Dir::new("touch");
    let data = random_bytes(5, MIB);
    d.write_with("src/f.bin", &data, 0o644, T1);
    d.sync(&["src", "dst"]).ok();

    d.set_mtime("src/f.bin", T2);
    let out = d.sync_json(&["src", "dst"]);
    out.ok();
    assert_eq!(out.num("bytes_from_source"), 0, "{out}");
    assert_eq!(d.mtime("dst/f.bin"), T2);
    assert_same_tree(&d, "src", "dst");
}

/// Bug: chunks of a DST file this --home never hashed (an older cp/rsync copy) are not reused.
#[test]
fn regression_unindexed_destination_file_is_not_used_for_delta() {
    let d = Dir::new("delta-unindexed");
    let old = random_bytes(6, 4 * MIB);
    d.write_with("dst/data.bin", &old, 0o644, T1); // copied there by other means
    d.write_with("src/data.bin", &old, 0o644, T1);
    let new = insert_bytes(&d, "src/data.bin", 10_000, &[0xCD; 100], T2);

    let out = d.sync_json(&["src", "dst"]);
    out.ok();
    assert_eq!(d.read("dst/data.bin"), new);
    assert!(
        out.num("bytes_from_source") < 600 * KIB as u64,
        "the old copy in DST was not used\n{out}"
    );
}

// ---------------------------------------------------------------------------
// 3. --delete, kind changes, one-way overwrite semantics

#[test]
fn extras_stay_without_delete_and_go_with_it() {
    let d = Dir::new("delete");
    d.write_with("src/keep.txt", "keep\n", 0o644, T1);
    d.write_with("src/nested/keep2.txt", "keep2\n", 0o644, T1);
    d.write("dst/extra.txt", "extra\n");
    d.write("dst/nested/extra-in-synced-dir.txt", "extra\n");
    d.mkdir("dst/extra-empty-dir");

    let out = d.sync_json(&["src", "dst"]);
    out.ok();
    assert_eq!(out.num("files_deleted"), 0, "{out}");
    for p in [
        "extra.txt",
        "nested/extra-in-synced-dir.txt",
        "extra-empty-dir",
    ] {
        assert!(
            d.exists(&format!("dst/{p}")),
            "{p} deleted without --delete"
        );
    }
    assert_eq!(d.read_string("dst/keep.txt"), "keep\n");

    let out = d.sync_json(&["src", "dst", "--delete"]);
    out.ok();
    assert_eq!(out.num("files_deleted"), 3, "{out}");
    assert_same_tree(&d, "src", "dst");
}

/// Bug: --delete removes one level of an extra dir tree per run (dir ctime in the scan check).
#[test]
fn regression_delete_of_extra_dir_tree_fails_as_changed_since_scanned() {
    let d = Dir::new("delete-tree");
    d.write("src/keep.txt", "keep\n");
    d.write("dst/extra-dir/a/b/c.txt", "c\n");
    d.write("dst/extra-dir/top.txt", "top\n");

    // Deletes run deepest first; each directory's "unchanged since the scan"
    // check includes its ctime, which deleting its children just changed.
    let out = d.sync_json(&["src", "dst", "--delete"]);
    assert!(!d.exists("dst/extra-dir"), "extra tree still there\n{out}");
    out.ok();
    assert_same_tree(&d, "src", "dst");
}

/// Bug: a dir tree deleted from SRC needs one --delete run per level (dir ctime, as above).
#[test]
fn regression_delete_of_dir_tree_removed_from_source_fails_as_changed_since_scanned() {
    let d = Dir::new("delete-src-tree");
    d.write("src/keep.txt", "keep\n");
    d.write("src/tree/u/v.txt", "v\n");
    d.sync(&["src", "dst"]).ok();

    d.remove("src/tree");
    let out = d.sync_json(&["src", "dst", "--delete"]);
    assert!(!d.exists("dst/tree"), "deleted tree still in DST\n{out}");
    out.ok();
    assert_same_tree(&d, "src", "dst");
}

#[test]
fn file_replaced_by_dir_and_empty_dir_by_file() {
    let d = Dir::new("kinds");
    d.write("src/f", "file\n");
    d.mkdir("src/e");
    d.symlink("f", "src/l");
    d.sync(&["src", "dst"]).ok();

    d.remove("src/f");
    d.write_with("src/f/inside.txt", "now a dir\n", 0o644, T1);
    d.remove("src/e");
    d.write_with("src/e", "now a file\n", 0o644, T2);
    d.remove("src/l");
    d.write_with("src/l", "link became a file\n", 0o644, T3);
    let out = d.sync_json(&["src", "dst"]);
    out.ok();
    assert_same_tree(&d, "src", "dst");
}

#[test]
fn non_empty_dir_replaced_by_file_is_refused_without_delete() {
    let d = Dir::new("kind-refused");
    d.write("src/d/sub/x", "precious\n");
    d.write("src/other", "1\n");
    d.sync(&["src", "dst"]).ok();

    d.remove("src/d");
    d.write("src/d", "now a file\n");
    d.write_with("src/other", "2\n", 0o644, T2);
    let out = d.sync_json(&["src", "dst"]);
    out.code(3).stderr_has(&["d", "--delete"]);
    assert_eq!(d.read_string("dst/d/sub/x"), "precious\n", "data lost");
    // The rest is done.
    assert_eq!(d.read_string("dst/other"), "2\n");
    assert!(d.temp_files("dst").is_empty(), "{:?}", d.temp_files("dst"));
}

/// Bug: with --delete, a non-empty dir replaced by a file in SRC is never replaced (dir ctime).
#[test]
fn regression_dir_replaced_by_file_with_delete_fails() {
    let d = Dir::new("kind-delete");
    d.write("src/d/sub/x", "x\n");
    d.sync(&["src", "dst"]).ok();

    d.remove("src/d");
    d.write_with("src/d", "now a file\n", 0o644, T1);
    let out = d.sync_json(&["src", "dst", "--delete"]);
    assert_eq!(
        d.tree("dst").get("d"),
        d.tree("src").get("d"),
        "DST/d was not replaced by the file\n{out}"
    );
    out.ok();
    assert_same_tree(&d, "src", "dst");
}

#[test]
fn destination_edits_are_overwritten_by_source() {
    let d = Dir::new("overwrite");
    d.write_with("src/f.txt", "source version\n", 0o644, T1);
    d.sync(&["src", "dst"]).ok();

    d.write_with("dst/f.txt", "edited in the destination\n", 0o600, T2);
    let out = d.sync_json(&["src", "dst"]);
    out.ok();
    assert_eq!(out.num("files_copied"), 1, "{out}");
    assert_same_tree(&d, "src", "dst");
}

#[test]
fn metadata_only_changes_are_applied_in_place() {
    let d = Dir::new("metadata");
    d.write_with("src/f.txt", "same bytes\n", 0o644, T1);
    d.write("src/d/x", "x");
    d.sync(&["src", "dst"]).ok();

    d.chmod("src/f.txt", 0o600);
    d.chmod("src/d", 0o700);
    let out = d.sync_json(&["src", "dst"]);
    out.ok();
    assert_eq!(out.num("files_copied"), 0, "{out}");
    assert_eq!(out.num("metadata_updated"), 2, "{out}");
    assert_eq!(out.num("bytes_written"), 0, "{out}");
    assert_eq!(d.mode("dst/f.txt"), 0o600);
    assert_eq!(d.mode("dst/d"), 0o700);
    assert_same_tree(&d, "src", "dst");
}

/// Bug: a dir chmod plus a new file in that dir in one run fails the chmod (dir ctime).
#[test]
fn regression_dir_mode_change_with_new_child_fails_as_changed_since_scanned() {
    let d = Dir::new("dir-mode-child");
    d.write("src/d/a", "a\n");
    d.sync(&["src", "dst"]).ok();

    d.chmod("src/d", 0o700);
    d.write("src/d/new", "new\n");
    let out = d.sync_json(&["src", "dst"]);
    assert_eq!(d.mode("dst/d"), 0o700, "mode not applied\n{out}");
    out.ok();
    assert_same_tree(&d, "src", "dst");
}

#[test]
fn symlinked_dir_in_destination_is_replaced_never_written_through() {
    let d = Dir::new("dst-link");
    d.write("src/sub/f.txt", "f\n");
    d.mkdir("outside");
    d.mkdir("dst");
    d.symlink("../outside", "dst/sub");

    let out = d.sync_json(&["src", "dst"]);
    out.ok();
    assert!(d.tree("outside").0.is_empty(), "wrote through a symlink");
    assert!(d.lstat("dst/sub").is_dir());
    assert_same_tree(&d, "src", "dst");
}

#[test]
fn symlink_in_destination_to_outside_file_is_replaced_not_written_through() {
    let d = Dir::new("dst-file-link");
    d.write_with("outside/target.txt", "must stay\n", 0o644, T1);
    d.write_with("src/f.txt", "new content\n", 0o644, T2);
    d.mkdir("dst");
    d.symlink("../outside/target.txt", "dst/f.txt");

    let out = d.sync_json(&["src", "dst"]);
    out.ok();
    assert_eq!(d.read_string("outside/target.txt"), "must stay\n");
    assert_eq!(d.mtime("outside/target.txt"), T1);
    assert_same_tree(&d, "src", "dst");
}

#[test]
fn odd_mtimes_and_empty_source() {
    let d = Dir::new("odd");
    d.mkdir("empty-src");
    d.sync_json(&["empty-src", "dst-empty"]).ok();
    assert!(d.tree("dst-empty").0.is_empty());

    d.write_with(
        "src/pre-epoch",
        "1960\n",
        0o644,
        (-315_619_200, 500_000_000),
    );
    d.write_with("src/epoch", "1970\n", 0o644, (0, 0));
    d.write_with(
        "src/far-future",
        "2100\n",
        0o644,
        (4_102_444_800, 999_999_999),
    );
    d.sync_json(&["src", "dst"]).ok();
    assert_same_tree(&d, "src", "dst");
    let out = d.sync_json(&["src", "dst"]);
    out.ok();
    assert_eq!(out.num("files_copied"), 0, "{out}");
}

/// Bug: non-root, files inside a mode-0555 source dir never sync (DST dir made 0555 first).
#[test]
fn regression_read_only_source_dir_blocks_its_own_files() {
    let d = Dir::new("ro-dir");
    d.write_with("src/ro/f.txt", "inside a read-only dir\n", 0o644, T1);
    if !prepare_unprivileged(&d) {
        return;
    }
    d.chmod("src/ro", 0o555);

    let Some(out) = sync_unprivileged(&d) else {
        return;
    };
    assert!(
        d.exists("dst/ro/f.txt"),
        "file in read-only dir missing\n{out}"
    );
    out.ok();
    assert_eq!(d.mode("dst/ro"), 0o555);
    assert_same_tree(&d, "src", "dst");
}

// ---------------------------------------------------------------------------
// 4. --checksum

#[test]
fn checksum_catches_same_size_and_mtime_with_other_content() {
    let d = Dir::new("checksum");
    d.write_with("src/f.txt", "aaaa\n", 0o644, T1);
    d.write_with("src/g.txt", "same\n", 0o644, T1);
    d.sync(&["src", "dst"]).ok();
    // Same size, same mtime, other bytes: invisible to the quick check.
    d.write_with("dst/f.txt", "bbbb\n", 0o644, T1);

    let out = d.sync_json(&["src", "dst"]);
    out.ok();
    assert_eq!(out.num("files_copied"), 0, "{out}");
    assert_eq!(d.read_string("dst/f.txt"), "bbbb\n");

    let out = d.sync_json(&["src", "dst", "--checksum"]);
    out.ok();
    assert_eq!(out.num("files_copied"), 1, "{out}");
    assert_same_tree(&d, "src", "dst");

    let out = d.sync_json(&["src", "dst", "-c"]);
    out.ok();
    assert_eq!(out.num("files_copied"), 0, "{out}");
}

#[test]
fn checksum_with_fresh_index_compares_contents() {
    let d = Dir::new("checksum-fresh");
    d.write_with("src/f.txt", "aaaa\n", 0o644, T1);
    d.write_with("src/g.txt", "same\n", 0o644, T1);
    d.write_with("dst/f.txt", "bbbb\n", 0o644, T1);
    d.write_with("dst/g.txt", "same\n", 0o644, T1);

    let out = d.sync_json(&["src", "dst", "-c"]);
    out.ok();
    assert_eq!(out.num("files_copied"), 1, "{out}");
    assert_same_tree(&d, "src", "dst");
}

// ---------------------------------------------------------------------------
// 5. --dry-run

#[test]
fn dry_run_to_missing_destination_creates_nothing_and_lists_actions() {
    let d = Dir::new("dry-missing");
    sample_tree(&d);
    let src_before = d.tree("src");

    let out = d.sync_json(&["src", "dst", "--dry-run"]);
    out.ok();
    assert!(!d.exists("dst"), "dry run created DST");
    assert_eq!(d.tree("src"), src_before);
    assert_eq!(out.json()["dry_run"], true, "{out}");
    assert_eq!(out.num("files_copied"), 0, "{out}");
    assert_eq!(out.num("bytes_written"), 0, "{out}");
    let planned = out.list("planned");
    for want in [
        "mkdir     nested",
        "mkdir     empty",
        "copy      -> big.bin",
        "copy      -> nested/deeper/leaf.txt",
        "symlink -> link-in",
    ] {
        assert!(
            planned.iter().any(|l| l.starts_with(want)),
            "no plan line {want:?}\n{out}"
        );
    }

    // Human output lists the plan too.
    let out = d.sync(&["src", "dst", "-n"]);
    out.ok();
    assert!(out.stdout.contains("dry run:"), "{out}");
    assert!(out.stdout.contains("copy      -> run.sh"), "{out}");
    assert!(!d.exists("dst"));

    // The dry runs recorded nothing that would make the real run skip work.
    let out = d.sync_json(&["src", "dst"]);
    out.ok();
    assert_eq!(out.num("files_copied"), 6, "{out}");
    assert_same_tree(&d, "src", "dst");
}

#[test]
fn dry_run_changes_nothing_in_existing_destination() {
    let d = Dir::new("dry-existing");
    d.write_with("src/changed.txt", "v1\n", 0o644, T1);
    d.write_with("src/same.txt", "same\n", 0o644, T1);
    d.sync(&["src", "dst"]).ok();
    d.write_with("src/changed.txt", "v2 longer\n", 0o644, T2);
    d.write_with("src/new.txt", "new\n", 0o644, T2);
    d.chmod("src/same.txt", 0o600);
    d.write("dst/extra.txt", "extra\n");
    d.write("dst/.meshsync-tmp-999-0", "left by a crash");
    let (src_before, dst_before) = (d.tree("src"), d.tree("dst"));

    let out = d.sync_json(&["src", "dst", "--dry-run", "--delete"]);
    out.ok();
    assert_eq!(d.tree("src"), src_before);
    assert_eq!(d.tree("dst"), dst_before, "dry run changed DST");
    let planned = out.list("planned");
    for want in [
        "update    -> changed.txt",
        "copy      -> new.txt",
        "delete    extra.txt",
        "metadata  same.txt",
    ] {
        assert!(
            planned.iter().any(|l| l.starts_with(want)),
            "no plan line {want:?}\n{out}"
        );
    }
    assert_eq!(planned.len(), 4, "{out}");

    let out = d.sync_json(&["src", "dst", "--delete"]);
    out.ok();
    assert_eq!(out.num("files_copied"), 2, "{out}");
    assert_eq!(out.num("files_deleted"), 1, "{out}");
    assert_same_tree(&d, "src", "dst");
}

// ---------------------------------------------------------------------------
// 6. --two-way

/// The name of the single conflict copy of `stem.ext` in `dir`, checked
/// against `stem.sync-conflict-YYYYMMDD-HHMMSS-DEVICE-tag.ext`.
#[track_caller]
fn conflict_copy(d: &Dir, dir: &str, stem: &str, ext: &str) -> String {
    let prefix = format!("{stem}.sync-conflict-");
    let names: Vec<String> = d
        .tree(dir)
        .0
        .into_keys()
        .filter(|p| p.starts_with(&prefix))
        .collect();
    assert_eq!(names.len(), 1, "conflict copies in {dir}: {names:?}");
    let name = names[0].clone();
    let middle = name[prefix.len()..]
        .strip_suffix(ext)
        .unwrap_or_else(|| panic!("{name} does not keep the extension {ext}"));
    let parts: Vec<&str> = middle.splitn(3, '-').collect();
    assert_eq!(parts.len(), 3, "{name}");
    assert!(
        parts[0].len() == 8 && parts[0].bytes().all(|b| b.is_ascii_digit()),
        "{name}"
    );
    assert!(
        parts[1].len() == 6 && parts[1].bytes().all(|b| b.is_ascii_digit()),
        "{name}"
    );
    let (device, tag) = parts[2]
        .split_once('-')
        .unwrap_or_else(|| panic!("{name}: no tag"));
    assert!(!device.is_empty(), "{name}: no device");
    assert!(
        tag.len() == 6 && tag.bytes().all(|b| b.is_ascii_lowercase()),
        "{name}: the tag is not six letters"
    );
    name
}

#[test]
fn two_way_merges_edits_on_both_sides() {
    let d = Dir::new("two-way-merge");
    d.write_with("a/x.txt", "x1\n", 0o644, T1);
    d.write_with("a/y.txt", "y1\n", 0o644, T1);
    d.write_with("b/only-b.txt", "from b\n", 0o644, T1);
    let out = d.sync_json(&["a", "b", "--two-way"]);
    out.ok();
    assert!(d.lstat("a/.meshsync").is_dir(), "no marker in a");
    assert!(d.lstat("b/.meshsync").is_dir(), "no marker in b");
    assert_same_tree(&d, "a", "b");
    assert!(d.exists("a/only-b.txt"));

    d.write_with("a/x.txt", "x2 from a\n", 0o644, T2);
    d.write_with("b/y.txt", "y2 from b\n", 0o644, T2);
    d.write_with("a/new-a.txt", "new a\n", 0o644, T3);
    d.write_with("b/dir-b/new-b.txt", "new b\n", 0o644, T3);
    let out = d.sync_json(&["a", "b", "--two-way"]);
    out.ok();
    assert_eq!(out.num("conflicts"), 0, "{out}");
    assert_same_tree(&d, "a", "b");
    assert_eq!(d.read_string("b/x.txt"), "x2 from a\n");
    assert_eq!(d.read_string("a/y.txt"), "y2 from b\n");
    assert_eq!(d.read_string("a/dir-b/new-b.txt"), "new b\n");

    let out = d.sync_json(&["a", "b", "--two-way"]);
    out.ok();
    assert_eq!(out.num("files_copied"), 0, "{out}");
}

#[test]
fn two_way_concurrent_edit_keeps_both_versions() {
    let d = Dir::new("two-way-conflict");
    d.write_with("a/shared.txt", "original\n", 0o644, T1);
    d.sync(&["a", "b", "--two-way"]).ok();

    // Both sides edit; b's edit is newer, so b's copy keeps the name.
    d.write_with("a/shared.txt", "edit from a\n", 0o644, T2);
    d.write_with("b/shared.txt", "edit from b, longer\n", 0o644, T3);
    let out = d.sync_json(&["a", "b", "--two-way"]);
    out.ok();
    assert_eq!(out.num("conflicts"), 1, "{out}");
    let name_a = conflict_copy(&d, "a", "shared", ".txt");
    let name_b = conflict_copy(&d, "b", "shared", ".txt");
    assert_eq!(name_a, name_b);
    for side in ["a", "b"] {
        assert_eq!(
            d.read_string(&format!("{side}/shared.txt")),
            "edit from b, longer\n"
        );
        assert_eq!(d.read_string(&format!("{side}/{name_a}")), "edit from a\n");
    }
    assert_same_tree(&d, "a", "b");

    let out = d.sync_json(&["a", "b", "--two-way"]);
    out.ok();
    assert_eq!(out.num("conflicts"), 0, "{out}");
    assert_eq!(out.num("files_copied"), 0, "{out}");
}

#[test]
fn two_way_deletes_propagate_both_ways() {
    let d = Dir::new("two-way-delete");
    d.write_with("a/gone-from-a.txt", "1\n", 0o644, T1);
    d.write_with("a/gone-from-b.txt", "2\n", 0o644, T1);
    d.write_with("a/stays.txt", "3\n", 0o644, T1);
    d.sync(&["a", "b", "--two-way"]).ok();

    d.remove("a/gone-from-a.txt");
    d.remove("b/gone-from-b.txt");
    let out = d.sync_json(&["a", "b", "--two-way"]);
    out.ok();
    assert_eq!(out.num("files_deleted"), 2, "{out}");
    for side in ["a", "b"] {
        assert!(!d.exists(&format!("{side}/gone-from-a.txt")));
        assert!(!d.exists(&format!("{side}/gone-from-b.txt")));
    }
    assert_same_tree(&d, "a", "b");
}

/// Bug: a dir tree deleted on one side is not deleted on the other in one two-way run.
#[test]
fn regression_two_way_delete_of_dir_tree_fails_as_changed_since_scanned() {
    let d = Dir::new("two-way-delete-tree");
    d.write("a/keep.txt", "k\n");
    d.write("a/tree/u/v.txt", "v\n");
    d.sync(&["a", "b", "--two-way"]).ok();

    d.remove("a/tree");
    let out = d.sync_json(&["a", "b", "--two-way"]);
    assert!(!d.exists("b/tree"), "deleted tree still in b\n{out}");
    out.ok();
    assert_same_tree(&d, "a", "b");
}

#[test]
fn two_way_edit_beats_concurrent_delete() {
    let d = Dir::new("two-way-edit-delete");
    d.write_with("a/f.txt", "v1\n", 0o644, T1);
    d.write_with("a/g.txt", "g1\n", 0o644, T1);
    d.sync(&["a", "b", "--two-way"]).ok();

    d.remove("a/f.txt");
    d.write_with("b/f.txt", "v2 edited in b\n", 0o644, T2);
    d.write_with("a/g.txt", "g2 edited in a\n", 0o644, T2);
    d.remove("b/g.txt");
    let out = d.sync_json(&["a", "b", "--two-way"]);
    out.ok();
    assert_eq!(d.read_string("a/f.txt"), "v2 edited in b\n");
    assert_eq!(d.read_string("b/g.txt"), "g2 edited in a\n");
    assert_same_tree(&d, "a", "b");
}

#[test]
fn two_way_refuses_when_a_marker_is_missing_and_deletes_nothing() {
    let d = Dir::new("two-way-marker");
    d.write_with("a/f.txt", "f\n", 0o644, T1);
    d.write_with("a/g.txt", "g\n", 0o644, T1);
    d.sync(&["a", "b", "--two-way"]).ok();

    // b looks like an unmounted disk: its marker is gone; a changed meanwhile.
    d.remove("b/.meshsync");
    d.remove("a/f.txt");
    d.write_with("a/new.txt", "new\n", 0o644, T2);
    let (a_before, b_before) = (d.tree("a"), d.tree("b"));
    let out = d.sync(&["a", "b", "--two-way"]);
    out.code(1)
        .stderr_has(&["meshsync: error:", ".meshsync", "marker"]);
    assert!(
        out.stderr.contains(d.path("b").to_str().unwrap()),
        "the message does not name b\n{out}"
    );
    assert_eq!(d.tree("a"), a_before);
    assert_eq!(d.tree("b"), b_before);
    assert_eq!(d.read_string("b/f.txt"), "f\n");

    // Also when the whole tree is gone (an empty mount point).
    d.remove("b");
    d.mkdir("b");
    let out = d.sync(&["a", "b", "--two-way"]);
    out.code(1);
    assert_eq!(d.tree("a"), a_before, "a changed after b vanished");
}

#[test]
fn two_way_first_sync_of_diverged_trees() {
    let d = Dir::new("two-way-first");
    d.write_with("a/same.txt", "identical\n", 0o644, T1);
    d.write_with("b/same.txt", "identical\n", 0o644, T1);
    d.write_with("a/new.txt", "a's\n", 0o644, T1);
    d.write_with("b/new.txt", "b's, newer\n", 0o644, T2);

    let out = d.sync_json(&["a", "b", "--two-way"]);
    out.ok();
    // Identical copies are not a conflict; different ones are.
    assert_eq!(out.num("conflicts"), 1, "{out}");
    let name = conflict_copy(&d, "a", "new", ".txt");
    assert_eq!(d.read_string(&format!("b/{name}")), "a's\n");
    assert_eq!(d.read_string("a/new.txt"), "b's, newer\n");
    assert_same_tree(&d, "a", "b");
}

#[test]
fn two_way_rename_and_mode_change() {
    let d = Dir::new("two-way-rename");
    let data = random_bytes(40, MIB);
    d.write_with("a/big.bin", &data, 0o644, T1);
    d.write_with("a/mode.txt", "m\n", 0o644, T1);
    d.sync(&["a", "b", "--two-way"]).ok();

    d.rename("a/big.bin", "a/moved/big.bin");
    d.chmod("b/mode.txt", 0o600);
    let out = d.sync_json(&["a", "b", "--two-way"]);
    out.ok();
    assert_eq!(out.num("bytes_from_source"), 0, "{out}");
    assert_eq!(out.num("metadata_updated"), 1, "{out}");
    assert_eq!(d.mode("a/mode.txt"), 0o600);
    assert!(!d.exists("b/big.bin"));
    assert_eq!(d.read("b/moved/big.bin"), data);
    assert_same_tree(&d, "a", "b");
}

/// Bug: --two-way on trees synced one-way before is refused as "marker missing".
#[test]
fn regression_two_way_after_one_way_is_refused_as_missing_marker() {
    let d = Dir::new("one-then-two");
    d.write_with("a/f.txt", "f\n", 0o644, T1);
    d.sync(&["a", "b"]).ok();

    d.write_with("b/from-b.txt", "b\n", 0o644, T2);
    let out = d.sync_json(&["a", "b", "--two-way"]);
    out.ok();
    assert_same_tree(&d, "a", "b");
}

// ---------------------------------------------------------------------------
// 7. .meshsyncignore

#[test]
fn ignore_file_excludes_paths_with_negation_and_dir_patterns() {
    let d = Dir::new("ignore");
    d.write(
        "src/.meshsyncignore",
        "# comment\n*.log\n!keep.log\nbuild/\n/rootonly.txt\n",
    );
    for p in [
        "a.log",
        "keep.log",
        "logs/x.log",
        "build/out.o",
        "sub/build/deep.o",
        "rootonly.txt",
        "sub/rootonly.txt",
        "sub2/build",
        "normal.txt",
    ] {
        d.write(&format!("src/{p}"), p);
    }
    // Ignored paths already in DST are not touched, even by --delete.
    d.write("dst/a.log", "dst's own log\n");
    d.write("dst/build/old.o", "dst's own build\n");
    d.write("dst/not-ignored-extra.txt", "goes\n");

    let out = d.sync_json(&["src", "dst", "--delete"]);
    out.ok();
    let dst = d.tree("dst");
    let paths = dst.paths();
    for present in [
        ".meshsyncignore",
        "keep.log",
        "logs",
        "sub/rootonly.txt",
        "sub2/build",
        "normal.txt",
    ] {
        assert!(paths.contains(&present), "{present} missing: {paths:?}");
    }
    for absent in [
        "logs/x.log",
        "sub/build",
        "sub/build/deep.o",
        "rootonly.txt",
        "not-ignored-extra.txt",
    ] {
        assert!(!paths.contains(&absent), "{absent} synced: {paths:?}");
    }
    assert_eq!(d.read_string("dst/a.log"), "dst's own log\n");
    assert_eq!(d.read_string("dst/build/old.o"), "dst's own build\n");
    assert!(!d.exists("dst/build/out.o"));
    assert_eq!(out.num("files_deleted"), 1, "{out}");
}

// ---------------------------------------------------------------------------
// 8. Bad input and odd files

#[test]
fn missing_source_fails_naming_it() {
    let d = Dir::new("missing-src");
    let out = d.sync(&["no-such-dir", "dst"]);
    out.code(1)
        .stderr_has(&["meshsync: error:", "no-such-dir", "does not exist"]);
    assert!(!d.exists("dst"));
}

#[test]
fn source_inside_destination_is_refused() {
    let d = Dir::new("src-in-dst");
    d.write("dst/sub/f.txt", "f\n");
    d.write("dst/other.txt", "o\n");
    let before = d.tree("dst");
    let out = d.sync(&["dst/sub", "dst", "--delete"]);
    out.code(1).stderr_has(&["meshsync: error:", "inside"]);
    assert_eq!(d.tree("dst"), before);
}

#[test]
fn destination_inside_source_is_refused() {
    let d = Dir::new("dst-in-src");
    d.write("src/f.txt", "f\n");
    let out = d.sync(&["src", "src/backup"]);
    out.code(1).stderr_has(&["meshsync: error:", "inside"]);
    let out = d.sync(&["src", "src/."]);
    out.code(1).stderr_has(&["inside"]);
    let out = d.sync(&["src", "src"]);
    out.code(1).stderr_has(&["inside"]);
    assert_eq!(d.read_string("src/f.txt"), "f\n");
}

#[test]
fn single_file_onto_itself_is_refused_and_untouched() {
    let d = Dir::new("file-onto-itself");
    d.write_with("f.txt", "precious\n", 0o644, T1);
    d.sync(&["f.txt", "."]).code(1);
    d.sync(&["f.txt", "f.txt"]).code(1);
    d.sync(&["f.txt", "./f.txt", "--checksum"]).code(1);
    assert_eq!(d.read_string("f.txt"), "precious\n");
    assert_eq!(d.mtime("f.txt"), T1);
}

/// Bug: `sync src src/backup` is refused (exit 1) but creates src/backup first.
#[test]
fn regression_refused_nested_destination_is_created_inside_source() {
    let d = Dir::new("dst-in-src-created");
    d.write("src/f.txt", "f\n");
    let before = d.tree("src");
    d.sync(&["src", "src/backup"]).code(1);
    assert_eq!(d.tree("src"), before, "a refused sync changed SRC");
}

#[test]
fn directory_onto_file_is_refused() {
    let d = Dir::new("dir-onto-file");
    d.write("src/f.txt", "f\n");
    d.write_with("dst", "a file\n", 0o644, T1);
    let out = d.sync(&["src", "dst"]);
    out.code(1).stderr_has(&["meshsync: error:", "dst"]);
    assert_eq!(d.read_string("dst"), "a file\n");
    assert_eq!(d.mtime("dst"), T1);
}

#[test]
fn usage_errors_exit_2() {
    let d = Dir::new("usage");
    d.write("src/f", "f");
    d.run(&["sync"]).code(2);
    d.run(&["sync", "src"]).code(2);
    d.run(&["sync", "src", "dst", "--no-such-flag"]).code(2);
    d.run(&["sync", "src", "dst", "--two-way", "--delete"])
        .code(2);
    d.run(&["sync", "src", "dst", "--threads", "many"]).code(2);
    assert!(!d.exists("dst"));
}

#[test]
fn fifo_and_socket_in_source_are_skipped_with_a_warning() {
    let d = Dir::new("fifo");
    d.write("src/ok.txt", "ok\n");
    let fifo = CString::new(d.path("src/fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let _sock = std::os::unix::net::UnixListener::bind(d.path("src/sock")).unwrap();

    let out = d.sync_json(&["src", "dst"]);
    out.ok();
    let warnings = out.list("warnings").join("\n");
    assert!(warnings.contains("fifo"), "{out}");
    assert!(warnings.contains("sock"), "{out}");
    out.stderr_has(&["warning", "fifo", "sock"]);
    assert_eq!(d.tree("dst").paths(), vec!["ok.txt"]);
}

/// The uid that unreadable-file tests run the binary as when they run as
/// root (root reads through any permission bits).
const NOBODY: u32 = 65_534;

/// Gets the sandbox ready for [`sync_unprivileged`]: as root, hands it to
/// `nobody`. False (after saying why) when that cannot work here.
fn prepare_unprivileged(d: &Dir) -> bool {
    if !is_root() {
        return true;
    }
    // nobody must be able to reach the sandbox.
    let blocked = d
        .root()
        .ancestors()
        .skip(1)
        .find(|a| std::fs::metadata(a).is_ok_and(|m| m.mode() & 0o001 == 0));
    if let Some(a) = blocked {
        eprintln!("skipped: {a:?} is not searchable by uid {NOBODY}");
        return false;
    }
    d.chmod(".", 0o755);
    d.chown_tree(".", NOBODY, NOBODY);
    true
}

/// Runs `sync src dst --json` so that mode-000 paths are really unreadable:
/// as `nobody` when root, else as ourselves. `None` (after saying why) when
/// this process may not switch users.
fn sync_unprivileged(d: &Dir) -> Option<Output> {
    if !is_root() {
        return Some(d.sync_json(&["src", "dst"]));
    }
    match d.sync_json_as(NOBODY, &["src", "dst"]) {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!("skipped: cannot run as uid {NOBODY}: {e}");
            None
        }
        Err(e) => panic!("running meshsync as uid {NOBODY}: {e}"),
    }
}

#[test]
fn unreadable_source_file_fails_alone() {
    let d = Dir::new("unreadable-file");
    d.write("src/ok.txt", "ok\n");
    d.write("src/sub/ok2.txt", "ok2\n");
    d.write("src/secret.txt", "secret\n");
    if !prepare_unprivileged(&d) {
        return;
    }
    d.chmod("src/secret.txt", 0o000);

    let Some(out) = sync_unprivileged(&d) else {
        return;
    };
    out.code(3).stderr_has(&["secret.txt"]);
    assert_eq!(d.read_string("dst/ok.txt"), "ok\n");
    assert_eq!(d.read_string("dst/sub/ok2.txt"), "ok2\n");
    assert!(!d.exists("dst/secret.txt"));
    assert!(d.temp_files("dst").is_empty(), "{:?}", d.temp_files("dst"));
}

/// Bug: an unreadable source dir is only a warning: its contents are skipped, yet exit is 0.
#[test]
fn regression_unreadable_source_dir_exits_0() {
    let d = Dir::new("unreadable-dir");
    d.write("src/ok.txt", "ok\n");
    d.write("src/locked/inside.txt", "inside\n");
    if !prepare_unprivileged(&d) {
        return;
    }
    d.chmod("src/locked", 0o000);

    let Some(out) = sync_unprivileged(&d) else {
        return;
    };
    assert_eq!(d.read_string("dst/ok.txt"), "ok\n", "{out}");
    out.stderr_has(&["locked"]);
    assert!(!d.exists("dst/locked/inside.txt"));
    out.code(3);
}

#[test]
fn stale_temp_files_in_destination_are_removed_and_never_synced() {
    let d = Dir::new("stale-temp");
    d.write("src/f.txt", "f\n");
    d.write("src/sub/g.txt", "g\n");
    d.write("dst/.meshsync-tmp-123", "left by a crash");
    d.write("dst/sub/.meshsync-tmp-456-7", "left by a crash");

    let out = d.sync_json(&["src", "dst"]);
    out.ok();
    assert!(d.temp_files("dst").is_empty(), "{:?}", d.temp_files("dst"));
    assert!(d.temp_files("src").is_empty());
    assert_same_tree(&d, "src", "dst");
}

/// Bug: one-way sync deletes SRC files named `.meshsync-tmp-*` (it must never write to SRC).
#[test]
fn regression_one_way_sync_deletes_temp_named_files_in_source() {
    let d = Dir::new("src-temp-name");
    d.write("src/f.txt", "f\n");
    // A user's file, or the live temporary of another sync writing into SRC.
    d.write("src/.meshsync-tmp-x", "a user's file\n");

    let out = d.sync_json(&["src", "dst"]);
    out.ok();
    assert!(!d.exists("dst/.meshsync-tmp-x"), "internal name synced");
    assert_eq!(d.tree("dst").paths(), vec!["f.txt"]);
    assert!(d.exists("src/.meshsync-tmp-x"), "deleted from SRC");
}

#[test]
fn internal_meshsync_dir_in_source_is_not_synced() {
    let d = Dir::new("src-meta");
    d.write("src/f.txt", "f\n");
    d.write("src/.meshsync/state", "internal\n");
    d.sync_json(&["src", "dst"]).ok();
    assert!(!d.exists("dst/.meshsync/state"));
}

/// Bug: a file with an NFD name (e + U+0301) never syncs: the copy opens its NFC name.
#[test]
fn regression_nfd_file_name_is_never_synced() {
    let d = Dir::new("nfd");
    let nfd = "e\u{301}te\u{301}.txt";
    d.write(&format!("src/{nfd}"), "nfd\n");
    d.write("src/ok.txt", "ok\n");

    let out = d.sync_json(&["src", "dst"]);
    assert_eq!(d.read_string("dst/ok.txt"), "ok\n");
    out.ok();
    let names = d.tree("dst");
    assert_eq!(names.0.len(), 2, "{:?}\n{out}", names.paths());
}

/// Bug: a closed stdout (`meshsync sync … | head -1`) panics with "Broken pipe" and a backtrace.
#[test]
fn regression_closed_stdout_panics() {
    let d = Dir::new("epipe");
    d.write("src/f.txt", "f\n");
    let mut child = d
        .command()
        .args(["sync", "src", "dst", "--json", "--no-progress"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before anything is printed
    let out = Output::from_output(child.wait_with_output().unwrap());
    assert_eq!(d.read_string("dst/f.txt"), "f\n");
    assert!(!out.stderr.contains("panicked"), "{out}");
}

// ---------------------------------------------------------------------------
// 9. A full disk, for real (a small tmpfs as DST)

/// A sandbox whose `dst` is a 2 MiB tmpfs. Fields drop in order: the mount
/// goes before the sandbox, panics included.
struct FullDisk {
    _mount: TmpfsMount,
    d: Dir,
}

/// `None` (after saying why) when tmpfs cannot be mounted here.
fn full_disk(name: &str) -> Option<FullDisk> {
    if !is_root() {
        eprintln!("skipped: needs root (mounts a tmpfs to fill it)");
        return None;
    }
    let d = Dir::new(name);
    d.mkdir("dst");
    match TmpfsMount::new(&d.path("dst"), "2m") {
        Ok(m) => Some(FullDisk { _mount: m, d }),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            eprintln!("skipped: mounting tmpfs is not permitted here ({e})");
            None
        }
        Err(e) => panic!("mounting tmpfs: {e}"),
    }
}

#[test]
fn full_disk_fails_only_the_file_that_does_not_fit() {
    let Some(FullDisk { d, _mount }) = full_disk("full") else {
        return;
    };
    let small = random_bytes(10, MIB);
    d.write_with("src/small.bin", &small, 0o640, T1);
    d.write_with("src/big.bin", random_bytes(11, 5 * MIB), 0o644, T1);

    // One thread: the big file fails before the small one is written (see
    // the bug test below for what parallel writers do).
    let out = d.sync_json(&["src", "dst", "--threads", "1"]);
    out.code(3);
    let big = d.path("dst/big.bin");
    out.stderr_has(&[big.to_str().unwrap(), "no space"]);
    assert!(!out.stderr.contains("small.bin"), "{out}");
    assert_eq!(out.list("errors").len(), 1, "{out}");
    assert_eq!(out.num("files_copied"), 1, "{out}");
    assert_eq!(d.read("dst/small.bin"), small);
    assert_eq!(
        d.tree("dst").get("small.bin"),
        d.tree("src").get("small.bin")
    );
    assert!(!d.exists("dst/big.bin"));
    assert!(d.temp_files("dst").is_empty(), "{:?}", d.temp_files("dst"));
}

#[test]
fn full_disk_leaves_the_old_version_untouched() {
    let Some(FullDisk { d, _mount }) = full_disk("full-old") else {
        return;
    };
    let old = random_bytes(12, MIB + MIB / 2);
    d.write_with("dst/big.bin", &old, 0o644, T1);
    d.write_with("src/big.bin", random_bytes(13, 3 * MIB), 0o644, T2);
    let before = d.tree("dst");

    let out = d.sync_json(&["src", "dst"]);
    out.code(3).stderr_has(&["big.bin", "no space"]);
    assert_eq!(d.read("dst/big.bin"), old);
    assert_eq!(
        d.tree("dst"),
        before,
        "DST changed (or a temp file was left)"
    );
}

/// Bug: on a full disk, parallel writers make a file that fits fail too (about half the runs).
#[test]
fn regression_full_disk_parallel_writers_fail_a_file_that_fits() {
    let Some(FullDisk { d, _mount }) = full_disk("full-parallel") else {
        return;
    };
    let small = random_bytes(14, MIB);
    d.write_with("src/small.bin", &small, 0o644, T1);
    d.write_with("src/big.bin", random_bytes(15, 5 * MIB), 0o644, T1);
    // The big file's temporary fills the disk while the small one is being
    // written. Twelve tries make a pass unlikely (~0.02%) while the bug lives.
    for attempt in 1..=12 {
        let out = d.sync_json(&["src", "dst"]);
        out.code(3);
        assert!(
            d.exists("dst/small.bin"),
            "attempt {attempt}: the 1 MiB file did not arrive\n{out}"
        );
        assert_eq!(d.read("dst/small.bin"), small);
        assert!(d.temp_files("dst").is_empty());
        // Start over.
        d.remove("dst/small.bin");
        d.remove("home");
    }
}

// ---------------------------------------------------------------------------
// 10. Single-file mode

#[test]
fn single_file_into_a_dir_and_to_a_new_name() {
    let d = Dir::new("single");
    d.write_with("f.bin", random_bytes(20, 100 * KIB), 0o640, T1);
    d.mkdir("out");

    d.sync_json(&["f.bin", "out/"]).ok();
    assert_eq!(d.tree("out").get("f.bin"), d.tree(".").get("f.bin"));
    d.sync_json(&["f.bin", "out"]).ok(); // no slash: still into the directory
    assert_eq!(d.tree("out").paths(), vec!["f.bin"]);

    let out = d.sync_json(&["f.bin", "out/renamed.bin"]);
    out.ok();
    assert_eq!(out.num("files_copied"), 1, "{out}");
    assert_eq!(d.read("out/renamed.bin"), d.read("f.bin"));
    assert_eq!(d.mode("out/renamed.bin"), 0o640);
    assert_eq!(d.mtime("out/renamed.bin"), T1);

    let out = d.sync_json(&["f.bin", "out/renamed.bin"]);
    out.ok();
    assert_eq!(out.num("files_copied"), 0, "{out}");
    assert!(d.temp_files("out").is_empty());
}

#[test]
fn single_file_delta_against_existing_target() {
    let d = Dir::new("single-delta");
    d.write_with("f.bin", random_bytes(21, 4 * MIB), 0o644, T1);
    d.sync_json(&["f.bin", "copy.bin"]).ok();
    assert_eq!(d.read("copy.bin"), d.read("f.bin"));

    let new = insert_bytes(&d, "f.bin", 5_000, &[7; 100], T2);
    let out = d.sync_json(&["f.bin", "copy.bin"]);
    out.ok();
    assert!(out.num("bytes_from_source") < 600 * KIB as u64, "{out}");
    assert!(out.num("bytes_reused") > 3 * MIB as u64, "{out}");
    assert_eq!(d.read("copy.bin"), new);
    assert_eq!(d.mtime("copy.bin"), T2);
}

#[test]
fn single_file_dry_run_and_checksum() {
    let d = Dir::new("single-flags");
    d.write_with("f.txt", "aaaa\n", 0o644, T1);
    d.write_with("g.txt", "bbbb\n", 0o644, T1);

    let out = d.sync_json(&["f.txt", "h.txt", "-n"]);
    out.ok();
    assert_eq!(out.list("planned").len(), 1, "{out}");
    assert!(out.list("planned")[0].starts_with("copy"), "{out}");
    assert!(!d.exists("h.txt"), "dry run wrote the file");

    // Same size and mtime: skipped by the quick check, copied with -c.
    let out = d.sync_json(&["f.txt", "g.txt"]);
    out.ok();
    assert_eq!(out.num("files_copied"), 0, "{out}");
    assert_eq!(d.read_string("g.txt"), "bbbb\n");
    let out = d.sync_json(&["f.txt", "g.txt", "--checksum"]);
    out.ok();
    assert_eq!(out.num("files_copied"), 1, "{out}");
    assert_eq!(d.read_string("g.txt"), "aaaa\n");
}

// ---------------------------------------------------------------------------
// 11. A target changed after the scan is never overwritten

/// Waits (up to 20 s) until a file whose name starts with `prefix` is
/// created in the directory watched by inotify descriptor `fd`.
fn wait_for_create(fd: &OwnedFd, prefix: &str, child: &mut std::process::Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 200) };
        if n <= 0 {
            if child.try_wait().expect("try_wait").is_some() {
                return false;
            }
            continue;
        }
        // SAFETY: reading into a buffer we own, within its length.
        let len = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert!(len > 0, "inotify read: {}", std::io::Error::last_os_error());
        let mut at = 0usize;
        let header = std::mem::size_of::<libc::inotify_event>();
        while at + header <= len as usize {
            let name_len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
            let name = &buf[at + header..at + header + name_len];
            let name = name.split(|b| *b == 0).next().unwrap_or_default();
            if name.starts_with(prefix.as_bytes()) {
                return true;
            }
            at += header + name_len;
        }
    }
    false
}

/// Runs `sync src dst`, and the moment its first temporary file appears in
/// DST (after the scan, before any rename) freezes it, runs `edit`, and lets
/// it go on. Panics if no temporary file was seen.
fn sync_with_edit_during_write(d: &Dir, edit: impl FnOnce()) -> Output {
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    assert!(
        fd >= 0,
        "inotify_init1: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let dst = CString::new(d.path("dst").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid descriptor and C string.
    let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), dst.as_ptr(), libc::IN_CREATE) };
    assert!(wd >= 0, "inotify_add_watch");

    let mut child = d.spawn_sync(&["src", "dst"]);
    let pid = child.id() as libc::pid_t;
    let seen = wait_for_create(&fd, util::TEMP_PREFIX, &mut child);
    if seen {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        edit();
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    }
    let out = Output::from_output(child.wait_with_output().expect("waiting for meshsync"));
    assert!(seen, "no temporary file was created in DST\n{out}");
    out
}

#[test]
fn target_changed_after_the_scan_is_not_overwritten() {
    let d = Dir::new("race");
    d.write_with("src/f.bin", random_bytes(30, 8 * MIB), 0o644, T1);
    d.sync(&["src", "dst"]).ok();
    // All-new content: no chunk can be reused, so the copy takes a while.
    d.write_with("src/f.bin", random_bytes(31, 8 * MIB), 0o644, T2);

    let out = sync_with_edit_during_write(&d, || {
        d.write("dst/f.bin", "edited by the user during the sync\n");
    });
    out.code(3)
        .stderr_has(&["f.bin", "changed since it was scanned"]);
    assert_eq!(out.num("files_copied"), 0, "{out}");
    assert_eq!(
        d.read_string("dst/f.bin"),
        "edited by the user during the sync\n"
    );
    assert!(d.temp_files("dst").is_empty(), "{:?}", d.temp_files("dst"));
}

#[test]
fn target_created_after_the_scan_is_not_overwritten() {
    let d = Dir::new("race-new");
    d.write("src/old.txt", "old\n");
    d.sync(&["src", "dst"]).ok();
    d.write_with("src/new.bin", random_bytes(32, 8 * MIB), 0o644, T1);

    let out = sync_with_edit_during_write(&d, || {
        d.write("dst/new.bin", "created by the user during the sync\n");
    });
    out.code(3)
        .stderr_has(&["new.bin", "changed since it was scanned"]);
    assert_eq!(
        d.read_string("dst/new.bin"),
        "created by the user during the sync\n"
    );
    assert!(d.temp_files("dst").is_empty(), "{:?}", d.temp_files("dst"));
}
