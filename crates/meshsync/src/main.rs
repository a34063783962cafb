//! `meshsync`: the command-line tool.
//!
//! Parses the command line (clap), resolves the state directory, runs the
//! command, and turns errors into messages and exit codes (see [`exit`]).
//! All decisions live in the library crates; this binary only wires them to
//! a terminal.

mod client;
mod cmd_daemon;
mod cmd_demo;
mod cmd_key;
mod cmd_sync;
mod config;
mod daemon;
mod exit;
mod home;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Peer-to-peer folder synchronization, and a fast local delta sync.
#[derive(Parser, Debug)]
#[command(name = "meshsync", version, about, long_about = None)]
struct Cli {
    /// State directory (index database, device identity). Default:
    /// $MESHSYNC_HOME, else the XDG data directory (~/.local/share/meshsync).
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Sync SRC to DST locally, rsync-style: DST becomes a copy of SRC's
    /// contents, moving only what changed.
    Sync(cmd_sync::SyncArgs),
    /// Folder keys: create, derive, inspect.
    #[command(subcommand)]
    Key(cmd_key::KeyCommand),
    /// Print this device's id (created on first use).
    Id,
    /// Set up this device: identity, config, listen and API addresses.
    Init(cmd_daemon::InitArgs),
    /// Share a folder: make a new key and print its three key strings.
    Share(cmd_daemon::ShareArgs),
    /// Add a folder from a key someone shared.
    Join(cmd_daemon::JoinArgs),
    /// Run the daemon: keep the shared folders in sync with peers.
    Run,
    /// Three devices on this machine sync a folder, an edit and a conflict.
    Demo(cmd_demo::DemoArgs),
    /// Run a tracker and relay: introduces devices that share a folder and
    /// helps them reach each other through NATs (prints `listening on
    /// ADDR`).
    Tracker(meshsync_tracker::Args),
    /// This device's id, folders and peers.
    Status(cmd_daemon::StatusArgs),
    /// Scan a folder (or all) now.
    Rescan {
        /// The folder (default: every folder).
        dir: Option<PathBuf>,
    },
    /// Hold a folder: no scanning, no syncing.
    Pause {
        /// The folder.
        dir: PathBuf,
    },
    /// Release a held folder.
    Resume {
        /// The folder.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    limit_malloc_arenas(2);
    restore_default_sigpipe();
    raise_open_file_limit();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Key(cmd) => cmd_key::run_key(cmd).map(|()| exit::SUCCESS),
        Command::Demo(args) => cmd_demo::run(args),
        Command::Tracker(args) => run_tracker(&args),
        command => home::resolve(cli.home.as_deref()).and_then(|h| run_in_home(command, &h)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("meshsync: error: {e:#}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// glibc gives every thread that allocates its own malloc arena; with 16 I/O
/// threads that costs ~15 MiB of resident memory in fragmentation alone
/// (measured on `bench` small: 77 -> 64 MiB). Two arenas are plenty for a
/// one-off job such as `sync`: its threads spend their time in read/write,
/// not in malloc. The daemon, which stays resident, takes one: on `small`,
/// each daemon's peak RSS went from 41.6–45.0 / 49.7–54.9 MiB (source /
/// receiver) to 37.8–41.1 / 46.5–47.3 MiB, with no change in time; `sync`
/// was about 3 % slower with one, so it keeps two.
fn limit_malloc_arenas(arenas: i32) {
    // SAFETY: mallopt only adjusts allocator tuning; called before any
    // other thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

/// Lifts the soft limit on open descriptors to the hard one (often 1,024
/// against 524,288): a daemon with many peers and folders, or a sync of many
/// directories at once, should not fail on a default meant for old
/// `select(2)` programs. Nothing here uses `select`. Every part still bounds
/// what it holds open (the local sync: a quarter of the limit per batch),
/// so this is headroom, not a requirement.
fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit with a valid out pointer; failure leaves
    // the limit as it was.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Rust ignores SIGPIPE, so `meshsync … | head` would panic on the closed
/// pipe; restore the default (end quietly), as command-line tools do.
fn restore_default_sigpipe() {
    // SAFETY: setting a signal disposition to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Runs a command that needs the state directory.
fn run_in_home(command: Command, home: &std::path::Path) -> anyhow::Result<u8> {
    match command {
        Command::Sync(args) => cmd_sync::run(args, home),
        Command::Key(_) | Command::Demo(_) | Command::Tracker(_) => {
            unreachable!("handled without a home")
        }
        Command::Id => cmd_key::run_id(home).map(|()| exit::SUCCESS),
        Command::Init(args) => cmd_daemon::init(args, home),
        Command::Share(args) => cmd_daemon::share(args, home),
        Command::Join(args) => cmd_daemon::join(args, home),
        Command::Status(args) => cmd_daemon::status(args, home),
        Command::Rescan { dir } => cmd_daemon::rescan(dir, home),
        Command::Pause { dir } => cmd_daemon::set_paused(dir, true, home),
        Command::Resume { dir } => cmd_daemon::set_paused(dir, false, home),
        Command::Run => run_daemon(home),
    }
}

/// `meshsync tracker`: the same server as `meshsync-tracker`.
fn run_tracker(args: &meshsync_tracker::Args) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(meshsync_tracker::run(args))?;
    Ok(exit::SUCCESS)
}

/// Starts the tokio runtime and runs the daemon in it.
fn run_daemon(home: &std::path::Path) -> anyhow::Result<u8> {
    // Still the only thread: the runtime starts below.
    limit_malloc_arenas(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(daemon::run(home))?;
    Ok(exit::SUCCESS)
}
