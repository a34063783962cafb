//! Peer exchange: connected peers of a folder tell each other where the
//! folder's other peers are, so a device that knows one peer soon knows all
//! of them (and connects to each directly).
//!
//! **Sending** ([`Exchange::list_due`]): on a connection that negotiated
//! protocol version 2, for every folder open on it, this device sends a
//! `Peers` message (`docs/protocol.md`) listing the *other* devices it is
//! connected to with that folder open: each with the address of its
//! connection (when it is direct) and the direct addresses the address book
//! holds for it. The list goes out when the folder opens, whenever it
//! changes (checked every [`CHECK_EVERY`]) and at least every
//! [`RESEND_EVERY`], so the receiver's address book (which forgets what is
//! not offered again) keeps it. Only devices that proved they hold the
//! folder on their own connection are listed, so a peer learns nothing
//! about who holds other folders.
//!
//! **Scope.** An address is sent only if the receiver could reach it:
//! its scope must be at least as wide as that of the receiver's own
//! connection ([`reachable_from`]; loopback < link-local < private <
//! global). A peer on this machine hears loopback, LAN and public
//! addresses; a peer on the LAN, LAN and public ones; a peer over the
//! internet, public ones only (private addresses would be useless to it and
//! tell it about our network). Link-local addresses are never sent: they
//! need a scope the wire does not carry. The receiver applies the same rule
//! to what it hears.
//!
//! **Receiving** ([`Exchange::received`]): only with `discovery.pex` on,
//! only for folders open on that connection, at most
//! [`RECEIVE_BURST`] lists and then one every [`RECEIVE_EVERY`] per
//! connection; each address is offered to the address book as a
//! [`Found::Pex`] candidate pinned to the listed device. A lying peer can
//! only cost dials: the TLS handshake fails against any other device, and a
//! listed device still has to prove it holds the folder.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use meshsync_core::ids::{DeviceId, ShareId};
use meshsync_proto::Connection;
use meshsync_proto::lan::usable;
use meshsync_proto::limits::{MAX_PEX_ADDRESSES, MAX_PEX_PEERS};
use meshsync_proto::message::PeerAddresses;

use super::{Candidate, Found, PathKind};
use crate::daemon::Daemon;
use crate::daemon::peer::PeerLink;

/// How often a connection checks whether its peer lists changed.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// A folder's list is sent again after this long even if unchanged (well
/// within the address book's 15-minute memory).
pub const RESEND_EVERY: Duration = Duration::from_secs(60);
/// Lists a peer may send in a burst.
pub const RECEIVE_BURST: u32 = 32;
/// ... and then one per this long.
pub const RECEIVE_EVERY: Duration = Duration::from_secs(2);

/// How far an address reaches, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// This machine.
    Loopback,
    /// One link (169.254/16, fe80::/10).
    LinkLocal,
    /// A private network (RFC 1918, 100.64/10, fc00::/7).
    Private,
    /// Everywhere.
    Global,
}

/// The scope of `ip` (an IPv4-mapped IPv6 address as its IPv4 address).
pub fn scope(ip: IpAddr) -> Scope {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let shared = v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64;
            if v4.is_loopback() {
                Scope::Loopback
            } else if v4.is_link_local() {
                Scope::LinkLocal
            } else if v4.is_private() || shared {
                Scope::Private
            } else {
                Scope::Global
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                Scope::Loopback
            } else if v6.is_unicast_link_local() {
                Scope::LinkLocal
            } else if v6.is_unique_local() {
                Scope::Private
            } else {
                Scope::Global
            }
        }
    }
}

/// Whether a peer whose packets come from `remote` can reach `addr`: not
/// link-local (no scope on the wire), and at least as wide in scope as
/// `remote`.
pub fn reachable_from(addr: IpAddr, remote: IpAddr) -> bool {
    let s = scope(addr);
    s != Scope::LinkLocal && s >= scope(remote)
}

/// Whether `addr` may be put in a peer list for a peer at `remote`.
fn shareable(addr: &SocketAddr, remote: IpAddr) -> bool {
    addr.port() != 0 && usable(addr.ip()) && reachable_from(addr.ip(), remote)
}

