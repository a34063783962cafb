//! Fuzz target `lan_announcement`: `meshsync_proto::fuzzing::lan_announcement`
//! (the crate's own entry point, compiled under `cfg(fuzzing)`), then
//! `meshsync_fuzz::proto_targets::lan_announcement` (the same input through
//! the public API, with oracles).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    meshsync_proto::fuzzing::lan_announcement(data);
    meshsync_fuzz::proto_targets::lan_announcement(data);
});
