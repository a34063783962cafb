//! Declares the `fuzzing` cfg (set by cargo-fuzz) so `#[cfg(fuzzing)]` does not
//! trip the `unexpected_cfgs` lint; the crate's lints stay the workspace's.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(fuzzing)");
}
