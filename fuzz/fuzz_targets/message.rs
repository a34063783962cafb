//! Fuzz target `message`: `meshsync_proto::fuzzing::message` (the crate's own
//! entry point, compiled under `cfg(fuzzing)`), then
//! `meshsync_fuzz::proto_targets::message` (the same input through the public
//! API, with oracles).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    meshsync_proto::fuzzing::message(data);
    meshsync_fuzz::proto_targets::message(data);
});
