//! Trackers: announce this device's folders, learn the other devices of
//! each, and reach them directly, by hole punching, or through the relay.
//!
//! One task per configured tracker (`discovery.trackers`). Each connects
//! with QUIC *from the daemon's own endpoint* (the tracker then sees the
//! address a NAT gives the socket peers must reach: its reflexive address,
//! recorded with [`AddressBook::set_own`](super::AddressBook::set_own)),
//! announces a [tracker lookup key](meshsync_core::keys::discovery::tracker_lookup_key)
//! per folder (never a `ShareId`) with this device's own address, re-announces
//! at half the tracker's TTL and whenever the folder set changes, and
//! reconnects with back-off when the tracker is unreachable or misbehaves.
//!
//! For every device a tracker names, it escalates until a connection exists:
//!
//! 1. **Direct**: the device's observed and announced addresses go to the
//!    address book ([`Found::Tracker`], pinned to the device id), and the
//!    dialer tries them.
//! 2. **Hole punch**, at once for a device behind a NAT (the tracker sees
//!    it at an address it did not announce; that address is then offered as
//!    [`PathKind::HolePunched`], since only a punch opens it), else after
//!    [`DIRECT_GRACE`] without a connection: a `PunchRequest`; the tracker
//!    sends both devices `PunchNow` timed to arrive together, and both dial
//!    each other's observed address at once, so each NAT sees an outgoing
//!    packet before the other's arrives.
//! 3. **Relay**, after [`PUNCH_GRACE`] (if `discovery.relay`): a
//!    `RelayRequest`; both devices get a token, open a relay stream, and put
//!    a [`Tunnel`] in front of it whose local address stands for the peer
//!    ([`PathKind::Relayed`]). TLS still runs end to end, pinned to the
//!    device.
//! 4. Otherwise it waits ([`RETRY_FIRST`], doubling) and starts over.
//!
//! `discovery.force_relay` (tests, diagnostics) skips 1 and 2.
//!
//! Nothing a tracker says is trusted: its addresses are only dialled, pinned
//! to the device id it named, and that device must still prove it holds the
//! folder's key before anything is shared. A tracker that sends garbage is
//! disconnected (and retried later); one that lies wastes dials, bounded by
//! the address book's size and back-off.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshsync_core::ids::DeviceId;
use meshsync_core::keys::discovery::tracker_lookup_key;
use meshsync_net::Transport;
use meshsync_proto::tracker::{
    ClientMessage, LookupKey, MAX_ADDRS, MAX_KEYS_PER_MESSAGE, PeerInfo, RefuseReason, RelayToken,
    ServerMessage,
};
use meshsync_tracker::client::{self, TrackerSender};

use super::relay_tunnel::Tunnel;
use super::{Candidate, Found, PathKind};
use crate::daemon::{Daemon, peer};

/// Without a connection this long after a device was named, ask for a hole
/// punch.
pub const DIRECT_GRACE: Duration = Duration::from_secs(4);
/// Without a connection this long after a punch was asked for, ask for a
/// relay session.
pub const PUNCH_GRACE: Duration = Duration::from_secs(5);
/// Without a connection this long after a relay session was asked for,
/// give up for a while.
pub const RELAY_GRACE: Duration = Duration::from_secs(15);
/// The first wait before trying a device again; it doubles up to
/// [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(30);
/// The longest wait before trying a device again.
pub const RETRY_MAX: Duration = Duration::from_secs(600);
/// Connecting (and each request) may take this long.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The first wait before reconnecting to a tracker; doubles up to
/// [`RECONNECT_MAX`].
const RECONNECT_FIRST: Duration = Duration::from_secs(2);
const RECONNECT_MAX: Duration = Duration::from_secs(300);
/// Devices remembered per tracker at most.
const MAX_LEARNED: usize = 1024;
/// A device not named again for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// How often the escalation and the folder set are looked at.
const TICK: Duration = Duration::from_secs(1);
/// Hole punches one tracker may have running at once, and how soon the
/// same device may be punched to again: a lying tracker cannot turn this
/// device into a source of handshakes aimed anywhere.
const MAX_PUNCHES: usize = 8;
const PUNCH_AGAIN_AFTER: Duration = Duration::from_secs(10);
/// Relay tunnels one tracker may have open at once.
const MAX_TUNNELS: usize = 16;

