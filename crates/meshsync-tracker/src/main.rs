//! `meshsync-tracker`: runs a tracker and relay (see the library docs).

use std::process::ExitCode;

use clap::Parser;

/// A meshsync tracker and relay: introduces devices that share a folder and
/// helps them reach each other through NATs.
#[derive(Parser, Debug)]
#[command(name = "meshsync-tracker", version, about)]
struct Cli {
    #[command(flatten)]
    args: meshsync_tracker::Args,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meshsync-tracker: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(meshsync_tracker::run(&cli.args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshsync-tracker: error: {e}");
            ExitCode::FAILURE
        }
    }
}
