//! Regression tests for data-loss bugs other sync tools shipped, where the
//! core decides (the planner and the global view, with in-memory indexes),
//! and the replay of the core fuzz targets over their seed corpus and over
//! random input.
//!
//! Each test is named after the bug it pins (`syncthing_6252_…`) and says
//! first what went wrong there. Tests named `regression_…` pin a meshsync
//! bug found this way: they fail until it is fixed. The daemon- and
//! disk-level halves of these bugs are in `crates/meshsync/tests/security.rs`;
//! `docs/reliability.md` lists both.
//!
//! The fuzz targets are plain functions in `fuzz/src/core_targets.rs`,
//! included here so that `cargo test` runs exactly what the fuzzer runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use meshsync_core::entry::{ChunkRef, CompareMode, Content, FileEntry, FileKind, Timestamp};
use meshsync_core::global::global_index;
use meshsync_core::ids::{Hash, ShortId};
use meshsync_core::path::RelPath;
use meshsync_core::plan::{Action, Direction, EntryMap, Index, Plan, PlanInput, Side, plan};
use meshsync_core::version::VersionVector;
use proptest::prelude::*;

#[path = "../../../fuzz/src/core_targets.rs"]
mod core_targets;

const A: ShortId = ShortId(0xa);
const B: ShortId = ShortId(0xb);
const C: ShortId = ShortId(0xc);

/// Jan 2024 and Jun 2024: "months" apart.
const JAN: i64 = 1_704_067_200;
const JUN: i64 = 1_717_200_000;

fn version(counters: &[(ShortId, u64)]) -> VersionVector {
    let mut v = VersionVector::new();
    // bump_at sets the counter to max(clock, largest + 1); feeding counters
    // in increasing order rebuilds exactly the vector given.
    let mut sorted = counters.to_vec();
    sorted.sort_by_key(|(_, c)| *c);
    for (d, c) in sorted {
        v.bump_at(d, c);
    }
    let mut want = counters.to_vec();
    want.sort();
    assert_eq!(
        v.counters(),
        &want[..],
        "distinct counters only: {counters:?}"
    );
    v
}

fn file(path: &str, body: &[u8], mtime: i64, v: &[(ShortId, u64)]) -> FileEntry {
    FileEntry {
        path: RelPath::new(path).unwrap(),
        kind: FileKind::File,
        size: body.len() as u64,
        mtime: Timestamp {
            secs: mtime,
            nanos: 0,
        },
        permissions: 0o644,
        symlink_target: None,
        content: Some(Content {
            hash: Hash::of(body),
            chunk_avg: 65536,
            chunks: vec![ChunkRef {
                hash: Hash::of(body),
                len: body.len() as u32,
            }],
        }),
        version: version(v),
        deleted: false,
        sequence: 1,
    }
}

fn dir(path: &str, v: &[(ShortId, u64)]) -> FileEntry {
    FileEntry {
        kind: FileKind::Directory,
        size: 0,
        content: None,
        permissions: 0o755,
        ..file(path, b"", JAN, v)
    }
}

fn tombstone(mut e: FileEntry, v: &[(ShortId, u64)]) -> FileEntry {
    e.deleted = true;
    e.content = None;
    e.size = 0;
    e.version = version(v);
    e
}

fn index<'a>(entries: impl IntoIterator<Item = &'a FileEntry>) -> Index {
    entries
        .into_iter()
        .map(|e| (e.path.clone(), e.clone()))
        .collect()
}

fn two_way(a: &Index, b: &Index) -> Plan {
    plan(&PlanInput {
        a,
        b,
        a_device: A,
        b_device: B,
        direction: Direction::TwoWay,
        compare: CompareMode::Metadata,
        now_unix_secs: JUN + 100,
    })
}

fn deletes_on(plan: &Plan, side: Side) -> Vec<&RelPath> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Delete {
                side: s, expected, ..
            } if *s == side => Some(&expected.path),
            _ => None,
        })
        .collect()
}