/// The list for a peer `to` at `remote`: every other device in `others`
/// (device, the addresses known for it) with its shareable addresses (at
/// most [`MAX_PEX_ADDRESSES`], deduplicated, in the order given), devices
/// without one left out; sorted by device, at most [`MAX_PEX_PEERS`].
pub fn select(
    to: DeviceId,
    remote: IpAddr,
    others: Vec<(DeviceId, Vec<SocketAddr>)>,
) -> Vec<PeerAddresses> {
    let mut out: Vec<PeerAddresses> = Vec::new();
    for (device, addrs) in others {
        if device == to || out.iter().any(|p| p.device == device) {
            continue;
        }
        let mut addresses: Vec<SocketAddr> = Vec::new();
        for a in addrs {
            let a = SocketAddr::new(a.ip().to_canonical(), a.port());
            if shareable(&a, remote) && !addresses.contains(&a) {
                addresses.push(a);
            }
        }
        addresses.truncate(MAX_PEX_ADDRESSES);
        if !addresses.is_empty() {
            out.push(PeerAddresses { device, addresses });
        }
    }
    out.sort_by_key(|p| p.device);
    out.truncate(MAX_PEX_PEERS);
    out
}

/// The candidates to offer for a list heard from a peer at `remote`: every
/// shareable address of every listed device but `me`, pinned to the device;
/// IPv6 ones only if the transport dials IPv6 (`v6`).
pub fn candidates(
    me: DeviceId,
    remote: IpAddr,
    v6: bool,
    peers: &[PeerAddresses],
) -> Vec<Candidate> {
    peers
        .iter()
        .filter(|p| p.device != me)
        .flat_map(|p| {
            p.addresses
                .iter()
                .filter(|a| shareable(a, remote) && (v6 || a.is_ipv4()))
                .map(|&addr| Candidate {
                    addr,
                    device: Some(p.device),
                    found: Found::Pex,
                    path: PathKind::Direct,
                })
        })
        .collect()
}

/// Peer exchange on one connection: what was sent, and the budget for
/// what is received.
pub struct Exchange {
    /// Per folder: the list last sent, and when.
    sent: HashMap<ShareId, (Vec<PeerAddresses>, Instant)>,
    checked: Option<Instant>,
    /// Lists that may still be received now.
    budget: u32,
    refilled: Instant,
}

impl Exchange {
    /// A new connection's exchange.
    pub fn new(now: Instant) -> Self {
        Exchange {
            sent: HashMap::new(),
            checked: None,
            budget: RECEIVE_BURST,
            refilled: now,
        }
    }

    /// Sends each open folder's list to the peer of `link` if it changed or
    /// is due again (at most once per [`CHECK_EVERY`]). Nothing when peer
    /// exchange is off or the connection's version lacks it.
    pub fn send_due(
        &mut self,
        daemon: &Daemon,
        link: &PeerLink,
        proto: &mut Connection,
        now: Instant,
    ) {
        if self
            .checked
            .is_some_and(|t| now.duration_since(t) < CHECK_EVERY)
        {
            return;
        }
        self.checked = Some(now);
        if !proto.has_peer_exchange() || !daemon.config.lock().expect("poisoned").discovery.pex {
            return;
        }
        let open = link.open_folders();
        self.sent.retain(|share, _| open.contains(share));
        for share in open {
            let list = peers_for(daemon, &share, link);
            let Some(list) = self.list_due(share, list, now) else {
                continue;
            };
            if let Err(e) = proto.send_peers(share, list) {
                tracing::debug!("peer exchange with {} for {share}: {e}", link.device);
            }
        }
    }

    /// Whether `list` should go out for `share` now: it differs from what
    /// was sent, or that is [`RESEND_EVERY`] old. Records it as sent.
    pub fn list_due(
        &mut self,
        share: ShareId,
        list: Vec<PeerAddresses>,
        now: Instant,
    ) -> Option<Vec<PeerAddresses>> {
        let due = match self.sent.get(&share) {
            None => true,
            Some((last, at)) => *last != list || now.duration_since(*at) >= RESEND_EVERY,
        };
        if !due {
            return None;
        }
        self.sent.insert(share, (list.clone(), now));
        Some(list)
    }

