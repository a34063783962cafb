//! meshsync's fuzz targets, as plain functions of bytes.
//!
//! - [`core_targets`]: paths, folder keys, device and share ids, ignore
//!   rules (`meshsync-core`).
//! - [`proto_targets`]: the control stream through the connection state
//!   machine, message decoding, framing, chunk-stream headers and bytes
//!   (`meshsync-proto`, public API only, with oracles).
//!
//! The binaries in `fuzz_targets/` hand libFuzzer's input to these (the
//! proto ones also to `meshsync_proto::fuzzing`, which exists under
//! `cfg(fuzzing)`). `tests/replay.rs` runs every file of `corpus/` through
//! them, and the main workspace's tests include the two modules to replay
//! the corpus in `cargo test`. See `docs/reliability.md` for the commands.

pub mod core_targets;
pub mod proto_targets;
