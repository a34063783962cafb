//! LAN discovery: UDP announcements on every local network, so devices of
//! the same folder on one LAN find each other with no server and no
//! configuration.
//!
//! **Sending.** At start, every [`ANNOUNCE_EVERY`] (with a little jitter, so
//! devices started together do not stay in step) and whenever the set of
//! interface addresses changes (polled every [`INTERFACE_POLL`]), the
//! device sends its announcement (`meshsync_proto::lan`: device id, QUIC
//! port, addresses, one keyed tag per running folder, never a share id):
//!
//! - to the IPv4 group [`V4_GROUP`] (239.192.0.0/14 is the organisation-local
//!   scope of RFC 2365, so routers at the site's edge do not forward it) on
//!   every up, multicast-capable interface, with TTL 1;
//! - to the IPv6 group [`V6_GROUP`] (`ff12::/16`: transient, link-local
//!   scope) on the same interfaces, hop limit 1;
//! - as an IPv4 broadcast to each interface's broadcast address, for
//!   networks that drop multicast (some Wi-Fi access points, switches with
//!   IGMP snooping and no querier).
//!
//! All on the configured port (`--lan-port`), from sockets bound with
//! `SO_REUSEADDR` and `SO_REUSEPORT`, so several daemons on one machine
//! listen at once (multicast and broadcast reach every such socket), and
//! with multicast loopback on, so they hear each other too.
//!
//! The addresses announced are those of the QUIC listener: its own address
//! when it is bound to one, else every non-loopback address of the
//! listener's family on an up interface (IPv6 link-local ones left out: a
//! receiver could not know their scope; it uses the packet's source for
//! that).
//!
//! **Receiving** ([`Receiver`], pure, so tests feed it bytes): a datagram is
//! first charged to a token bucket of its source address and to a global
//! one, then decoded strictly, then its window checked (the current one or
//! one either side), then its tags against every running folder's tag key.
//! Only an announcement carrying a tag of one of our folders, from another
//! device, reaches the address book: the packet's source address with the
//! announced port first (it surely routes back), and the announced
//! addresses only when the source is not among them (a device bound to one
//! address that sent from another interface), each only if it is reachable
//! from the source's scope (no loopback address from another machine). The
//! candidates are pinned to the announced device: whoever else answers
//! there fails the TLS handshake, and the access proof guards each folder
//! after that. Everything else is dropped and counted ([`LanStats`], shown
//! in `status`), with a debug log line.
//!
//! Bounds: a datagram is at most 1 KiB; source buckets are at most
//! [`MAX_SOURCES`] (a flood from forged source addresses meets the global
//! bucket, [`GLOBAL_PER_SEC`] a second, and the address book's own bound);
//! tag checks cost one keyed hash per folder per accepted datagram.
//!
//! Why the tag covers the addresses (an improvement on a tag over the device
//! id and window alone): a stranger who captured an announcement could
//! otherwise replay its tags with addresses of its choosing and make every
//! holder on the LAN dial a victim. Now it can only replay the announcement
//! as it was, within the accepted windows, which points holders at the real
//! device.
//!
//! Never: announce a share id or anything derived from a key but the tags;
//! let a datagram change anything but the address book.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meshsync_core::ids::DeviceId;
use meshsync_core::keys::discovery::{LanTagKey, lan_window};
use meshsync_net::Transport;
use meshsync_proto::lan::{self as wire, Announcement, LanError};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockRef, Socket, Type};
use tokio::net::UdpSocket;

use super::interfaces::{self, InterfaceAddr};
use super::pex::reachable_from;
use super::{Candidate, Found, PathKind};
use crate::daemon::Daemon;
use crate::daemon::control::LanStatus;

/// The IPv4 group announcements go to (organisation-local scope).
pub const V4_GROUP: Ipv4Addr = Ipv4Addr::new(239, 192, 83, 77);

/// The IPv6 group announcements go to (`ff12::`: transient, link-local
/// scope; the low bytes spell `MSLA`).
pub const V6_GROUP: Ipv6Addr = Ipv6Addr::new(0xff12, 0, 0, 0, 0, 0, 0x4d53, 0x4c41);

