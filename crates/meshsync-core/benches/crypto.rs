//! Throughput of the folder-key cryptography (`meshsync_core::keys`): index
//! batch signing and verification, access proofs, and storage-only chunk
//! encryption at 64 KiB and 1 MiB, next to the primitives alone.
//!
//! Run with `cargo bench -p meshsync-core --bench crypto`. Measurement times
//! are short so the run fits a 2-core machine; see `docs/keys.md` for figures.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meshsync_core::keys::{ProofRole, ReadWriteKey, sign_batch, verify_batch};

fn folder() -> ReadWriteKey {
    ReadWriteKey::from_secret(&[7; 32])
}

/// Deterministic, incompressible-looking test data.
fn data(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(b"meshsync bench data")
        .finalize_xof()
        .fill(&mut out);
    out
}

fn signatures(c: &mut Criterion) {
    let key = folder();
    let verify = key.verify_key().clone();
    let mut group = c.benchmark_group("batch_signature");
    group.throughput(Throughput::Elements(1));
    for (label, len) in [("1KiB", 1024), ("64KiB", 64 * 1024)] {
        let payload = data(len);
        let signature = sign_batch(&key, 42, &payload);
        group.bench_function(format!("sign/{label}"), |b| {
            b.iter(|| sign_batch(&key, 42, black_box(&payload)))
        });
        group.bench_function(format!("verify/{label}"), |b| {
            b.iter(|| verify_batch(&verify, 42, black_box(&payload), Some(&signature)).unwrap())
        });
    }
    group.finish();

    let access = key.access_key().clone();
    let binding = [0xaa; 32];
    let proof = access.prove(ProofRole::Initiator, &binding).unwrap();
    c.bench_function("access_proof/verify", |b| {
        b.iter(|| {
            access
                .verify_proof(ProofRole::Initiator, black_box(&binding), &proof)
                .unwrap()
        })
    });
}

fn chunks(c: &mut Criterion) {
    let key = folder();
    let data_key = key.data_key().clone();
    let mut group = c.benchmark_group("chunk");
    for (label, len) in [("64KiB", 64 * 1024), ("1MiB", 1024 * 1024)] {
        let plain = data(len);
        let sealed = data_key.encrypt_chunk(&plain);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(format!("encrypt/{label}"), |b| {
            b.iter(|| data_key.encrypt_chunk(black_box(&plain)))
        });
        group.bench_function(format!("decrypt/{label}"), |b| {
            b.iter(|| {
                data_key
                    .decrypt_chunk(&sealed.plain_hash, black_box(&sealed.ciphertext))
                    .unwrap()
            })
        });
    }
    group.finish();

    c.bench_function("name/encrypt", |b| {
        b.iter(|| {
            data_key
                .encrypt_name(black_box("quarterly report 2024.pdf"))
                .unwrap()
        })
    });
}

/// The building blocks alone, to show where chunk encryption spends its time.
fn primitives(c: &mut Criterion) {
    use chacha20poly1305::aead::{AeadInOut, KeyInit};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};

    let len = 1024 * 1024;
    let plain = data(len);
    let cipher = XChaCha20Poly1305::new_from_slice(&[9; 32]).unwrap();
    let nonce = XNonce::from([3; 24]);
    let mut buffer = plain.clone();
    let mut group = c.benchmark_group("primitive");
    group.throughput(Throughput::Bytes(len as u64));
    group.bench_function("xchacha20poly1305_in_place/1MiB", |b| {
        b.iter(|| {
            cipher
                .encrypt_inout_detached(&nonce, b"", buffer.as_mut_slice().into())
                .unwrap()
        })
    });
    group.bench_function("blake3/1MiB", |b| {
        b.iter(|| blake3::hash(black_box(&plain)))
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = signatures, chunks, primitives
}
criterion_main!(benches);
