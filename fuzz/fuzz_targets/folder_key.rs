//! Fuzz target `folder_key`: see `meshsync_fuzz::core_targets::folder_key`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    meshsync_fuzz::core_targets::folder_key(data);
});