/// Starts one task per configured tracker (none without trackers).
pub fn spawn(daemon: &Arc<Daemon>, transport: &Arc<Transport>) {
    let trackers = daemon
        .config
        .lock()
        .expect("poisoned")
        .discovery
        .trackers
        .clone();
    let observed: Arc<Mutex<HashMap<String, SocketAddr>>> = Arc::default();
    for spec in trackers {
        tokio::spawn(run_tracker(
            Arc::clone(daemon),
            Arc::clone(transport),
            spec,
            Arc::clone(&observed),
        ));
    }
}

/// Connects to the tracker `spec` and serves the connection, again and
/// again, until the daemon stops.
async fn run_tracker(
    daemon: Arc<Daemon>,
    transport: Arc<Transport>,
    spec: String,
    observed: Arc<Mutex<HashMap<String, SocketAddr>>>,
) {
    let mut stopping = daemon.stopping.subscribe();
    let mut wait = RECONNECT_FIRST;
    let mut failures = 0u32;
    loop {
        let mut session = Session::new(&daemon, &transport, &spec, &observed);
        let result = tokio::select! {
            r = session.run() => r,
            _ = stopping.changed() => return,
        };
        if session.announced_once {
            wait = RECONNECT_FIRST;
            failures = 0;
        }
        session.forget_observed();
        drop(session);
        failures += 1;
        match result {
            Err(e) if failures == 1 => {
                tracing::info!("tracker {spec}: {e:#}; retrying in {wait:?}")
            }
            Err(e) => tracing::debug!("tracker {spec}: {e:#}; retrying in {wait:?}"),
            Ok(()) => tracing::debug!("tracker {spec}: disconnected"),
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopping.changed() => return,
        }
        wait = (wait * 2).min(RECONNECT_MAX);
    }
}

/// How far the escalation for one device has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Direct,
    Punch,
    Relay,
    Wait,
}

/// A device a tracker named.
struct Learned {
    /// A key both announced (what the tracker checks a punch or relay
    /// request against).
    key: LookupKey,
    /// The tracker sees it at an address it did not announce: it is behind
    /// a NAT, and a direct dial cannot reach it unless a punch opens the
    /// way (or a port mapping already did).
    behind_nat: bool,
    stage: Stage,
    since: Instant,
    seen: Instant,
    retries: u32,
}

/// One connection to one tracker.
struct Session<'a> {
    daemon: &'a Arc<Daemon>,
    transport: &'a Arc<Transport>,
    spec: &'a str,
    observed: &'a Mutex<HashMap<String, SocketAddr>>,
    tracker: Option<SocketAddr>,
    learned: HashMap<DeviceId, Learned>,
    announced: HashSet<LookupKey>,
    announce_every: Duration,
    next_announce: Instant,
    announced_once: bool,
    tunnels: Arc<Mutex<HashMap<DeviceId, tokio::task::AbortHandle>>>,
    /// Punches under way, and when each device was last punched to.
    punches: HashMap<DeviceId, (Instant, tokio::task::AbortHandle)>,
}

impl<'a> Session<'a> {
    fn new(
        daemon: &'a Arc<Daemon>,
        transport: &'a Arc<Transport>,
        spec: &'a str,
        observed: &'a Mutex<HashMap<String, SocketAddr>>,
    ) -> Self {
        Session {
            daemon,
            transport,
            spec,
            observed,
            tracker: None,
            learned: HashMap::new(),
            announced: HashSet::new(),
            announce_every: Duration::from_secs(120),
            next_announce: Instant::now(),
            announced_once: false,
            tunnels: Arc::default(),
            punches: HashMap::new(),
        }
    }

