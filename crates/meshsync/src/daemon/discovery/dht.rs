//! Finding peers of a folder on the BitTorrent mainline DHT (the `mainline`
//! crate): millions of existing nodes, so no server of ours is needed.
//!
//! Each folder announces this device's QUIC port under the folder's DHT
//! info-hash ([`dht_info_hash`]: derived one-way from the access key and
//! rotated daily, so the DHT never learns a `ShareId` and cannot follow a
//! folder from one day to the next), and looks up the current and the
//! previous day's info-hash. Every address found is offered to the
//! [`AddressBook`](super::AddressBook) with no device id: the DHT vouches for
//! nothing, and TLS plus the access proof still gate every folder.
//!
//! Schedule, per folder: announce at once, then every
//! [`ANNOUNCE_EVERY`], whenever the day turns and whenever the port to
//! announce changes (a router mapping came or went); look up at once, then while
//! the folder has no connected peer after 5 s, doubling up to
//! [`LOOKUP_EVERY_ALONE`], and every [`LOOKUP_EVERY_CONNECTED`] once it has
//! one.
//!
//! The DHT node binds its own UDP port (mainline's default: 6881, else any);
//! it cannot share the QUIC socket. It is an IPv4 node in client mode.
//!
//! Never: contact the public bootstrap nodes when `dht_bootstrap` names
//! others ([`BootstrapPlan`]), make the daemon wait for the DHT, or treat an
//! address from it as a known device.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use mainline::async_dht::AsyncDht;
use mainline::{Dht, Id};
use meshsync_core::ids::ShareId;
use meshsync_core::keys::discovery::{dht_info_hash, dht_lookup_hashes, dht_window};
use meshsync_net::Transport;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

use super::{Candidate, Found, PathKind};
use crate::daemon::{Daemon, FolderRuntime};

/// How often a folder is announced again (the DHT forgets announces after
/// about 30 minutes).
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(15 * 60);
/// A failed announce (no DHT node answered yet) is retried after this.
pub const ANNOUNCE_RETRY: Duration = Duration::from_secs(30);
/// The first retry of a lookup while a folder has no connected peer.
pub const LOOKUP_FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest wait between lookups while a folder has no connected peer.
pub const LOOKUP_EVERY_ALONE: Duration = Duration::from_secs(90);
/// How often a folder with a connected peer is looked up (to find more).
pub const LOOKUP_EVERY_CONNECTED: Duration = Duration::from_secs(10 * 60);
/// The longest a lookup runs before what it found so far is used.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest an announce runs.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the folder list and connection state are looked at.
const TICK: Duration = Duration::from_secs(2);

/// Where the DHT node starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapPlan {
    /// mainline's public bootstrap nodes (`dht_bootstrap` empty: the real
    /// DHT).
    Public,
    /// Exactly these nodes and nothing else (a private or test DHT). Names
    /// that do not resolve to IPv4 are dropped, never replaced by the public
    /// nodes: the list may be empty.
    Only(Vec<SocketAddrV4>),
}

impl BootstrapPlan {
    /// The plan for the configured `dht_bootstrap` list. Resolves host names
    /// (blocking: call it off the async threads).
    pub fn from_config(bootstrap: &[String]) -> Self {
        if bootstrap.is_empty() {
            return BootstrapPlan::Public;
        }
        let mut out = Vec::new();
        for entry in bootstrap {
            match entry.to_socket_addrs() {
                Ok(addrs) => out.extend(addrs.filter_map(|a| match a {
                    SocketAddr::V4(a) => Some(a),
                    SocketAddr::V6(_) => None,
                })),
                Err(e) => tracing::info!("DHT bootstrap node {entry}: {e}"),
            }
        }
        out.sort();
        out.dedup();
        BootstrapPlan::Only(out)
    }
}

