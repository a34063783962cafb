//! Fuzz target `ignore_rules`: see `meshsync_fuzz::core_targets::ignore_rules`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    meshsync_fuzz::core_targets::ignore_rules(data);
});