    fn discovery(&self) -> (bool, bool) {
        let c = self.daemon.config.lock().expect("poisoned");
        (c.discovery.relay, c.discovery.force_relay)
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let addr = resolve(self.spec, self.transport.local_addr()).await?;
        self.tracker = Some(addr);
        let conn = tokio::time::timeout(TIMEOUT, client::connect(self.transport, addr))
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))??;
        tracing::debug!("tracker {}: connected ({})", self.spec, conn.tracker);
        let (connection, mut sender, mut receiver) = (conn.connection, conn.sender, conn.receiver);
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                m = receiver.recv() => {
                    self.handle(&connection, m?);
                    // A device just named may be due for its next step at
                    // once (relaying forced).
                    self.escalate(&mut sender).await?;
                }
                _ = tick.tick() => {
                    self.announce_if_due(&mut sender).await?;
                    self.escalate(&mut sender).await?;
                }
            }
        }
    }

    /// Announces every folder when due or when the folder set changed;
    /// withdraws removed folders.
    async fn announce_if_due(&mut self, sender: &mut TrackerSender) -> anyhow::Result<()> {
        let keys: HashSet<LookupKey> = self
            .daemon
            .all_folders()
            .iter()
            .map(|rt| tracker_lookup_key(rt.folder.key.access_key()))
            .collect();
        let now = Instant::now();
        let gone: Vec<LookupKey> = self.announced.difference(&keys).copied().collect();
        for chunk in gone.chunks(MAX_KEYS_PER_MESSAGE) {
            send(
                sender,
                &ClientMessage::Leave {
                    keys: chunk.to_vec(),
                },
            )
            .await?;
        }
        if keys == self.announced && now < self.next_announce {
            return Ok(());
        }
        let addrs = self.own_addresses().await;
        let keys: Vec<LookupKey> = keys.into_iter().collect();
        for chunk in keys.chunks(MAX_KEYS_PER_MESSAGE) {
            send(
                sender,
                &ClientMessage::Announce {
                    keys: chunk.to_vec(),
                    addrs: addrs.clone(),
                },
            )
            .await?;
        }
        self.announced = keys.into_iter().collect();
        self.next_announce = now + self.announce_every;
        Ok(())
    }

    /// This device's own addresses with the listening port: the bound
    /// address, or (bound to every interface) the address of the interface
    /// that routes to the tracker.
    async fn own_addresses(&self) -> Vec<SocketAddr> {
        let local = self.transport.local_addr();
        if !local.ip().is_unspecified() {
            return vec![local];
        }
        let Some(tracker) = self.tracker else {
            return Vec::new();
        };
        let probe = async {
            let bind: SocketAddr = if tracker.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            // Connecting a UDP socket sends nothing; it only picks a route.
            let socket = tokio::net::UdpSocket::bind(bind).await.ok()?;
            socket.connect(tracker).await.ok()?;
            socket.local_addr().ok()
        };
        probe
            .await
            .map(|a| SocketAddr::new(a.ip(), local.port()))
            .filter(meshsync_proto::tracker::is_dialable)
            .into_iter()
            .collect()
    }

    fn handle(&mut self, connection: &quinn::Connection, message: ServerMessage) {
        match message {
            ServerMessage::Announced { observed, ttl_secs } => {
                self.announced_once = true;
                self.announce_every = Duration::from_secs(u64::from(ttl_secs / 2).max(10));
                self.next_announce = Instant::now() + self.announce_every;
                let mut all = self.observed.lock().expect("poisoned");
                all.insert(self.spec.to_owned(), observed);
                let mut addrs: Vec<SocketAddr> = all.values().copied().collect();
                addrs.sort();
                addrs.dedup();
                self.daemon.book.set_own("tracker", addrs);
            }
            ServerMessage::Peers { key, peers } => {
                for p in peers {
                    self.learn(key, p);
                }
            }
            ServerMessage::PunchNow {
                peer,
                addrs,
                delay_ms,
            } => self.punch(peer, addrs, delay_ms),
            ServerMessage::RelayOffer { peer, token } => self.relay(connection, peer, token),
            ServerMessage::Refused { request, reason } => {
                tracing::debug!(
                    "tracker {}: request {request} refused: {reason:?}",
                    self.spec
                );
                if let RefuseReason::RateLimited { retry_after_ms } = reason {
                    let wait = Duration::from_millis(u64::from(retry_after_ms)).max(TICK);
                    self.next_announce = self.next_announce.max(Instant::now() + wait);
                }
            }
        }
    }

    /// A device the tracker named: offer its addresses (unless relaying is
    /// forced) and start its escalation.
    fn learn(&mut self, key: LookupKey, p: PeerInfo) {
        if p.device == self.daemon.device_id {
            return;
        }
        let now = Instant::now();
        let (_, force_relay) = self.discovery();
        let behind_nat = !p.addrs.contains(&p.observed);
        if !force_relay {
            let addrs = std::iter::once(p.observed).chain(p.addrs.iter().copied());
            for addr in addrs.take(MAX_ADDRS + 1) {
                if self.dialable(addr) {
                    let punched = behind_nat && addr == p.observed;
                    self.daemon.book.offer(Candidate {
                        addr,
                        device: Some(p.device),
                        found: Found::Tracker,
                        path: if punched {
                            PathKind::HolePunched
                        } else {
                            PathKind::Direct
                        },
                    });
                }
            }
        }
        if !self.learned.contains_key(&p.device) && self.learned.len() >= MAX_LEARNED {
            self.learned
                .retain(|_, l| now.duration_since(l.seen) < FORGET_AFTER);
            if self.learned.len() >= MAX_LEARNED {
                return;
            }
        }
        let l = self.learned.entry(p.device).or_insert(Learned {
            key,
            behind_nat,
            stage: Stage::Direct,
            since: now,
            seen: now,
            retries: 0,
        });
        l.seen = now;
        l.behind_nat = behind_nat;
    }

    fn dialable(&self, addr: SocketAddr) -> bool {
        let own = self.daemon.book.own();
        self.tracker
            .is_some_and(|t| dialable(self.transport.local_addr(), t, &own, addr))
    }

    fn connected(&self, device: &DeviceId) -> bool {
        self.daemon.peers.get(device).is_some()
    }

    /// Moves every unconnected device one step on when its grace is up.
    async fn escalate(&mut self, sender: &mut TrackerSender) -> anyhow::Result<()> {
        let now = Instant::now();
        let (relay, force_relay) = self.discovery();
        let devices: Vec<DeviceId> = self.learned.keys().copied().collect();
        for device in devices {
            let connected = self.connected(&device);
            let l = self.learned.get_mut(&device).expect("listed");
            if connected {
                (l.stage, l.since, l.retries) = (Stage::Direct, now, 0);
                continue;
            }
            let waited = now.duration_since(l.since);
            let next = match l.stage {
                Stage::Direct if force_relay || l.behind_nat || waited >= DIRECT_GRACE => {
                    if force_relay {
                        relay.then_some(Stage::Relay).or(Some(Stage::Wait))
                    } else {
                        Some(Stage::Punch)
                    }
                }
                Stage::Punch if waited >= PUNCH_GRACE => {
                    Some(if relay { Stage::Relay } else { Stage::Wait })
                }
                Stage::Relay if waited >= RELAY_GRACE => Some(Stage::Wait),
                Stage::Wait if waited >= retry_wait(l.retries) => {
                    l.retries += 1;
                    Some(Stage::Direct)
                }
                _ => None,
            };
            let Some(next) = next else {
                continue;
            };
            (l.stage, l.since) = (next, now);
            let key = l.key;
            match next {
                Stage::Punch => {
                    tracing::debug!("tracker {}: asking for a hole punch to {device}", self.spec);
                    send(sender, &ClientMessage::PunchRequest { key, peer: device }).await?;
                }
                Stage::Relay => {
                    tracing::debug!("tracker {}: asking for a relay to {device}", self.spec);
                    send(sender, &ClientMessage::RelayRequest { key, peer: device }).await?;
                }
                Stage::Direct | Stage::Wait => {}
            }
        }
        self.learned
            .retain(|_, l| now.duration_since(l.seen) < FORGET_AFTER);
        Ok(())
    }

    /// `PunchNow`: after the delay, dial every address of `peer` at once.
    fn punch(&mut self, peer: DeviceId, addrs: Vec<SocketAddr>, delay_ms: u32) {
        let (_, force_relay) = self.discovery();
        if force_relay || self.connected(&peer) || peer == self.daemon.device_id {
            return;
        }
        let now = Instant::now();
        self.punches.retain(|_, (at, task)| {
            !task.is_finished() || now.duration_since(*at) < PUNCH_AGAIN_AFTER
        });
        let running = self
            .punches
            .values()
            .filter(|(_, t)| !t.is_finished())
            .count();
        if self.punches.contains_key(&peer) || running >= MAX_PUNCHES {
            tracing::debug!(
                "tracker {}: punch to {peer} ignored (too soon, or too many)",
                self.spec
            );
            return;
        }
        if let Some(l) = self.learned.get_mut(&peer) {
            // The peer asked: follow its timing rather than ask again.
            (l.stage, l.since) = (Stage::Punch, now);
        }
        let addrs: Vec<SocketAddr> = addrs.into_iter().filter(|a| self.dialable(*a)).collect();
        tracing::debug!("tracker {}: punching to {peer} at {addrs:?}", self.spec);
        let (daemon, transport) = (Arc::clone(self.daemon), Arc::clone(self.transport));
        let task = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(u64::from(delay_ms))).await;
            let mut dials = tokio::task::JoinSet::new();
            for addr in addrs {
                daemon.book.offer(Candidate {
                    addr,
                    device: Some(peer),
                    found: Found::Tracker,
                    path: PathKind::HolePunched,
                });
                let t = Arc::clone(&transport);
                dials.spawn(async move { (addr, t.connect(addr, Some(peer)).await) });
            }
            // The first dial through wins; the rest are dropped (and any
            // duplicate the registry would refuse anyway).
            while let Some(Ok((addr, dialled))) = dials.join_next().await {
                match dialled {
                    Ok(pc) => {
                        dials.abort_all();
                        tokio::spawn(peer::run_connection(
                            daemon,
                            pc,
                            Found::Tracker,
                            PathKind::HolePunched,
                        ));
                        return;
                    }
                    Err(e) => tracing::debug!("hole punch to {peer} at {addr}: {e}"),
                }
            }
        });
        self.punches.insert(peer, (now, task.abort_handle()));
    }

    /// `RelayOffer`: open the relay stream, put a tunnel in front of it, and
    /// offer the tunnel's address as the peer's.
    fn relay(&mut self, connection: &quinn::Connection, peer: DeviceId, token: RelayToken) {
        let (relay, _) = self.discovery();
        if !relay || self.connected(&peer) || peer == self.daemon.device_id {
            tracing::debug!("tracker {}: relay offer for {peer} ignored", self.spec);
            return;
        }
        {
            let mut tunnels = self.tunnels.lock().expect("poisoned");
            tunnels.retain(|_, t| !t.is_finished());
            if !tunnels.contains_key(&peer) && tunnels.len() >= MAX_TUNNELS {
                tracing::debug!(
                    "tracker {}: relay offer for {peer} ignored (too many)",
                    self.spec
                );
                return;
            }
        }
        if let Some(l) = self.learned.get_mut(&peer) {
            (l.stage, l.since) = (Stage::Relay, Instant::now());
        }
        let (daemon, connection) = (Arc::clone(self.daemon), connection.clone());
        let local = self.transport.local_addr();
        let spec = self.spec.to_owned();
        let tunnels = Arc::clone(&self.tunnels);
        let task = tokio::spawn(async move {
            let tunnel = match Tunnel::bind(local).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::info!("relay tunnel to {peer}: {e}");
                    return;
                }
            };
            let (send, recv) = match client::open_relay(&connection, token).await {
                Ok(streams) => streams,
                Err(e) => {
                    tracing::debug!("relay stream to {peer}: {e}");
                    return;
                }
            };
            let addr = tunnel.addr;
            tracing::info!("tracker {spec}: relaying to {peer} (tunnel {addr})");
            daemon.book.offer(Candidate {
                addr,
                device: Some(peer),
                found: Found::Tracker,
                path: PathKind::Relayed,
            });
            let (up, down) = tunnel.run(send, recv).await;
            tracing::info!("relay to {peer} ended ({up} bytes up, {down} down)");
            daemon.book.forget(&addr);
        });
        let old = tunnels
            .lock()
            .expect("poisoned")
            .insert(peer, task.abort_handle());
        if let Some(old) = old {
            old.abort();
        }
    }

    fn forget_observed(&self) {
        let mut all = self.observed.lock().expect("poisoned");
        all.remove(self.spec);
        let mut addrs: Vec<SocketAddr> = all.values().copied().collect();
        addrs.sort();
        self.daemon.book.set_own("tracker", addrs);
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // A relay stream dies with its tracker connection; so do tunnels
        // (a punch under way finishes on its own).
        for (_, task) in self.tunnels.lock().expect("poisoned").drain() {
            task.abort();
        }
    }
}