fn writes_to(plan: &Plan, side: Side) -> Vec<&Action> {
    plan.actions
        .iter()
        .filter(|a| match a {
            Action::Copy { from, .. } | Action::Symlink { from, .. } => *from != side,
            _ => false,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// A folder root that vanished is not "everything deleted"

/// Syncthing #154, #799, #1496, #4345; Unison #262: an unmounted disk or a
/// missing folder root was scanned as an empty folder, and its emptiness
/// was synced as the deletion of everything. The store refuses to scan a
/// folder without its marker (security.rs pins that); here the planner's
/// half: absence from an index (a device that lost or never had its
/// index) deletes nothing. Only a tombstone, a recorded delete, does.
#[test]
fn syncthing_4345_empty_index_deletes_nothing_on_the_peer() {
    let a = index(&[
        dir("photos", &[(A, 1)]),
        file("photos/2019.jpg", b"jpeg bytes", JAN, &[(A, 2)]),
        file("notes.txt", b"notes", JAN, &[(A, 3), (B, 1)]),
    ]);
    for (name, b) in [
        ("empty index", Index::new()),
        (
            "unrelated entry only",
            index(&[file("other.txt", b"x", JUN, &[(B, 9)])]),
        ),
    ] {
        let p = two_way(&a, &b);
        assert!(
            deletes_on(&p, Side::A).is_empty(),
            "{name}: {:?}",
            p.actions
        );
        // ... and the other side gets everything back instead.
        let back: Vec<&str> = writes_to(&p, Side::B)
            .iter()
            .map(|a| a.path().as_str())
            .collect();
        assert_eq!(back, ["notes.txt", "photos/2019.jpg"], "{name}");
        // The same in the global view a daemon plans against: the missing
        // device's empty index changes nothing.
        let g = global_index(&[&a as &dyn EntryMap, &b]);
        for e in a.values() {
            assert_eq!(g.get(&e.path), Some(e), "{name}");
        }
    }
}

/// The contrast that makes the test above meaningful: a real, recorded
/// delete does propagate. (If this fails, the planner never deletes, and
/// the test above proves nothing.)
#[test]
fn syncthing_4345_contrast_a_recorded_delete_propagates() {
    let photo = file("photos/2019.jpg", b"jpeg bytes", JAN, &[(A, 2)]);
    let a = index([&photo]);
    let b = index(&[tombstone(photo, &[(A, 2), (B, 3)])]);
    let p = two_way(&a, &b);
    assert_eq!(
        deletes_on(&p, Side::A)
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>(),
        ["photos/2019.jpg"]
    );
}

// ---------------------------------------------------------------------------
// An unscanned or concurrent local change is never overwritten by a pull

/// Syncthing #1852, #2416: a pull replaced a file the user had just edited,
/// before the scanner saw the edit. Two layers stop it: every write names
/// the exact entry it replaces (`replaces`: the scanned entry), so the
/// writer refuses a target that changed since the scan (security.rs pins
/// that on disk); and once scanned, the edit is concurrent with the
/// incoming version, which is a conflict that keeps both copies, never a
/// plain overwrite.
#[test]
fn syncthing_1852_concurrent_local_change_is_a_conflict_not_an_overwrite() {
    // Both edited the same file since they last agreed on {A:1}.
    let a = index(&[file("report.doc", b"A's edit", JUN, &[(A, 5)])]);
    let b = index(&[file("report.doc", b"B's edit", JAN, &[(A, 1), (B, 2)])]);
    let p = two_way(&a, &b);
    let kept: Vec<_> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::KeepConflictCopy { side, entry, to } => Some((*side, entry, to)),
            _ => None,
        })
        .collect();
    assert_eq!(kept.len(), 1, "{:?}", p.actions);
    let (side, loser, to) = kept[0];
    // A's copy is newer, so B's edit is the loser, kept under a new name.
    assert_eq!(side, Side::B);
    assert_eq!(loser.content, b["report.doc"].content);
    assert!(to.as_str().contains(".sync-conflict-"), "{to}");
    // The winner then takes the name, and travels to A's side as the
    // conflict copy does.
    for action in &p.actions {
        if let Action::Copy {
            from: Side::A,
            source,
            replaces,
            ..
        } = action
            && source.path.as_str() == "report.doc"
        {
            assert_eq!(replaces, &None, "the loser was moved away first");
        }
    }
    assert!(deletes_on(&p, Side::B).is_empty(), "{:?}", p.actions);
}

/// The other half of #1852: when only the remote side changed, the write
/// still names the entry it expects to replace, field for field, so an
/// edit the scan did not see makes the writer refuse.
#[test]
fn syncthing_1852_every_overwrite_names_the_scanned_entry_it_replaces() {
    let old = file("a.txt", b"old", JAN, &[(A, 1)]);
    let a = index(&[file("a.txt", b"new from A", JUN, &[(A, 2)])]);
    let b = index([&old]);
    let p = two_way(&a, &b);
    let copies: Vec<_> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Copy { replaces, .. } => Some(replaces),
            _ => None,
        })
        .collect();
    assert_eq!(copies, [&Some(Box::new(old))]);
}

