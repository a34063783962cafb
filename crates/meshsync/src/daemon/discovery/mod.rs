//! Finding peers: the address book every discovery method feeds, and the
//! dialer that connects to what it holds.
//!
//! A discovery method (static addresses from the config, LAN announcements,
//! trackers, the DHT, peer exchange, relays) only ever *offers* a
//! [`Candidate`] — an address, maybe the device expected there, how it was
//! found and what kind of path it is — to the [`AddressBook`]. The dialer
//! connects to the candidates that are due (new ones at once, failed ones
//! with exponential back-off), LAN candidates first.
//!
//! Nothing found here is trusted: every connection still has to pass the
//! TLS handshake (the peer pinned to its device id when one is known) and,
//! per folder, the access proof before the sync engine sees it. A method
//! that lies can waste a dial, never reach a folder.
//!
//! The book is bounded ([`MAX_CANDIDATES`]); candidates not offered again
//! within [`CANDIDATE_TTL`] are forgotten, so a flood of spoofed
//! announcements costs memory only up to the bound and only for a while.

pub mod dht;
pub mod interfaces;
pub mod lan;
pub mod pex;
pub mod relay_tunnel;
pub mod tracker;
pub mod upnp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use meshsync_core::ids::DeviceId;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// How a peer was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Found {
    /// A LAN announcement (multicast or broadcast).
    Lan,
    /// A static address in the config.
    Static,
    /// Peer exchange: a connected peer told us.
    Pex,
    /// A tracker's answer.
    Tracker,
    /// The mainline DHT.
    Dht,
    /// It connected to us (how it found us is its business).
    Incoming,
}

impl Found {
    /// The name shown in `status` (`via`).
    pub fn as_str(self) -> &'static str {
        match self {
            Found::Lan => "lan",
            Found::Static => "static",
            Found::Pex => "pex",
            Found::Tracker => "tracker",
            Found::Dht => "dht",
            Found::Incoming => "incoming",
        }
    }
}

/// What kind of network path a connection runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    /// Straight to the peer's address.
    Direct,
    /// Through both NATs, opened by simultaneous sends a tracker timed.
    HolePunched,
    /// Through a relay, which forwards the (end-to-end encrypted) bytes.
    Relayed,
}

impl PathKind {
    /// The name shown in `status` (`path`).
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::HolePunched => "hole-punched",
            PathKind::Relayed => "relayed",
        }
    }
}

/// An address worth dialling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Where to dial.
    pub addr: SocketAddr,
    /// The device expected there, when the method knows it (the handshake
    /// then refuses anyone else before this device's certificate is sent).
    pub device: Option<DeviceId>,
    /// How it was found.
    pub found: Found,
    /// The kind of path dialling it gives.
    pub path: PathKind,
}

/// At most this many candidates are held.
pub const MAX_CANDIDATES: usize = 1024;
/// A candidate not offered again for this long is forgotten.
pub const CANDIDATE_TTL: Duration = Duration::from_secs(15 * 60);
/// The first retry after a failed dial; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// The longest wait between dials of one candidate.
pub const MAX_BACKOFF: Duration = Duration::from_secs(120);

struct Entry {
    candidate: Candidate,
    last_offered: Instant,
    next_dial: Instant,
    failures: u32,
}

/// Every address discovery has found, and when each may be dialled next.
#[derive(Default)]
pub struct AddressBook {
    entries: Mutex<HashMap<SocketAddr, Entry>>,
    /// Addresses of this device as others may see them (a router's mapped
    /// port, a tracker's reflexive address), by who reported them.
    own: Mutex<HashMap<&'static str, Vec<SocketAddr>>>,
    /// Signalled when a new candidate arrives.
    pub changed: Notify,
}

impl AddressBook {
    /// Offers a candidate. A new address is due at once; an address known
    /// already is kept alive, and a better-known device or a more direct
    /// finding method replaces what was recorded.
    pub fn offer(&self, candidate: Candidate) {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("poisoned");
        if let Some(e) = entries.get_mut(&candidate.addr) {
            e.last_offered = now;
            if e.candidate.device.is_none() && candidate.device.is_some() {
                e.candidate.device = candidate.device;
            }
            if candidate.found < e.candidate.found {
                e.candidate.found = candidate.found;
            }
            // A punch through to a known address is what its path is now.
            if candidate.path == PathKind::HolePunched {
                e.candidate.path = candidate.path;
            }
            return;
        }
        if entries.len() >= MAX_CANDIDATES {
            entries.retain(|_, e| now.duration_since(e.last_offered) < CANDIDATE_TTL);
            if entries.len() >= MAX_CANDIDATES {
                tracing::debug!("address book full; dropping {}", candidate.addr);
                return;
            }
        }
        entries.insert(
            candidate.addr,
            Entry {
                candidate,
                last_offered: now,
                next_dial: now,
                failures: 0,
            },
        );
        drop(entries);
        self.changed.notify_one();
    }

