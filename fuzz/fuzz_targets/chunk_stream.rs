//! Fuzz target `chunk_stream`: `meshsync_proto::fuzzing::chunk_stream` (the crate's own
//! entry point, compiled under `cfg(fuzzing)`), then
//! `meshsync_fuzz::proto_targets::chunk_stream` (the same input through the public
//! API, with oracles).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    meshsync_proto::fuzzing::chunk_stream(data);
    meshsync_fuzz::proto_targets::chunk_stream(data);
});
