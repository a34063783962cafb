//! Fuzz target `control_stream`: `meshsync_proto::fuzzing::control_stream` (the crate's own
//! entry point, compiled under `cfg(fuzzing)`), then
//! `meshsync_fuzz::proto_targets::control_stream` (the same input through the public
//! API, with oracles).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    meshsync_proto::fuzzing::control_stream(data);
    meshsync_fuzz::proto_targets::control_stream(data);
});
