//! Fuzz target `device_id`: see `meshsync_fuzz::core_targets::device_id`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    meshsync_fuzz::core_targets::device_id(data);
});