/// The address the DHT node binds: the QUIC listener's when it is a
/// specific IPv4 address (loopback in tests), else every IPv4 interface.
pub fn bind_ip(listen: SocketAddr) -> Ipv4Addr {
    match listen {
        SocketAddr::V4(a) => *a.ip(),
        SocketAddr::V6(a) if a.ip().is_loopback() => Ipv4Addr::LOCALHOST,
        SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    }
}

/// Starts a DHT node as `plan` says, bound to `bind`. Blocking (it starts
/// mainline's actor thread and waits for its socket).
pub fn start_node(plan: &BootstrapPlan, bind: Ipv4Addr) -> std::io::Result<AsyncDht> {
    let mut builder = Dht::builder();
    builder.bind_address(bind);
    if let BootstrapPlan::Only(nodes) = plan {
        // `Some(nodes)`, even empty: mainline falls back to its public
        // nodes only when no list is given at all.
        builder.bootstrap(nodes);
    }
    Ok(builder.build()?.as_async())
}

/// How long to wait before the next lookup of a folder, after
/// `lookups_alone` lookups in a row that left it with no connected peer.
pub fn next_lookup_in(connected: bool, lookups_alone: u32) -> Duration {
    if connected {
        return LOOKUP_EVERY_CONNECTED;
    }
    LOOKUP_FIRST_RETRY
        .saturating_mul(1u32 << lookups_alone.saturating_sub(1).min(8))
        .min(LOOKUP_EVERY_ALONE)
}

/// Starts the DHT for the daemon, in the background: nothing waits for it,
/// and a failure to start is logged once.
pub fn spawn(daemon: &Arc<Daemon>, transport: &Arc<Transport>) {
    let bootstrap = daemon
        .config
        .lock()
        .expect("poisoned")
        .discovery
        .dht_bootstrap
        .clone();
    let listen = transport.local_addr();
    let daemon = Arc::clone(daemon);
    tokio::spawn(async move {
        let started = tokio::task::spawn_blocking(move || {
            let plan = BootstrapPlan::from_config(&bootstrap);
            if plan == BootstrapPlan::Only(Vec::new()) {
                return Err(std::io::Error::other(
                    "none of the configured bootstrap nodes resolved to an IPv4 address",
                ));
            }
            start_node(&plan, bind_ip(listen)).map(|dht| (dht, plan))
        })
        .await;
        let dht = match started {
            Ok(Ok((dht, plan))) => {
                let info = dht.info().await;
                match plan {
                    BootstrapPlan::Public => {
                        tracing::info!("DHT node on {} (public bootstrap nodes)", info.local_addr())
                    }
                    BootstrapPlan::Only(nodes) => {
                        tracing::info!("DHT node on {} (bootstrap: {nodes:?})", info.local_addr())
                    }
                }
                dht
            }
            Ok(Err(e)) => {
                tracing::info!("DHT off: {e}");
                return;
            }
            Err(e) => {
                tracing::info!("DHT off: {e}");
                return;
            }
        };
        supervise(daemon, dht, listen.port()).await;
    });
}

