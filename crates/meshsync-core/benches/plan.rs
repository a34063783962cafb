//! Cost of planning a pull for a folder the size of the `small` benchmark
//! dataset (20,000 files in 220 directories): the global view folded from
//! this device's index and one peer's, then the pull plan against it. The
//! daemon does this before every pull round and once more after the last,
//! so on a small update it sits on the critical path twice.
//!
//! Run with `cargo bench -p meshsync-core --bench plan`; figures in
//! `docs/benchmarks.md`.
//!
//! - `initial`: this device has nothing, the peer everything.
//! - `update`: the peer changed 200 files this device has (the `small`
//!   mutation's size).
//! - `in_sync`: both hold the same index (the plan after the last round).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meshsync_core::entry::{ChunkRef, Content, FileEntry, FileKind, Timestamp};
use meshsync_core::global::global_view;
use meshsync_core::ids::{Hash, ShortId};
use meshsync_core::path::RelPath;
use meshsync_core::plan::{EntryMap, Index};
use meshsync_core::pull::{PullInput, plan_pull};
use meshsync_core::version::VersionVector;

const PEER: ShortId = ShortId(2);
const HERE: ShortId = ShortId(1);

fn entry(path: String, kind: FileKind, body: u64, changes: u64) -> FileEntry {
    let mut version = VersionVector::new();
    for _ in 0..changes {
        version.bump(PEER);
    }
    let content = (kind == FileKind::File).then(|| {
        let hash = Hash::of(&[body.to_le_bytes(), changes.to_le_bytes()].concat());
        Content {
            hash,
            chunk_avg: 64 * 1024,
            chunks: vec![ChunkRef { hash, len: 8192 }],
        }
    });
    FileEntry {
        path: RelPath::new(&path).expect("valid path"),
        kind,
        size: if kind == FileKind::File { 8192 } else { 0 },
        mtime: Timestamp {
            secs: 1_700_000_000 + changes as i64,
            nanos: 0,
        },
        permissions: if kind == FileKind::File { 0o644 } else { 0o755 },
        symlink_target: None,
        content,
        version,
        deleted: false,
        sequence: body,
    }
}

/// The `small` dataset's shape: 20 directories of 10 of 100 files each;
/// every 100th file has had `changed` changes, the rest one.
fn small_index(changed: u64) -> Index {
    let mut index = Index::new();
    let mut n = 0;
    for d in 0..20 {
        let top = format!("d{d:02}");
        index.insert(
            RelPath::new(&top).unwrap(),
            entry(top.clone(), FileKind::Directory, 0, 1),
        );
        for s in 0..10 {
            let sub = format!("{top}/s{s:02}");
            index.insert(
                RelPath::new(&sub).unwrap(),
                entry(sub.clone(), FileKind::Directory, 0, 1),
            );
            for f in 0..100 {
                n += 1;
                let path = format!("{sub}/f{f:05}.dat");
                let changes = if n % 100 == 0 { changed } else { 1 };
                index.insert(
                    RelPath::new(&path).unwrap(),
                    entry(path, FileKind::File, n, changes),
                );
            }
        }
    }
    index
}

fn plan(local: &Index, peer: &Index) -> usize {
    let indexes: [&dyn EntryMap; 2] = [local, peer];
    let global = global_view(&indexes);
    plan_pull(&PullInput {
        local,
        global: &global,
        device: HERE,
        clock: 10,
        now_unix_secs: 1_700_000_000,
    })
    .actions
    .len()
}

fn planning(c: &mut Criterion) {
    let before = small_index(1);
    let after = small_index(2);
    let empty = Index::new();
    assert_eq!(plan(&empty, &before), 20_220);
    assert_eq!(plan(&before, &after), 200);
    assert_eq!(plan(&after, &after), 0);
    let mut group = c.benchmark_group("plan_pull_20k_files");
    group.throughput(Throughput::Elements(before.len() as u64));
    group.bench_function("initial", |b| b.iter(|| plan(black_box(&empty), &before)));
    group.bench_function("update", |b| b.iter(|| plan(black_box(&before), &after)));
    group.bench_function("in_sync", |b| b.iter(|| plan(black_box(&after), &after)));
    group.bench_function("global_view_only", |b| {
        b.iter(|| {
            let indexes: [&dyn EntryMap; 2] = [black_box(&before), &after];
            global_view(&indexes).len()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = planning
}
criterion_main!(benches);
