//! Hash+chunk throughput of the store's read pass on cached data: one thread
//! reading a file from the page cache, cutting it with FastCDC and hashing
//! every chunk and the whole file (what the scanner and the copier do).
//!
//! `cargo bench -p meshsync-store --bench read_chunks`

use std::io::{Seek, Write};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meshsync_core::chunking::ChunkParams;
use meshsync_store::hashing::read_chunks;

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("read_chunks");
    for (name, len) in [("64MiB", 64usize << 20), ("16KiB", 16 << 10)] {
        let data = pseudo_random(len);
        let mut file = tempfile::tempfile().expect("temp file");
        file.write_all(&data).expect("write");
        let params = ChunkParams::ideal(len as u64);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                file.rewind().expect("rewind");
                read_chunks(&mut file, len as u64, params, |_, _| Ok(())).expect("read")
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(4)).sample_size(20);
    targets = bench
}
criterion_main!(benches);