/// Between two periodic announcements.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(30);

/// Between two looks at the interface list (a change announces at once).
pub const INTERFACE_POLL: Duration = Duration::from_secs(10);

/// Announcements one source address may send in a burst.
pub const SOURCE_BURST: f64 = 16.0;
/// ... and per second after that (a device sends a handful every 30 s).
pub const SOURCE_PER_SEC: f64 = 1.0;
/// Announcements from all sources in a burst.
pub const GLOBAL_BURST: f64 = 200.0;
/// ... and per second after that.
pub const GLOBAL_PER_SEC: f64 = 50.0;
/// The most source addresses with a bucket; beyond, idle buckets are
/// dropped, and if none is idle the new source is refused.
pub const MAX_SOURCES: usize = 1024;

/// What LAN discovery did since the daemon started.
#[derive(Debug, Default)]
pub struct LanStats {
    /// Datagrams sent.
    pub sent: AtomicU64,
    /// Datagrams received (all of them).
    pub received: AtomicU64,
    /// Announcements that matched a folder and were offered to the book.
    pub accepted: AtomicU64,
    /// Datagrams that did not decode.
    pub malformed: AtomicU64,
    /// Datagrams dropped by the rate limits.
    pub rate_limited: AtomicU64,
    /// Announcements of another window, of this device, or with no tag of
    /// ours.
    pub ignored: AtomicU64,
}

impl LanStats {
    /// The counters for `status`.
    pub fn snapshot(&self) -> LanStatus {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LanStatus {
            sent: get(&self.sent),
            received: get(&self.received),
            accepted: get(&self.accepted),
            malformed: get(&self.malformed),
            rate_limited: get(&self.rate_limited),
            ignored: get(&self.ignored),
        }
    }

