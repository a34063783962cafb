//! meshsync's disk layer: scanning folders, the index database, chunked
//! reads and crash-safe writes.
//!
//! - [`scan`]: walk a folder in parallel and compare it with its index.
//! - [`hashing`]: one read pass that chunks and hashes a file.
//! - [`db`]: the redb index database.
//! - [`blobs`], [`sealed_db`]: what a storage-only folder keeps (encrypted
//!   chunks by hash, sealed entries) and what a reader keeps for storage
//!   peers (the encrypted form of each chunk).
//! - [`write`]: temp file, verify, fsync, rename-if-unchanged.
//! - [`local_sync`]: `meshsync sync SRC DST`, built from the above and the
//!   core planner.
//!
//! This crate decides nothing of its own: what to copy, delete or keep comes
//! from `meshsync-core`'s planner. It must never write outside a folder root,
//! follow a symlink while writing, or record content that is not durable.

pub mod apply;
pub mod blobs;
pub mod chunkmap;
pub mod db;
pub mod hashing;
pub mod identity;
pub mod local_sync;
pub mod scan;
pub mod sealed_db;
pub mod write;