/// Whether dialling `addr` from the endpoint at `local` makes sense for a
/// device named by the tracker at `tracker`: the right address family, not
/// this device itself, and on loopback exactly when the tracker is (a
/// tracker on loopback can only have met devices on this host; a loopback
/// address from a remote one is nobody's, and an address off this host from
/// a loopback tracker is a lie).
fn dialable(local: SocketAddr, tracker: SocketAddr, own: &[SocketAddr], addr: SocketAddr) -> bool {
    let family_ok = local.is_ipv6() || addr.is_ipv4();
    let scope_ok = tracker.ip().is_loopback() == addr.ip().is_loopback();
    family_ok && scope_ok && addr != local && !own.contains(&addr)
}

fn retry_wait(retries: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1u32 << retries.min(8))
        .min(RETRY_MAX)
}

async fn send(sender: &mut TrackerSender, message: &ClientMessage) -> anyhow::Result<()> {
    tokio::time::timeout(TIMEOUT, sender.send(message))
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))??;
    Ok(())
}

/// The tracker's address, in a family the endpoint at `local` can reach.
async fn resolve(spec: &str, local: SocketAddr) -> anyhow::Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = tokio::time::timeout(TIMEOUT, tokio::net::lookup_host(spec))
        .await
        .map_err(|_| anyhow::anyhow!("timed out resolving {spec}"))?
        .map_err(|e| anyhow::anyhow!("resolving {spec}: {e}"))?
        .collect();
    let pick = if local.is_ipv4() {
        addrs.iter().find(|a| a.is_ipv4())
    } else {
        addrs.iter().find(|a| a.is_ipv6()).or(addrs.first())
    };
    pick.copied()
        .ok_or_else(|| anyhow::anyhow!("no address for {spec} this endpoint can reach"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_addresses_in_the_trackers_scope_and_family_are_dialled() {
        let (local, lo_tracker) = (a("127.0.0.1:22000"), a("127.0.0.1:22070"));
        assert!(dialable(local, lo_tracker, &[], a("127.0.0.1:22001")));
        assert!(
            !dialable(local, lo_tracker, &[], a("192.0.2.1:22000")),
            "a lie"
        );
        assert!(!dialable(local, lo_tracker, &[], local), "itself");
        let (local, tracker) = (a("0.0.0.0:22000"), a("198.51.100.1:22070"));
        let own = [a("203.0.113.5:22000")];
        assert!(dialable(local, tracker, &own, a("192.0.2.1:22000")));
        assert!(
            !dialable(local, tracker, &own, a("127.0.0.1:22001")),
            "nobody's"
        );
        assert!(
            !dialable(local, tracker, &own, own[0]),
            "own reflexive address"
        );
        assert!(
            !dialable(local, tracker, &own, a("[2001:db8::1]:22000")),
            "family"
        );
        assert!(dialable(
            a("[::]:22000"),
            tracker,
            &own,
            a("[2001:db8::1]:22000")
        ));
    }

    #[test]
    fn retries_back_off_to_a_cap() {
        assert_eq!(retry_wait(0), RETRY_FIRST);
        assert_eq!(retry_wait(1), RETRY_FIRST * 2);
        assert_eq!(retry_wait(20), RETRY_MAX);
    }
}