// ---------------------------------------------------------------------------
// A device back after months offline: its stale files must not win

/// Syncthing #6252: a device that came back after a long time offline
/// "won" with its stale copies (its mtimes were newer: a restore, a clock,
/// a touch), undoing months of changes. With version vectors the stale copy
/// is dominated: the newer change wins whatever the mtimes say, and the
/// stale copy is replaced, not kept as a conflict.
#[test]
fn syncthing_6252_stale_device_with_newer_mtime_loses_to_the_newer_change() {
    // B last synced at {A:2}; since then A changed the file twice (JAN),
    // while B's untouched old copy carries a newer mtime (JUN).
    let newer = file("budget.xlsx", b"months of work", JAN, &[(A, 4), (C, 3)]);
    let stale = file("budget.xlsx", b"old", JUN, &[(A, 2)]);
    let a = index([&newer]);
    let b = index([&stale]);
    let p = two_way(&a, &b);
    assert!(
        p.actions
            .iter()
            .all(|a| !matches!(a, Action::KeepConflictCopy { .. })),
        "no conflict: {:?}",
        p.actions
    );
    let winners: Vec<_> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Copy { from, source, .. } => Some((*from, source.content.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(winners, [(Side::A, newer.content.clone())]);
    // Seen from the stale side (sides swapped), the same winner: nothing
    // of the stale side's is written to the other.
    let p = two_way(&b, &a);
    assert!(writes_to(&p, Side::B).is_empty(), "{:?}", p.actions);
    assert_eq!(writes_to(&p, Side::A).len(), 1, "{:?}", p.actions);
    // And in the global view: the dominated copy never wins, in any order.
    for order in [[&a, &b], [&b, &a]] {
        let g = global_index(&[order[0] as &dyn EntryMap, order[1]]);
        assert_eq!(g["budget.xlsx"].content, newer.content);
    }
}

/// The same stale device, but its old copy is a *delete* the others never
/// saw: the delete is dominated too, and the file stays.
#[test]
fn syncthing_6252_stale_tombstone_does_not_delete_a_newer_file() {
    let newer = file("keep.txt", b"kept", JAN, &[(A, 4)]);
    let stale_delete = tombstone(file("keep.txt", b"", JUN, &[]), &[(A, 2)]);
    let p = two_way(&index([&newer]), &index([&stale_delete]));
    assert!(deletes_on(&p, Side::A).is_empty(), "{:?}", p.actions);
}

// ---------------------------------------------------------------------------
// A directory replaced on one device while files are created in it on another

/// Bug (found by `security.rs`; fixed in ed0b12e): in the global view a
/// daemon plans against, a directory replaced by a symlink or a file on one
/// device won as a whole, yet the children another device created in it
/// meanwhile stayed in the view below it. Planning against that view
/// deleted those children "to make room": files nobody else ever saw were
/// lost, with no conflict copy. The pairwise planner gets the same case right (sim
/// `bug4_seed100565_kind_change_keeps_concurrent_child`): the contrast at
/// the end.
#[test]
fn regression_global_view_keeps_files_created_in_a_dir_replaced_elsewhere() {
    for (what, replacement) in [
        ("file", file("sub", b"now a file", JUN, &[(A, 1), (B, 7)])),
        (
            "symlink",
            FileEntry {
                kind: FileKind::Symlink,
                symlink_target: Some("/elsewhere".into()),
                content: None,
                size: 0,
                ..file("sub", b"", JUN, &[(A, 1), (B, 7)])
            },
        ),
    ] {
        // A created two files in `sub` (its directory entry unchanged, as
        // the scanner records it); B, which never saw them, replaced `sub`.
        let a = index(&[
            dir("sub", &[(A, 1)]),
            file("sub/one.txt", b"one", JAN, &[(A, 2)]),
            file("sub/new.txt", b"created on A", JUN, &[(A, 4)]),
            dir("sub/deeper", &[(A, 5)]),
            file("sub/deeper/x.txt", b"x", JUN, &[(A, 6)]),
        ]);
        let b = index([
            &replacement,
            &tombstone(file("sub/one.txt", b"", JAN, &[]), &[(A, 2), (B, 7)]),
        ]);
        // What the daemon on A does: plan its own index against the
        // global view of every authoritative index.
        let global = global_index(&[&a as &dyn EntryMap, &b]);
        let p = two_way(&a, &global);
        let lost: Vec<&str> = deletes_on(&p, Side::A)
            .into_iter()
            .map(RelPath::as_str)
            .filter(|p| ["sub/new.txt", "sub/deeper/x.txt"].contains(p))
            .collect();
        assert!(
            lost.is_empty(),
            "{what}: A deletes {lost:?}, which B never saw: {:#?}",
            p.actions
        );
        // The contrast: planned pairwise, both files are kept.
        let pairwise = two_way(&a, &b);
        assert!(
            !deletes_on(&pairwise, Side::A)
                .iter()
                .any(|p| p.as_str() == "sub/new.txt"),
            "{what}: {:?}",
            pairwise.actions
        );
    }
}

// ---------------------------------------------------------------------------
// Fuzz targets, replayed

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

fn corpus(target: &str) -> BTreeMap<String, Vec<u8>> {
    let dir = corpus_root().join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (the seed corpus is committed)", dir.display()));
    entries
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Every file of `fuzz/corpus/<target>/` through its core target (what
/// `cargo fuzz run` starts from, and what it would find again).
#[test]
fn fuzz_corpus_replays_through_the_core_targets() {
    for (target, run) in core_targets::TARGETS {
        let files = corpus(target);
        assert!(files.len() >= 5, "{target}: {} seeds", files.len());
        for (name, data) in &files {
            let replay = std::panic::catch_unwind(|| run(data));
            assert!(
                replay.is_ok(),
                "fuzz target {target} panics on corpus file {name}"
            );
        }
    }
}

/// The seeds do what their names say, so the corpus starts the fuzzer
/// both inside and outside the accepted language.
#[test]
fn fuzz_seeds_cover_accepted_and_refused_inputs() {
    let paths = corpus("rel_path");
    let text = |d: &[u8]| core_targets::text(d).to_string();
    for ok in [
        "plain",
        "unicode",
        "nfd",
        "internal",
        "temp",
        "windows-reserved",
    ] {
        assert!(RelPath::new(&text(&paths[ok])).is_ok(), "{ok}");
    }
    for bad in [
        "parent",
        "absolute",
        "drive",
        "backslash",
        "nul",
        "empty-component",
        "long-name",
        "long-path",
    ] {
        assert!(RelPath::new(&text(&paths[bad])).is_err(), "{bad}");
    }
    let keys = corpus("folder_key");
    for ok in ["read-write", "read-only", "encrypted", "grouped-lowercase"] {
        assert!(
            text(&keys[ok])
                .parse::<meshsync_core::keys::FolderKey>()
                .is_ok(),
            "{ok}"
        );
    }
    for bad in [
        "typo",
        "swap",
        "truncated",
        "padding",
        "small-order-verify-key",
        "non-canonical",
        "unknown-letter",
        "empty",
    ] {
        assert!(
            text(&keys[bad])
                .parse::<meshsync_core::keys::FolderKey>()
                .is_err(),
            "{bad}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random bytes, and random text over the characters that matter.
    #[test]
    fn core_targets_hold_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..300)) {
        for (_, run) in core_targets::TARGETS {
            run(&data);
        }
    }

    #[test]
    fn rel_path_holds_on_path_like_text(s in "[a./\\\\:\\x00é\u{301}-]{0,40}") {
        core_targets::rel_path(s.as_bytes());
    }

    #[test]
    fn ignore_rules_hold_on_pattern_like_text(s in "[a-c*?!/\\[\\]\\\\#\n -]{0,60}") {
        core_targets::ignore_rules(s.as_bytes());
    }

    /// Key-like text: the target re-seals the check character, so random
    /// bodies reach the payload checks.
    #[test]
    fn folder_key_holds_on_key_like_text(letter in "[WRE]", body in "[A-Z2-7]{50,106}") {
        core_targets::folder_key(format!("{letter}{body}").as_bytes());
    }

    #[test]
    fn device_id_holds_on_id_like_text(s in "[A-Z2-7-]{50,70}") {
        core_targets::device_id(s.as_bytes());
    }
}