    fn count(&self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Found { .. } => &self.accepted,
            Outcome::Malformed(_) => &self.malformed,
            Outcome::RateLimited => &self.rate_limited,
            Outcome::Own | Outcome::OtherWindow | Outcome::NoFolderOfOurs => &self.ignored,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What became of one received datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A device with one of our folders, and where to dial it (best first).
    Found {
        /// The announcing device.
        device: DeviceId,
        /// Addresses to offer, pinned to `device`.
        addrs: Vec<SocketAddr>,
    },
    /// Dropped by a rate limit.
    RateLimited,
    /// Not an announcement.
    Malformed(LanError),
    /// Our own announcement (multicast loopback).
    Own,
    /// Made for a window too far from ours (a replay, or a clock far off).
    OtherWindow,
    /// No tag of a folder we run.
    NoFolderOfOurs,
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant, burst: f64, per_sec: f64) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + secs * per_sec).min(burst);
        self.at = now;
    }

    fn take(&mut self, now: Instant, burst: f64, per_sec: f64) -> bool {
        self.refill(now, burst, per_sec);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The receiving side's decisions, without sockets or clocks.
pub struct Receiver {
    me: DeviceId,
    /// Whether the QUIC transport can dial IPv6 addresses.
    v6: bool,
    sources: HashMap<IpAddr, Bucket>,
    global: Bucket,
}

impl Receiver {
    /// A receiver for device `me`, whose transport dials IPv6 too when `v6`.
    pub fn new(me: DeviceId, v6: bool, now: Instant) -> Self {
        Receiver {
            me,
            v6,
            sources: HashMap::new(),
            global: Bucket::full(GLOBAL_BURST, now),
        }
    }

    /// Handles one datagram from `from`, at `now` in tag window
    /// `now_window`, against the tag keys of the folders this device runs.
    pub fn handle(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
        now_window: u64,
        keys: &[LanTagKey],
    ) -> Outcome {
        if !self.admit(from.ip(), now) {
            return Outcome::RateLimited;
        }
        let announcement = match Announcement::decode(datagram) {
            Ok(a) => a,
            Err(e) => return Outcome::Malformed(e),
        };
        if announcement.device == self.me {
            return Outcome::Own;
        }
        if !wire::window_accepted(announcement.window, now_window) {
            return Outcome::OtherWindow;
        }
        // Every key is tried, so the time taken does not tell which folder
        // matched (nor whether one did, beyond what follows it).
        let matched = keys
            .iter()
            .fold(false, |any, key| announcement.matches(key) | any);
        if !matched {
            return Outcome::NoFolderOfOurs;
        }
        Outcome::Found {
            device: announcement.device,
            addrs: dial_addresses(&announcement, from, self.v6),
        }
    }

    /// Charges one datagram from `ip` to its bucket and the global one.
    fn admit(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.sources.contains_key(&ip) && self.sources.len() >= MAX_SOURCES {
            // Forget sources whose bucket has refilled: they have been quiet.
            self.sources.retain(|_, b| {
                b.refill(now, SOURCE_BURST, SOURCE_PER_SEC);
                b.tokens < SOURCE_BURST
            });
            if self.sources.len() >= MAX_SOURCES {
                return false;
            }
        }
        let bucket = self
            .sources
            .entry(ip)
            .or_insert_with(|| Bucket::full(SOURCE_BURST, now));
        bucket.take(now, SOURCE_BURST, SOURCE_PER_SEC)
            && self.global.take(now, GLOBAL_BURST, GLOBAL_PER_SEC)
    }
}

/// Where to dial the device of `a`, heard from `from`: the source address
/// with the announced port first, then, when the source is not one of the
/// announced addresses, those, each only if reachable from the source's
/// scope and of a family the transport dials.
pub fn dial_addresses(a: &Announcement, from: SocketAddr, v6: bool) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    let family_ok = |ip: &IpAddr| v6 || ip.is_ipv4();
    let source = match from {
        SocketAddr::V4(s) => SocketAddr::V4(SocketAddrV4::new(*s.ip(), a.port)),
        // A link-local source keeps the scope the packet came in on.
        SocketAddr::V6(s) => SocketAddr::V6(SocketAddrV6::new(*s.ip(), a.port, 0, s.scope_id())),
    };
    if family_ok(&source.ip()) {
        out.push(source);
    }
    if a.addresses.contains(&from.ip()) {
        return out;
    }
    for ip in &a.addresses {
        let link_local_v6 = matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local());
        if family_ok(ip) && !link_local_v6 && reachable_from(*ip, from.ip()) {
            out.push(SocketAddr::new(*ip, a.port));
        }
    }
    out.dedup();
    out
}

/// The addresses to announce for a listener on `listen`, given the
/// interface list: its own address if it is bound to one, else every
/// non-loopback, non-link-local-IPv6 address of its family (both for an
/// IPv6 listener) on an up interface.
pub fn announced_addresses(listen: SocketAddr, ifaces: &[InterfaceAddr]) -> Vec<IpAddr> {
    if !listen.ip().is_unspecified() {
        return vec![listen.ip()];
    }
    let mut out: Vec<IpAddr> = ifaces
        .iter()
        .filter(|i| i.up && !i.loopback && !i.ip.is_loopback())
        .map(|i| i.ip)
        .filter(|ip| listen.is_ipv6() || ip.is_ipv4())
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .collect();
    out.sort();
    out.dedup();
    out.truncate(wire::MAX_ADDRESSES);
    out
}

/// Starts LAN discovery for the daemon (when `discovery.lan` is on): binds
/// the announcement sockets on the configured port and runs the announce
/// and listen loop until the daemon stops. A port that cannot be bound is
/// logged and LAN discovery stays off.
pub fn spawn(daemon: &Arc<Daemon>, transport: &Arc<Transport>) {
    let port = daemon.config.lock().expect("poisoned").discovery.lan_port;
    let v4 = bind(Domain::IPV4, port)
        .inspect_err(|e| tracing::warn!("LAN discovery: IPv4 port {port}: {e}"))
        .ok();
    let v6 = bind(Domain::IPV6, port)
        .inspect_err(|e| tracing::debug!("LAN discovery: IPv6 port {port}: {e}"))
        .ok();
    if v4.is_none() && v6.is_none() {
        tracing::warn!("LAN discovery is off: no socket on UDP port {port}");
        return;
    }
    let mut lan = Lan {
        daemon: Arc::clone(daemon),
        listen: transport.local_addr(),
        port,
        v4,
        v6,
        ifaces: Vec::new(),
        joined: HashSet::new(),
        keys: Vec::new(),
    };
    // Join the groups before the daemon reports itself up, so nothing sent
    // to them from then on is missed.
    lan.refresh_interfaces();
    tokio::spawn(lan.run());
}

