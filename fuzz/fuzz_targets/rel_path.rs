//! Fuzz target `rel_path`: see `meshsync_fuzz::core_targets::rel_path`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    meshsync_fuzz::core_targets::rel_path(data);
});