    /// Candidates due for a dial now, LAN ones first; each is pushed back by
    /// the current back-off so it is not dialled twice at once.
    pub fn due(&self) -> Vec<Candidate> {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("poisoned");
        entries.retain(|_, e| now.duration_since(e.last_offered) < CANDIDATE_TTL);
        let mut out: Vec<Candidate> = Vec::new();
        for e in entries.values_mut() {
            if e.next_dial <= now {
                e.next_dial = now + backoff(e.failures);
                out.push(e.candidate);
            }
        }
        out.sort_by_key(|c| (c.found, c.addr));
        out
    }

    /// Records the outcome of a dial: success clears the back-off, failure
    /// doubles it.
    pub fn dialled(&self, addr: SocketAddr, ok: bool) {
        let mut entries = self.entries.lock().expect("poisoned");
        if let Some(e) = entries.get_mut(&addr) {
            if ok {
                e.failures = 0;
            } else {
                e.failures = e.failures.saturating_add(1);
                e.next_dial = Instant::now() + backoff(e.failures);
            }
        }
    }

    /// Forgets `addr` (a relay tunnel that closed).
    pub fn forget(&self, addr: &SocketAddr) {
        self.entries.lock().expect("poisoned").remove(addr);
    }

    /// What the book knows of the peer at `addr` (how an incoming
    /// connection was found and what path it took).
    pub fn get(&self, addr: &SocketAddr) -> Option<Candidate> {
        self.entries
            .lock()
            .expect("poisoned")
            .get(addr)
            .map(|e| e.candidate)
    }

    /// Every candidate held (for status and tests).
    pub fn all(&self) -> Vec<Candidate> {
        let mut out: Vec<Candidate> = self
            .entries
            .lock()
            .expect("poisoned")
            .values()
            .map(|e| e.candidate)
            .collect();
        out.sort_by_key(|c| (c.found, c.addr));
        out
    }

    /// Records this device's addresses as `source` sees them (replacing
    /// what `source` said before).
    pub fn set_own(&self, source: &'static str, addrs: Vec<SocketAddr>) {
        self.own.lock().expect("poisoned").insert(source, addrs);
    }

    /// What `source` reported of this device's addresses.
    pub fn own_from(&self, source: &str) -> Vec<SocketAddr> {
        self.own
            .lock()
            .expect("poisoned")
            .get(source)
            .cloned()
            .unwrap_or_default()
    }

    /// This device's addresses as others may see them, from every source.
    pub fn own(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = self
            .own
            .lock()
            .expect("poisoned")
            .values()
            .flatten()
            .copied()
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return FIRST_BACKOFF;
    }
    FIRST_BACKOFF
        .saturating_mul(1u32 << failures.min(16))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(port: u16, found: Found) -> Candidate {
        Candidate {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            device: None,
            found,
            path: PathKind::Direct,
        }
    }

    #[test]
    fn new_candidates_are_due_once_then_back_off() {
        let book = AddressBook::default();
        book.offer(cand(2, Found::Tracker));
        book.offer(cand(1, Found::Lan));
        let due = book.due();
        assert_eq!(due.len(), 2);
        assert_eq!(due[0].found, Found::Lan, "LAN first");
        assert!(book.due().is_empty(), "not dialled twice at once");
        book.dialled(due[0].addr, false);
        assert!(book.due().is_empty(), "a failed dial waits");
    }

    #[test]
    fn reoffering_keeps_the_best_method_and_learns_the_device() {
        let book = AddressBook::default();
        book.offer(cand(1, Found::Dht));
        let mut c = cand(1, Found::Lan);
        c.device = Some(DeviceId::from_public_key(&[7; 32]));
        book.offer(c);
        let got = book.get(&c.addr).unwrap();
        assert_eq!(got.found, Found::Lan);
        assert_eq!(got.device, c.device);
        assert_eq!(book.all().len(), 1);
    }

    #[test]
    fn the_book_is_bounded() {
        let book = AddressBook::default();
        for port in 0..(MAX_CANDIDATES as u16 + 50) {
            book.offer(cand(port, Found::Lan));
        }
        assert_eq!(book.all().len(), MAX_CANDIDATES);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(0), FIRST_BACKOFF);
        assert_eq!(backoff(1), FIRST_BACKOFF * 2);
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}