/// Runs one task per folder; starts tasks for folders added later.
async fn supervise(daemon: Arc<Daemon>, dht: AsyncDht, quic_port: u16) {
    let mut stopping = daemon.stopping.subscribe();
    let mut running: std::collections::HashMap<ShareId, tokio::task::JoinHandle<()>> =
        std::collections::HashMap::new();
    loop {
        running.retain(|_, task| !task.is_finished());
        for rt in daemon.all_folders() {
            let share = rt.folder.share;
            running.entry(share).or_insert_with(|| {
                tokio::spawn(run_folder(Arc::clone(&daemon), dht.clone(), rt, quic_port))
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stopping.changed() => break,
        }
    }
    for (_, task) in running {
        task.abort();
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether some connected peer has `share` open.
fn has_peer(daemon: &Daemon, share: &ShareId) -> bool {
    let share = share.to_string();
    daemon
        .peers
        .status()
        .iter()
        .any(|p| p.folders.contains(&share))
}

/// Announces and looks up one folder until it is removed or the daemon
/// stops.
async fn run_folder(daemon: Arc<Daemon>, dht: AsyncDht, rt: Arc<FolderRuntime>, quic_port: u16) {
    let share = rt.folder.share;
    let mut stopping = daemon.stopping.subscribe();
    // The window and port announces are being made for.
    let mut announcing: Option<(u64, u16)> = None;
    let mut next_announce = Instant::now();
    let mut next_lookup = Instant::now();
    let mut lookups_alone = 0u32;
    let mut was_connected = false;
    loop {
        if *stopping.borrow() || daemon.folder(&share).is_none() {
            return;
        }
        let now = Instant::now();
        let unix = unix_now();
        let window = dht_window(unix);
        let connected = has_peer(&daemon, &share);
        if was_connected && !connected {
            // Lost every peer: look again soon.
            lookups_alone = 0;
            next_lookup = next_lookup.min(now + LOOKUP_FIRST_RETRY);
        }
        was_connected = connected;
        let port = announce_port(&daemon, quic_port);
        // At once when the day turns, and when a router mapping changed
        // the port others must dial.
        if announcing != Some((window, port)) {
            announcing = Some((window, port));
            next_announce = now;
        }
        let announce_due = now >= next_announce;
        let lookup_due = now >= next_lookup;
        let access = rt.folder.key.access_key();
        let announce = async {
            if !announce_due {
                return None;
            }
            let hash = Id::from(dht_info_hash(access, window));
            Some(
                match timeout(ANNOUNCE_TIMEOUT, dht.announce_peer(hash, Some(port))).await {
                    Ok(Ok(_)) => {
                        tracing::debug!("DHT: announced {share} on port {port}");
                        true
                    }
                    Ok(Err(e)) => {
                        tracing::debug!("DHT announce of {share}: {e}");
                        false
                    }
                    Err(_) => false,
                },
            )
        };
        let lookup = async {
            if !lookup_due {
                return None;
            }
            Some(lookup_folder(&daemon, &dht, &rt, unix, quic_port).await)
        };
        let (announced, looked_up) = tokio::join!(announce, lookup);
        let now = Instant::now();
        match announced {
            Some(true) => next_announce = now + ANNOUNCE_EVERY,
            Some(false) => next_announce = now + ANNOUNCE_RETRY,
            None => {}
        }
        if looked_up.is_some() {
            // Found addresses may be stale (the DHT keeps an announce for
            // about 30 minutes), so only a connection stops the back-off.
            let connected = has_peer(&daemon, &share);
            lookups_alone = if connected {
                0
            } else {
                lookups_alone.saturating_add(1)
            };
            next_lookup = now + next_lookup_in(connected, lookups_alone);
        }
        let wake = next_lookup.min(next_announce).min(now + TICK);
        tokio::select! {
            _ = sleep_until(wake) => {}
            _ = stopping.changed() => return,
        }
    }
}

/// The port to announce: the router's mapped port when UPnP made one (the
/// address the DHT sees is the router's), else the QUIC port.
fn announce_port(daemon: &Daemon, quic_port: u16) -> u16 {
    daemon
        .book
        .own_from("upnp")
        .first()
        .map_or(quic_port, SocketAddr::port)
}

/// Looks `rt`'s folder up under the current and previous window; offers
/// every address found that is not this device. Returns how many were
/// offered.
async fn lookup_folder(
    daemon: &Daemon,
    dht: &AsyncDht,
    rt: &FolderRuntime,
    unix: u64,
    quic_port: u16,
) -> usize {
    let own = daemon.book.own();
    let public = dht.info().await.public_address();
    let is_self = |a: &SocketAddr| {
        own.contains(a)
            || public.is_some_and(|p| SocketAddr::V4(p) == *a)
            || public.is_some_and(|p| SocketAddr::from((*p.ip(), quic_port)) == *a)
    };
    let lookup = |hash: [u8; 20]| {
        let mut stream = dht.get_peers(Id::from(hash));
        let is_self = &is_self;
        async move {
            let mut offered = 0;
            let deadline = Instant::now() + LOOKUP_TIMEOUT;
            while let Ok(Some(peers)) = timeout_at(deadline, stream.next()).await {
                for peer in peers {
                    let addr = SocketAddr::V4(peer);
                    if addr.port() == 0 || is_self(&addr) {
                        continue;
                    }
                    daemon.book.offer(Candidate {
                        addr,
                        device: None,
                        found: Found::Dht,
                        path: PathKind::Direct,
                    });
                    offered += 1;
                }
            }
            offered
        }
    };
    let [current, previous] = dht_lookup_hashes(rt.folder.key.access_key(), unix);
    let (a, b) = tokio::join!(lookup(current), lookup(previous));
    let offered = a + b;
    tracing::debug!("DHT: {offered} address(es) for {}", rt.folder.share);
    offered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_bootstrap_list_means_the_public_dht() {
        assert_eq!(BootstrapPlan::from_config(&[]), BootstrapPlan::Public);
    }

    #[test]
    fn a_bootstrap_list_is_used_exactly_and_never_widened_to_the_public_nodes() {
        let plan = BootstrapPlan::from_config(&[
            "127.0.0.1:6881".to_owned(),
            "127.0.0.1:6881".to_owned(),
            "[::1]:6881".to_owned(),
            "not an address".to_owned(),
        ]);
        assert_eq!(
            plan,
            BootstrapPlan::Only(vec![SocketAddrV4::new(Ipv4Addr::LOCALHOST, 6881)])
        );
        // Nothing usable: still nothing public.
        let plan = BootstrapPlan::from_config(&["[::1]:6881".to_owned()]);
        assert_eq!(plan, BootstrapPlan::Only(Vec::new()));
    }

    /// A node started from a local list knows only the local nodes: after a
    /// lookup its routing table holds testnet addresses and nothing else.
    #[test]
    fn a_node_with_a_local_bootstrap_list_stays_local() {
        let testnet = mainline::Testnet::builder(5).build().unwrap();
        let plan = BootstrapPlan::from_config(&testnet.bootstrap);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dht = start_node(&plan, Ipv4Addr::LOCALHOST).unwrap();
            assert!(dht.bootstrapped().await, "bootstrapped from the testnet");
            let _ = dht.find_node(Id::random()).await;
            let known = dht.to_bootstrap().await;
            assert!(!known.is_empty());
            for node in known {
                let addr: SocketAddr = node.parse().unwrap();
                assert!(addr.ip().is_loopback(), "{addr} is not a testnet node");
            }
        });
    }

    #[test]
    fn bind_follows_a_specific_listener() {
        assert_eq!(
            bind_ip("127.0.0.1:22000".parse().unwrap()),
            Ipv4Addr::LOCALHOST
        );
        assert_eq!(
            bind_ip("0.0.0.0:22000".parse().unwrap()),
            Ipv4Addr::UNSPECIFIED
        );
        assert_eq!(bind_ip("[::1]:22000".parse().unwrap()), Ipv4Addr::LOCALHOST);
        assert_eq!(
            bind_ip("[::]:22000".parse().unwrap()),
            Ipv4Addr::UNSPECIFIED
        );
    }

    #[test]
    fn lookups_back_off_while_alone_and_slow_down_once_connected() {
        assert_eq!(next_lookup_in(false, 0), LOOKUP_FIRST_RETRY);
        assert_eq!(next_lookup_in(false, 1), LOOKUP_FIRST_RETRY);
        assert_eq!(next_lookup_in(false, 2), LOOKUP_FIRST_RETRY * 2);
        assert_eq!(next_lookup_in(false, 30), LOOKUP_EVERY_ALONE);
        assert_eq!(next_lookup_in(true, 0), LOOKUP_EVERY_CONNECTED);
    }
}