    /// Charges one received list to the connection's budget.
    pub fn admit(&mut self, now: Instant) -> bool {
        let earned = now.duration_since(self.refilled).as_millis() / RECEIVE_EVERY.as_millis();
        if earned > 0 {
            self.budget = RECEIVE_BURST.min(self.budget.saturating_add(earned as u32));
            self.refilled = now;
        }
        if self.budget == 0 {
            return false;
        }
        self.budget -= 1;
        true
    }

    /// Offers what the peer of `link` told about `share` to the address
    /// book (see the module docs for when it does not).
    pub fn received(
        &mut self,
        daemon: &Daemon,
        link: &PeerLink,
        share: ShareId,
        peers: Vec<PeerAddresses>,
        now: Instant,
    ) {
        if !daemon.config.lock().expect("poisoned").discovery.pex {
            return;
        }
        if !link.folders.lock().expect("poisoned").contains(&share) {
            return;
        }
        if !self.admit(now) {
            tracing::debug!(
                "peer exchange: {} sends lists too often; dropped",
                link.device
            );
            return;
        }
        let remote = link.conn.connection.remote_address().ip();
        let v6 = daemon
            .transport
            .get()
            .is_some_and(|t| t.local_addr().is_ipv6());
        for c in candidates(daemon.device_id, remote, v6, &peers) {
            daemon.book.offer(c);
        }
    }
}

