//! Fuzz target `frames`: `meshsync_proto::fuzzing::frames` (the crate's own
//! entry point, compiled under `cfg(fuzzing)`), then
//! `meshsync_fuzz::proto_targets::frames` (the same input through the public
//! API, with oracles).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    meshsync_proto::fuzzing::frames(data);
    meshsync_fuzz::proto_targets::frames(data);
});
