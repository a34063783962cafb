//! meshsync's tracker and relay server: introduces devices that hold the
//! same folder, tells each the address it sees it at, times hole punches
//! between devices behind NATs, and relays opaque bytes when nothing else
//! works. `meshsync-tracker --listen ADDR:PORT` (or `meshsync tracker`) runs
//! it; `docs/protocol.md` ("Tracker and relay") specifies what it speaks.
//!
//! Main pieces:
//! - [`directory`]: the only thing it stores — per lookup key, the devices
//!   that announced it, their observed and announced addresses, with a TTL;
//!   bounded per key, per device, per source address and in total.
//! - [`ratelimit`] (meshsync-net's, shared with the daemon): token buckets
//!   per source address (IPv4 address, IPv6 /64) and for bytes.
//! - [`relay`]: pairs two devices' relay streams and forwards their bytes
//!   under per-session and total rate caps.
//! - [`server`]: the QUIC shell ([`Tracker`]).
//! - [`client`]: the device side of a connection (used by the daemon).
//!
//! Why devices connect with QUIC from their sync socket, authenticated by
//! their device certificate: the address the tracker sees is then exactly
//! the NAT mapping of the socket peers must reach (what hole punching needs),
//! and the tracker knows which device each connection is, so only the two
//! devices of a punch or relay session are told about it, only devices that
//! announced the same lookup key may ask for one, and a device's
//! announcements cannot be made by anyone else.
//!
//! What it must never learn or do: see a `ShareId` or anything that opens a
//! folder (devices announce a one-way derivation of the folder's access key,
//! [`meshsync_core::keys::discovery::tracker_lookup_key`]); read relayed
//! content (it is the devices' own end-to-end encrypted QUIC packets); hold
//! state that outlives the TTL or a client's connection; grow without bound
//! because of what a client sends.

pub mod client;
pub mod directory;
pub use meshsync_net::ratelimit;
pub mod relay;
pub mod server;

use std::net::SocketAddr;
use std::time::Duration;

pub use directory::DirectoryLimits;
pub use relay::RelayOptions;
pub use server::{Tracker, TrackerError, TrackerOptions, TrackerStats};

/// The command line of `meshsync-tracker` (and `meshsync tracker`).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// UDP address to listen on.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:22070")]
    pub listen: SocketAddr,
    /// Seconds an announcement holds without being renewed.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub announce_ttl: u64,
    /// Requests per second per source address (an announce costs one per
    /// folder).
    #[arg(long, value_name = "N", default_value_t = 20.0)]
    pub request_rate: f64,
    /// Requests a source address may make in a burst.
    #[arg(long, value_name = "N", default_value_t = 400.0)]
    pub request_burst: f64,
    /// Do not relay.
    #[arg(long)]
    pub no_relay: bool,
    /// Bytes per second one relay session may forward (K, M, G suffixes:
    /// KiB, MiB, GiB; 0: unlimited).
    #[arg(long, value_name = "RATE", default_value = "4M", value_parser = parse_rate)]
    pub relay_session_rate: u64,
    /// Bytes per second the relay forwards in total (0: unlimited).
    #[arg(long, value_name = "RATE", default_value = "64M", value_parser = parse_rate)]
    pub relay_total_rate: u64,
    /// Relay sessions at once.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub relay_sessions: usize,
}

impl Args {
    /// The options these arguments ask for.
    pub fn options(&self) -> TrackerOptions {
        let mut options = TrackerOptions::default();
        options.directory.ttl = Duration::from_secs(self.announce_ttl.max(1));
        options.request_rate = self.request_rate;
        options.request_burst = self.request_burst;
        options.relay = (!self.no_relay).then(|| RelayOptions {
            session_rate: self.relay_session_rate,
            total_rate: self.relay_total_rate,
            max_sessions: self.relay_sessions,
            ..RelayOptions::default()
        });
        options
    }
}

/// Parses a byte rate: a number with an optional K, M or G suffix (powers of
/// 1024).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.chars().last() {
        Some('k' | 'K') => (&text[..text.len() - 1], 10),
        Some('m' | 'M') => (&text[..text.len() - 1], 20),
        Some('g' | 'G') => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("not a rate: {text:?} (examples: 0, 500K, 4M, 1G)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("rate too large: {text:?}"))
}

/// Runs a tracker with `args` until Ctrl-C (or SIGTERM), printing
/// `listening on ADDR` on stdout once it is bound (tests read it).
pub async fn run(args: &Args) -> Result<(), TrackerError> {
    let tracker = Tracker::bind(args.listen, args.options())?;
    println!("listening on {}", tracker.local_addr());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tracing::info!(
        addr = %tracker.local_addr(),
        id = %tracker.id(),
        relay = !args.no_relay,
        "tracker running"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminated = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = tracker.run() => {}
        _ = tokio::signal::ctrl_c() => {}
        () = terminated => {}
    }
    tracker.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_binary_suffixes() {
        assert_eq!(parse_rate("0"), Ok(0));
        assert_eq!(parse_rate("500K"), Ok(500 << 10));
        assert_eq!(parse_rate("4M"), Ok(4 << 20));
        assert_eq!(parse_rate("1g"), Ok(1 << 30));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("99999999999999G").is_err());
    }
}