/// The other connected devices with `share` open, and their direct
/// addresses, as the list for the peer of `to`.
fn peers_for(daemon: &Daemon, share: &ShareId, to: &PeerLink) -> Vec<PeerAddresses> {
    use crate::daemon::pull::ChunkSource;
    let book = daemon.book.all();
    let mut others: Vec<(DeviceId, Vec<SocketAddr>)> = Vec::new();
    for device in daemon.peers.connected() {
        let Some(link) = daemon.peers.get(&device) else {
            continue;
        };
        if device == to.device || !link.folders.lock().expect("poisoned").contains(share) {
            continue;
        }
        let mut addrs = Vec::new();
        if link.path == PathKind::Direct {
            addrs.push(link.conn.connection.remote_address());
        }
        addrs.extend(
            book.iter()
                .filter(|c| c.device == Some(device) && c.path == PathKind::Direct)
                .map(|c| c.addr),
        );
        others.push((device, addrs));
    }
    select(to.device, to.conn.connection.remote_address().ip(), others)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(b: u8) -> DeviceId {
        DeviceId::from_bytes([b; 32])
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn scopes() {
        assert_eq!(scope(ip("127.0.0.1")), Scope::Loopback);
        assert_eq!(scope(ip("::1")), Scope::Loopback);
        assert_eq!(scope(ip("::ffff:127.0.0.1")), Scope::Loopback);
        assert_eq!(scope(ip("169.254.1.1")), Scope::LinkLocal);
        assert_eq!(scope(ip("fe80::1")), Scope::LinkLocal);
        for p in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::1",
        ] {
            assert_eq!(scope(ip(p)), Scope::Private, "{p}");
        }
        for g in ["8.8.8.8", "100.128.0.1", "2001:db8::1", "::ffff:1.1.1.1"] {
            assert_eq!(scope(ip(g)), Scope::Global, "{g}");
        }
    }

    #[test]
    fn only_addresses_the_peer_can_reach_are_shared() {
        let others = || {
            vec![(
                dev(3),
                vec![
                    a("127.0.0.1:1"),
                    a("192.168.1.3:22000"),
                    a("203.0.113.3:22000"),
                    a("[fe80::3]:22000"),
                ],
            )]
        };
        let to = dev(2);
        let addrs = |remote: &str| -> Vec<SocketAddr> {
            select(to, ip(remote), others())
                .pop()
                .map(|p| p.addresses)
                .unwrap_or_default()
        };
        assert_eq!(
            addrs("127.0.0.1"),
            vec![
                a("127.0.0.1:1"),
                a("192.168.1.3:22000"),
                a("203.0.113.3:22000")
            ]
        );
        assert_eq!(
            addrs("192.168.1.2"),
            vec![a("192.168.1.3:22000"), a("203.0.113.3:22000")]
        );
        assert_eq!(addrs("198.51.100.2"), vec![a("203.0.113.3:22000")]);
    }

    #[test]
    fn the_receiver_itself_and_empty_entries_are_left_out() {
        let list = select(
            dev(2),
            ip("192.168.1.2"),
            vec![
                (dev(2), vec![a("192.168.1.2:22000")]),
                (dev(5), vec![a("127.0.0.1:9")]),
                (
                    dev(4),
                    vec![
                        a("192.168.1.4:22000"),
                        a("192.168.1.4:22000"),
                        a("0.0.0.0:1"),
                    ],
                ),
                (dev(3), vec![a("[::ffff:192.168.1.3]:22000")]),
            ],
        );
        assert_eq!(
            list,
            vec![
                PeerAddresses {
                    device: dev(3),
                    addresses: vec![a("192.168.1.3:22000")],
                },
                PeerAddresses {
                    device: dev(4),
                    addresses: vec![a("192.168.1.4:22000")],
                },
            ]
        );
    }

    #[test]
    fn lists_are_bounded() {
        let others: Vec<(DeviceId, Vec<SocketAddr>)> = (0..100u8)
            .map(|d| {
                let addrs = (1..30u16)
                    .map(|p| SocketAddr::from(([10, 0, 0, d], p)))
                    .collect();
                (dev(d + 10), addrs)
            })
            .collect();
        let list = select(dev(1), ip("10.0.0.1"), others);
        assert_eq!(list.len(), MAX_PEX_PEERS);
        assert!(list.iter().all(|p| p.addresses.len() == MAX_PEX_ADDRESSES));
    }

    #[test]
    fn received_lists_offer_reachable_addresses_pinned_to_their_device() {
        let peers = vec![
            PeerAddresses {
                device: dev(1),
                addresses: vec![a("192.168.1.1:1")],
            },
            PeerAddresses {
                device: dev(3),
                addresses: vec![a("127.0.0.1:7"), a("192.168.1.3:7"), a("[fd00::3]:7")],
            },
        ];
        let got = candidates(dev(1), ip("192.168.1.2"), false, &peers);
        assert_eq!(
            got,
            vec![Candidate {
                addr: a("192.168.1.3:7"),
                device: Some(dev(3)),
                found: Found::Pex,
                path: PathKind::Direct,
            }],
            "not ourselves, no loopback from a LAN peer, no IPv6 without an IPv6 transport"
        );
        assert_eq!(candidates(dev(1), ip("192.168.1.2"), true, &peers).len(), 2);
    }

    #[test]
    fn a_list_is_resent_when_it_changes_or_gets_old() {
        let t0 = Instant::now();
        let mut x = Exchange::new(t0);
        let share = ShareId::from_bytes([9; 32]);
        let list = vec![PeerAddresses {
            device: dev(3),
            addresses: vec![a("10.0.0.3:1")],
        }];
        assert!(x.list_due(share, list.clone(), t0).is_some(), "first time");
        assert!(
            x.list_due(share, list.clone(), t0 + CHECK_EVERY).is_none(),
            "unchanged"
        );
        assert!(
            x.list_due(share, Vec::new(), t0 + CHECK_EVERY).is_some(),
            "changed"
        );
        assert!(
            x.list_due(share, Vec::new(), t0 + 2 * CHECK_EVERY)
                .is_none()
        );
        assert!(
            x.list_due(share, Vec::new(), t0 + CHECK_EVERY + RESEND_EVERY)
                .is_some(),
            "old"
        );
    }

    #[test]
    fn received_lists_are_rate_limited() {
        let t0 = Instant::now();
        let mut x = Exchange::new(t0);
        let admitted = (0..1000).filter(|_| x.admit(t0)).count();
        assert_eq!(admitted, RECEIVE_BURST as usize);
        let later = t0 + 3 * RECEIVE_EVERY;
        let admitted = (0..1000).filter(|_| x.admit(later)).count();
        assert_eq!(admitted, 3);
    }
}
