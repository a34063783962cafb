//! `meshsync sync SRC DST`: flags, the progress bar, and the summary.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use meshsync_core::entry::CompareMode;
use meshsync_core::plan::Direction;
use meshsync_store::local_sync::{SyncOptions, SyncReport, sync_paths};

use crate::exit;
use crate::progress::TerminalProgress;

/// Flags of `meshsync sync`.
#[derive(Args, Debug)]
pub struct SyncArgs {
    /// The source: a directory (its contents are synced) or a file.
    pub src: PathBuf,
    /// The destination directory (created if missing), or a file path.
    pub dst: PathBuf,
    /// Delete files in DST that are not in SRC.
    #[arg(long)]
    pub delete: bool,
    /// Compare files by content hash instead of size and mtime.
    #[arg(long, short = 'c')]
    pub checksum: bool,
    /// Show what would be done; change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Sync both ways: newer changes win, concurrent changes keep both copies
    /// (the loser as NAME.sync-conflict-YYYYMMDD-HHMMSS-DEVICE-TAG.EXT).
    #[arg(long, conflicts_with = "delete")]
    pub two_way: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Worker threads for reading and writing (default: 4 per core, 4..16).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Never draw a progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// Runs the sync and reports; returns the exit code.
pub fn run(args: SyncArgs, home: &Path) -> Result<u8> {
    let opts = SyncOptions {
        direction: if args.two_way {
            Direction::TwoWay
        } else {
            Direction::OneWay {
                delete: args.delete,
            }
        },
        compare: if args.checksum {
            CompareMode::Checksum
        } else {
            CompareMode::Metadata
        },
        dry_run: args.dry_run,
        threads: args
            .threads
            .unwrap_or_else(meshsync_store::scan::default_threads)
            .max(1),
        state_dir: home.to_path_buf(),
        now_unix_secs: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    };
    let progress = TerminalProgress::new(!args.no_progress && std::io::stderr().is_terminal());
    let report = sync_paths(&args.src, &args.dst, &opts, &progress);
    progress.finish();
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report);
    }
    for w in &report.warnings {
        eprintln!("meshsync: warning: {w}");
    }
    for e in &report.errors {
        eprintln!("meshsync: error: {e}");
    }
    Ok(if report.errors.is_empty() {
        exit::SUCCESS
    } else {
        exit::PARTIAL
    })
}

fn print_human(r: &SyncReport) {
    if r.dry_run {
        for line in &r.planned {
            println!("{line}");
        }
        println!(
            "dry run: {} actions planned, nothing changed",
            r.planned.len()
        );
        return;
    }
    println!(
        "{} files in source; {} copied, {} deleted, {} dirs created, {} conflicts; \
         {} written ({} from source, {} reused from existing data) in {:.2} s",
        r.files_total,
        r.files_copied,
        r.files_deleted,
        r.dirs_created,
        r.conflicts,
        human_bytes(r.bytes_written),
        human_bytes(r.bytes_from_source),
        human_bytes(r.bytes_reused),
        r.duration_s
    );
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