/// A UDP socket on `port` of every address of `domain`, shareable with
/// other daemons on this machine, ready for multicast and broadcast.
fn bind(domain: Domain, port: u16) -> io::Result<UdpSocket> {
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    let addr: SocketAddr = if domain == Domain::IPV6 {
        socket.set_only_v6(true)?;
        socket.set_multicast_loop_v6(true)?;
        socket.set_multicast_hops_v6(1)?;
        (Ipv6Addr::UNSPECIFIED, port).into()
    } else {
        socket.set_broadcast(true)?;
        socket.set_multicast_loop_v4(true)?;
        socket.set_multicast_ttl_v4(1)?;
        (Ipv4Addr::UNSPECIFIED, port).into()
    };
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// The running LAN discovery of one daemon.
struct Lan {
    daemon: Arc<Daemon>,
    /// The QUIC listener's address.
    listen: SocketAddr,
    port: u16,
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    /// The interface list as last read.
    ifaces: Vec<InterfaceAddr>,
    /// Group memberships: (interface index, IPv6?).
    joined: HashSet<(u32, bool)>,
    /// Tag keys of the running folders.
    keys: Vec<LanTagKey>,
}

impl Lan {
    async fn run(mut self) {
        let mut receiver =
            Receiver::new(self.daemon.device_id, self.listen.is_ipv6(), Instant::now());
        let mut stopping = self.daemon.stopping.subscribe();
        let mut poll = tokio::time::interval(INTERFACE_POLL);
        let mut next_announce = tokio::time::Instant::now();
        let (mut buf4, mut buf6) = (vec![0u8; 2048], vec![0u8; 2048]);
        loop {
            tokio::select! {
                _ = poll.tick() => {
                    self.refresh_keys();
                    if self.refresh_interfaces() {
                        next_announce = tokio::time::Instant::now();
                    }
                }
                _ = tokio::time::sleep_until(next_announce) => {
                    self.refresh_keys();
                    self.announce().await;
                    next_announce = tokio::time::Instant::now() + jittered(ANNOUNCE_EVERY);
                }
                got = recv(self.v4.as_ref(), &mut buf4) => {
                    if let Some((n, from)) = got {
                        self.received(&mut receiver, &buf4[..n], from);
                    }
                }
                got = recv(self.v6.as_ref(), &mut buf6) => {
                    if let Some((n, from)) = got {
                        self.received(&mut receiver, &buf6[..n], from);
                    }
                }
                _ = stopping.changed() => return,
            }
        }
    }

    /// Re-derives the tag keys of the running folders.
    fn refresh_keys(&mut self) {
        self.keys = self
            .daemon
            .all_folders()
            .iter()
            .filter(|rt| !rt.folder.paused.load(Ordering::SeqCst))
            .map(|rt| LanTagKey::new(rt.folder.key.access_key()))
            .collect();
    }

    /// Reads the interface list; joins the groups on new interfaces.
    /// Returns whether the list changed.
    fn refresh_interfaces(&mut self) -> bool {
        let ifaces = match interfaces::list() {
            Ok(i) => i,
            Err(e) => {
                tracing::debug!("LAN discovery: listing interfaces: {e}");
                return false;
            }
        };
        if ifaces == self.ifaces {
            return false;
        }
        self.ifaces = ifaces;
        let present: HashSet<u32> = self.ifaces.iter().map(|i| i.index).collect();
        self.joined.retain(|(index, _)| present.contains(index));
        for i in multicast_interfaces(&self.ifaces) {
            let (v6, socket) = match i.ip {
                IpAddr::V4(_) => (false, self.v4.as_ref()),
                IpAddr::V6(_) => (true, self.v6.as_ref()),
            };
            let Some(socket) = socket else { continue };
            if self.joined.contains(&(i.index, v6)) {
                continue;
            }
            let s = SockRef::from(socket);
            let joined = if v6 {
                s.join_multicast_v6(&V6_GROUP, i.index)
            } else {
                s.join_multicast_v4_n(&V4_GROUP, &InterfaceIndexOrAddress::Index(i.index))
            };
            match joined {
                Ok(()) => {
                    self.joined.insert((i.index, v6));
                    tracing::debug!("LAN discovery: joined the group on {} ({})", i.name, i.ip);
                }
                // Already a member (the interface came back).
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    self.joined.insert((i.index, v6));
                }
                Err(e) => tracing::debug!("LAN discovery: joining on {}: {e}", i.name),
            }
        }
        let own: Vec<SocketAddr> = announced_addresses(self.listen, &self.ifaces)
            .into_iter()
            .map(|ip| SocketAddr::new(ip, self.listen.port()))
            .collect();
        self.daemon.book.set_own("lan", own);
        true
    }

    /// Sends this device's announcements on every interface.
    async fn announce(&self) {
        let window = lan_window(unix_now());
        let addrs = announced_addresses(self.listen, &self.ifaces);
        let datagrams = wire::encode(
            &self.daemon.device_id,
            window,
            self.listen.port(),
            &addrs,
            &self.keys,
        );
        if datagrams.is_empty() {
            return;
        }
        let stats = &self.daemon.lan_stats;
        let mut broadcasts: Vec<Ipv4Addr> = Vec::new();
        for i in multicast_interfaces(&self.ifaces) {
            let sent = match (i.ip, self.v4.as_ref(), self.v6.as_ref()) {
                (IpAddr::V4(ip), Some(s), _) => {
                    let to = SocketAddr::from((V4_GROUP, self.port));
                    match SockRef::from(s).set_multicast_if_v4(&ip) {
                        Ok(()) => send_all(s, &datagrams, to).await,
                        Err(e) => Err(e),
                    }
                }
                (IpAddr::V6(_), _, Some(s)) => {
                    let to = SocketAddr::V6(SocketAddrV6::new(V6_GROUP, self.port, 0, i.index));
                    match SockRef::from(s).set_multicast_if_v6(i.index) {
                        Ok(()) => send_all(s, &datagrams, to).await,
                        Err(e) => Err(e),
                    }
                }
                _ => Ok(0),
            };
            match sent {
                Ok(n) => stats.sent.fetch_add(n, Ordering::Relaxed),
                Err(e) => {
                    tracing::debug!("LAN discovery: announcing on {} ({}): {e}", i.name, i.ip);
                    0
                }
            };
        }
        for i in &self.ifaces {
            if let Some(b) = i.broadcast
                && i.up
                && !broadcasts.contains(&b)
            {
                broadcasts.push(b);
            }
        }
        if let Some(s) = self.v4.as_ref() {
            for b in broadcasts {
                match send_all(s, &datagrams, SocketAddr::from((b, self.port))).await {
                    Ok(n) => {
                        stats.sent.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => tracing::debug!("LAN discovery: broadcasting to {b}: {e}"),
                }
            }
        }
    }

    fn received(&self, receiver: &mut Receiver, datagram: &[u8], from: SocketAddr) {
        let stats = &self.daemon.lan_stats;
        stats.received.fetch_add(1, Ordering::Relaxed);
        let outcome = receiver.handle(
            datagram,
            from,
            Instant::now(),
            lan_window(unix_now()),
            &self.keys,
        );
        stats.count(&outcome);
        match outcome {
            Outcome::Found { device, addrs } => {
                for addr in addrs {
                    self.daemon.book.offer(Candidate {
                        addr,
                        device: Some(device),
                        found: Found::Lan,
                        path: PathKind::Direct,
                    });
                }
            }
            Outcome::Own => {}
            // A flood would flood the log too: say so at 1, 2, 4, 8, …
            Outcome::RateLimited => {
                let n = stats.rate_limited.load(Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::debug!("LAN datagrams dropped by the rate limits: {n} so far");
                }
            }
            other => tracing::debug!("LAN datagram from {from} dropped: {other:?}"),
        }
    }
}

/// The up, multicast-capable interfaces, one address of each family per
/// interface.
fn multicast_interfaces(ifaces: &[InterfaceAddr]) -> Vec<&InterfaceAddr> {
    let mut seen: HashSet<(u32, bool)> = HashSet::new();
    ifaces
        .iter()
        .filter(|i| i.up && i.multicast && i.index > 0)
        .filter(|i| seen.insert((i.index, i.ip.is_ipv6())))
        .collect()
}

async fn send_all(socket: &UdpSocket, datagrams: &[Vec<u8>], to: SocketAddr) -> io::Result<u64> {
    for d in datagrams {
        socket.send_to(d, to).await?;
    }
    Ok(datagrams.len() as u64)
}

/// The next datagram of `socket`, or never when there is no socket. A
/// receive error (an ICMP error reported on the socket) yields `None`.
async fn recv(socket: Option<&UdpSocket>, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await.ok(),
        None => std::future::pending().await,
    }
}

