//! Corpus replay: every file under `corpus/<target>/` (and `corpus-new/`,
//! `artifacts/` if a fuzz run left any) through its target, exactly as
//! the fuzz binaries run it: `meshsync_proto::fuzzing` (this crate is built
//! with `--cfg fuzzing`, see `.cargo/config.toml`) and this crate's
//! targets. `cd fuzz && cargo test` runs it; the main workspace replays the
//! same corpus through the public-API targets in `cargo test`
//! (`crates/meshsync-core/tests/regressions.rs`,
//! `crates/meshsync/tests/security.rs`).

use std::fs;
use std::path::{Path, PathBuf};

use meshsync_fuzz::{core_targets, proto_targets};

fn upstream(target: &str) -> Option<fn(&[u8])> {
    Some(match target {
        "control_stream" => meshsync_proto::fuzzing::control_stream,
        "message" => meshsync_proto::fuzzing::message,
        "frames" => meshsync_proto::fuzzing::frames,
        "chunk_stream" => meshsync_proto::fuzzing::chunk_stream,
        "lan_announcement" => meshsync_proto::fuzzing::lan_announcement,
        _ => return None,
    })
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    files
}

#[test]
fn every_corpus_file_passes_every_oracle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut total = 0;
    for (target, run) in core_targets::TARGETS.iter().chain(proto_targets::TARGETS) {
        let seeds = files_under(&root.join("corpus").join(target));
        assert!(
            seeds.len() >= 5,
            "corpus/{target} has {} seeds",
            seeds.len()
        );
        let extra = ["corpus-new", "artifacts"]
            .iter()
            .flat_map(|d| files_under(&root.join(d).join(target)));
        for file in seeds.into_iter().chain(extra) {
            let data = fs::read(&file).unwrap();
            let replay = std::panic::catch_unwind(|| {
                run(&data);
                if let Some(up) = upstream(target) {
                    up(&data);
                }
            });
            assert!(replay.is_ok(), "{target}: {} panicked", file.display());
            total += 1;
        }
    }
    println!("replayed {total} inputs");
}