/// `period` give or take a tenth.
fn jittered(period: Duration) -> Duration {
    let tenth = period.as_millis() as u64 / 10;
    let jitter = rand::random_range(0..=2 * tenth);
    period - Duration::from_millis(tenth) + Duration::from_millis(jitter)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshsync_core::keys::ReadWriteKey;

    fn key(seed: u8) -> LanTagKey {
        LanTagKey::new(ReadWriteKey::from_secret(&[seed; 32]).access_key())
    }

    fn them() -> DeviceId {
        DeviceId::from_bytes([0x33; 32])
    }

    fn me() -> DeviceId {
        DeviceId::from_bytes([0x11; 32])
    }

    const WINDOW: u64 = 5_000_000;

    fn announcement(addrs: &[&str], keys: &[LanTagKey]) -> Vec<u8> {
        let ips: Vec<IpAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
        wire::encode(&them(), WINDOW, 22000, &ips, keys).remove(0)
    }

    fn from(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_matching_announcement_gives_the_source_first() {
        let mut r = Receiver::new(me(), false, Instant::now());
        let d = announcement(&["192.168.1.20"], &[key(1), key(2)]);
        let got = r.handle(
            &d,
            from("192.168.1.20:21029"),
            Instant::now(),
            WINDOW,
            &[key(2)],
        );
        assert_eq!(
            got,
            Outcome::Found {
                device: them(),
                addrs: vec![from("192.168.1.20:22000")],
            },
            "the source is announced: only it"
        );
        // Sent from another interface than the listener's address: both.
        let got = r.handle(
            &d,
            from("10.0.0.5:21029"),
            Instant::now(),
            WINDOW,
            &[key(1)],
        );
        assert_eq!(
            got,
            Outcome::Found {
                device: them(),
                addrs: vec![from("10.0.0.5:22000"), from("192.168.1.20:22000")],
            }
        );
    }

    #[test]
    fn a_listener_without_the_key_learns_nothing() {
        let mut r = Receiver::new(me(), false, Instant::now());
        let d = announcement(&["192.168.1.20"], &[key(1)]);
        let got = r.handle(
            &d,
            from("192.168.1.20:1"),
            Instant::now(),
            WINDOW,
            &[key(9)],
        );
        assert_eq!(got, Outcome::NoFolderOfOurs);
        let got = r.handle(&d, from("192.168.1.20:1"), Instant::now(), WINDOW, &[]);
        assert_eq!(got, Outcome::NoFolderOfOurs);
    }

    #[test]
    fn own_stale_and_future_announcements_are_ignored() {
        let mut r = Receiver::new(them(), false, Instant::now());
        let d = announcement(&["192.168.1.20"], &[key(1)]);
        let now = Instant::now();
        assert_eq!(
            r.handle(&d, from("192.168.1.20:1"), now, WINDOW, &[key(1)]),
            Outcome::Own
        );
        let mut r = Receiver::new(me(), false, now);
        for (w, ok) in [
            (WINDOW - 1, true),
            (WINDOW + 1, true),
            (WINDOW + 2, false),
            (WINDOW - 2, false),
        ] {
            let got = r.handle(&d, from("192.168.1.20:1"), now, w, &[key(1)]);
            assert_eq!(
                matches!(got, Outcome::Found { .. }),
                ok,
                "receiver window {w}: {got:?}"
            );
            if !ok {
                assert_eq!(got, Outcome::OtherWindow);
            }
        }
    }

    #[test]
    fn spoofed_addresses_and_tags_match_nothing() {
        let mut r = Receiver::new(me(), false, Instant::now());
        let mut d = announcement(&["192.168.1.20"], &[key(1)]);
        // A stranger swaps in its victim's address, keeping the tags.
        d[49..53].copy_from_slice(&[192, 168, 1, 99]);
        let got = r.handle(
            &d,
            from("192.168.1.50:1"),
            Instant::now(),
            WINDOW,
            &[key(1)],
        );
        assert_eq!(got, Outcome::NoFolderOfOurs);
        // A stranger claims our folder with random tag bytes.
        let mut forged = announcement(&["192.168.1.20"], &[key(3)]);
        let n = forged.len();
        forged[n - 16..].copy_from_slice(&[0xab; 16]);
        let got = r.handle(
            &forged,
            from("192.168.1.50:1"),
            Instant::now(),
            WINDOW,
            &[key(3)],
        );
        assert_eq!(got, Outcome::NoFolderOfOurs);
    }

    #[test]
    fn malformed_datagrams_are_dropped() {
        let mut r = Receiver::new(me(), false, Instant::now());
        let now = Instant::now();
        for (i, junk) in [&b""[..], b"MSLA", b"GET / HTTP/1.1\r\n", &[0xff; 1500]]
            .into_iter()
            .enumerate()
        {
            let src = SocketAddr::from(([10, 0, 0, i as u8 + 1], 1));
            assert!(
                matches!(
                    r.handle(junk, src, now, WINDOW, &[key(1)]),
                    Outcome::Malformed(_)
                ),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn loopback_addresses_count_only_from_loopback() {
        let mut r = Receiver::new(me(), false, Instant::now());
        let d = announcement(&["127.0.0.1", "192.168.1.20"], &[key(1)]);
        let got = r.handle(&d, from("10.9.9.9:1"), Instant::now(), WINDOW, &[key(1)]);
        assert_eq!(
            got,
            Outcome::Found {
                device: them(),
                addrs: vec![from("10.9.9.9:22000"), from("192.168.1.20:22000")],
            }
        );
        let got = r.handle(&d, from("127.0.0.1:1"), Instant::now(), WINDOW, &[key(1)]);
        assert_eq!(
            got,
            Outcome::Found {
                device: them(),
                addrs: vec![from("127.0.0.1:22000")],
            }
        );
    }

    #[test]
    fn ipv6_only_when_the_transport_dials_it() {
        let d = announcement(&["fd00::20", "192.168.1.20"], &[key(1)]);
        let mut v4_only = Receiver::new(me(), false, Instant::now());
        let got = v4_only.handle(&d, from("[fe80::1%3]:1"), Instant::now(), WINDOW, &[key(1)]);
        assert_eq!(
            got,
            Outcome::Found {
                device: them(),
                addrs: vec![from("192.168.1.20:22000")],
            }
        );
        let mut dual = Receiver::new(me(), true, Instant::now());
        let got = dual.handle(&d, from("[fe80::1%3]:1"), Instant::now(), WINDOW, &[key(1)]);
        assert_eq!(
            got,
            Outcome::Found {
                device: them(),
                addrs: vec![
                    from("[fe80::1%3]:22000"),
                    from("[fd00::20]:22000"),
                    from("192.168.1.20:22000"),
                ],
            },
            "the link-local source keeps its scope"
        );
    }

    #[test]
    fn a_flood_from_one_source_is_cut_to_its_bucket() {
        let t0 = Instant::now();
        let mut r = Receiver::new(me(), false, t0);
        let d = announcement(&["192.168.1.20"], &[key(1)]);
        let src = from("192.168.1.20:1");
        let found = (0..1000)
            .filter(|_| {
                matches!(
                    r.handle(&d, src, t0, WINDOW, &[key(1)]),
                    Outcome::Found { .. }
                )
            })
            .count();
        assert_eq!(found, SOURCE_BURST as usize);
        // Another source is not starved by the first.
        let other = r.handle(&d, from("192.168.1.21:1"), t0, WINDOW, &[key(1)]);
        assert!(matches!(other, Outcome::Found { .. }));
        // Tokens come back with time.
        let later = t0 + Duration::from_secs(3);
        let found = (0..100)
            .filter(|_| {
                matches!(
                    r.handle(&d, src, later, WINDOW, &[key(1)]),
                    Outcome::Found { .. }
                )
            })
            .count();
        assert_eq!(found, 3);
    }

    #[test]
    fn a_flood_from_forged_sources_is_bounded() {
        let t0 = Instant::now();
        let mut r = Receiver::new(me(), false, t0);
        let d = announcement(&["192.168.1.20"], &[key(1)]);
        let mut admitted = 0;
        for i in 0..20_000u32 {
            let ip = Ipv4Addr::from(0x0a00_0000 + i);
            if r.handle(&d, SocketAddr::from((ip, 1)), t0, WINDOW, &[key(1)])
                != Outcome::RateLimited
            {
                admitted += 1;
            }
        }
        assert_eq!(admitted, GLOBAL_BURST as usize, "the global bucket holds");
        assert!(r.sources.len() <= MAX_SOURCES, "state is bounded");
        // Once every bucket has refilled, old sources make room for new ones.
        let later = t0 + Duration::from_secs(60);
        let got = r.handle(&d, from("172.16.0.1:1"), later, WINDOW, &[key(1)]);
        assert!(matches!(got, Outcome::Found { .. }), "{got:?}");
        assert!(r.sources.len() <= MAX_SOURCES);
    }

    fn iface(name: &str, index: u32, ip: &str, loopback: bool) -> InterfaceAddr {
        InterfaceAddr {
            name: name.into(),
            index,
            ip: ip.parse().unwrap(),
            broadcast: None,
            up: true,
            loopback,
            multicast: !loopback,
        }
    }

    #[test]
    fn announced_addresses_follow_the_listener() {
        let ifaces = vec![
            iface("lo", 1, "127.0.0.1", true),
            iface("lo", 1, "::1", true),
            iface("eth0", 2, "192.168.1.20", false),
            iface("eth0", 2, "fe80::20", false),
            iface("eth0", 2, "fd00::20", false),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            announced_addresses(from("0.0.0.0:22000"), &ifaces),
            vec![ip("192.168.1.20")]
        );
        assert_eq!(
            announced_addresses(from("[::]:22000"), &ifaces),
            vec![ip("192.168.1.20"), ip("fd00::20")]
        );
        assert_eq!(
            announced_addresses(from("127.0.0.1:22000"), &ifaces),
            vec![ip("127.0.0.1")]
        );
        let m: Vec<(u32, bool)> = multicast_interfaces(&ifaces)
            .iter()
            .map(|i| (i.index, i.ip.is_ipv6()))
            .collect();
        assert_eq!(
            m,
            vec![(2, false), (2, true)],
            "one per family, loopback not multicast"
        );
    }

    #[test]
    fn jitter_stays_within_a_tenth() {
        for _ in 0..100 {
            let j = jittered(ANNOUNCE_EVERY);
            assert!(
                j >= Duration::from_secs(27) && j <= Duration::from_secs(33),
                "{j:?}"
            );
        }
    }
}
