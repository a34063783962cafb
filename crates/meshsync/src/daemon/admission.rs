//! Admission of incoming peer connections: bounds on connections that share
//! no folder yet.
//!
//! Sharing is by key, not by a list of devices, so any device may connect
//! and say hello; until it opens a folder with a valid access proof it is a
//! stranger. A stranger's connection is cheap (the protocol holds it to 64
//! KiB frames and 1024 refused offers), but its number was unbounded. Here:
//! - at most [`PER_ADDRESS`] incoming connections without an open folder
//!   from one address (a [`SourceKey`]: an IPv6 address counts by its /64
//!   prefix, what one host usually holds): the next one from there is
//!   closed before it is registered as a peer, so it displaces nobody;
//! - at most [`TOTAL`] from everywhere: past that, a newcomer is let in and
//!   the oldest stranger of the address holding the most places is closed.
//!   Refusing newcomers instead would let a few addresses lock every real
//!   peer out;
//! - a connection leaves the count once a folder opens on it (a real peer
//!   does so within a round trip of its hello), or when it closes.
//!
//! The hello timeout that reaps a silent stranger is the connection driver's
//! (peer.rs, `device.hello_timeout_secs`). A stranger that says hello and
//! opens nothing keeps its place until it leaves, is evicted, or its address
//! reaches the bound. Connections this device dialled are never counted: it
//! chose them. Relayed connections arrive from the local end of their
//! tunnel, so they share that address's places.
//!
//! This module must never refuse or evict a connection for any reason but
//! these bounds, nor hold a place after its connection is gone.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use meshsync_net::ratelimit::SourceKey;

/// Incoming connections without an open folder, per address.
pub const PER_ADDRESS: usize = 16;
/// Incoming connections without an open folder, in all.
pub const TOTAL: usize = 256;

/// Why a connection was refused.
pub const REFUSED: &str = "too many connections without a shared folder from this address";
/// Why a stranger was closed to make room.
pub const EVICTED: &str = "too many connections without a shared folder: the oldest goes";

/// Closes an evicted stranger's connection.
type Evict = Box<dyn FnOnce() + Send>;

/// The places of connections without an open folder.
#[derive(Default)]
pub struct Admission {
    held: Mutex<Places>,
}

#[derive(Default)]
struct Places {
    /// By admission order (ids only grow).
    by_id: HashMap<u64, (SourceKey, Evict)>,
    by_source: HashMap<SourceKey, usize>,
    next_id: u64,
}

impl Places {
    /// Frees place `id`; its closer, if it was still held.
    fn free(&mut self, id: u64) -> Option<Evict> {
        let (source, evict) = self.by_id.remove(&id)?;
        if let Some(n) = self.by_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&source);
            }
        }
        Some(evict)
    }

    /// The oldest place of the address that holds the most (of equally
    /// crowded addresses, the oldest place of all).
    fn eviction_candidate(&self) -> Option<u64> {
        self.by_id
            .iter()
            .max_by_key(|(id, (source, _))| {
                let held = self.by_source.get(source).copied().unwrap_or(0);
                (held, std::cmp::Reverse(**id))
            })
            .map(|(id, _)| *id)
    }
}

impl Admission {
    /// Counts an incoming connection from `addr` as a stranger until the
    /// returned place is dropped. Refused when its address holds
    /// [`PER_ADDRESS`] places; when [`TOTAL`] are held, another stranger is
    /// evicted (`evict` is what closes this one if its turn comes).
    pub fn admit(
        self: &Arc<Self>,
        addr: SocketAddr,
        evict: impl FnOnce() + Send + 'static,
    ) -> Option<StrangerPlace> {
        self.admit_within(addr, Box::new(evict), PER_ADDRESS, TOTAL)
    }

    fn admit_within(
        self: &Arc<Self>,
        addr: SocketAddr,
        evict: Evict,
        per_address: usize,
        total: usize,
    ) -> Option<StrangerPlace> {
        let source = SourceKey::of(addr.ip());
        let (evicted, id) = {
            let mut places = self.held.lock().expect("poisoned");
            if places.by_source.get(&source).copied().unwrap_or(0) >= per_address {
                return None;
            }
            let evicted = if places.by_id.len() >= total {
                places.eviction_candidate().and_then(|id| places.free(id))
            } else {
                None
            };
            let id = places.next_id;
            places.next_id += 1;
            places.by_id.insert(id, (source, evict));
            *places.by_source.entry(source).or_default() += 1;
            (evicted, id)
        };
        // Closed outside the lock: a closer holds a connection handle.
        if let Some(close) = evicted {
            close();
        }
        Some(StrangerPlace {
            admission: Arc::clone(self),
            id,
        })
    }

    /// Strangers counted now (all addresses).
    pub fn strangers(&self) -> usize {
        self.held.lock().expect("poisoned").by_id.len()
    }
}

/// A stranger's place in the counts; dropping it (a folder opened, or the
/// connection ended) frees the place.
pub struct StrangerPlace {
    admission: Arc<Admission>,
    id: u64,
}

impl Drop for StrangerPlace {
    fn drop(&mut self) {
        let freed = self.admission.held.lock().expect("poisoned").free(self.id);
        // (Dropped outside the lock: a closer holds a connection handle.)
        drop(freed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Admits with bounds 2 per address and 3 in all; the flag says whether
    /// the place was evicted.
    fn admit(admission: &Arc<Admission>, addr: &str) -> Option<(StrangerPlace, Arc<AtomicBool>)> {
        let flag = Arc::new(AtomicBool::new(false));
        let set = Arc::clone(&flag);
        admission
            .admit_within(
                at(addr),
                Box::new(move || set.store(true, Ordering::SeqCst)),
                2,
                3,
            )
            .map(|p| (p, flag))
    }

    #[test]
    fn an_address_is_bounded_and_a_full_house_evicts_the_most_crowded_addresses_oldest() {
        let admission = Arc::new(Admission::default());
        let (a1, a1_evicted) = admit(&admission, "192.0.2.1:1").unwrap();
        let (_a2, a2_evicted) = admit(&admission, "192.0.2.1:2").unwrap();
        assert!(
            admit(&admission, "192.0.2.1:3").is_none(),
            "third from one address"
        );
        let (_b1, b1_evicted) = admit(&admission, "192.0.2.2:1").unwrap();
        assert_eq!(admission.strangers(), 3);
        // Full: a newcomer gets in, and 192.0.2.1 (two places) loses its
        // oldest.
        let (_c1, _) = admit(&admission, "192.0.2.3:1").unwrap();
        assert!(a1_evicted.load(Ordering::SeqCst));
        assert!(!a2_evicted.load(Ordering::SeqCst) && !b1_evicted.load(Ordering::SeqCst));
        assert_eq!(admission.strangers(), 3);
        // The evicted connection's place is gone already: dropping it later
        // frees nothing twice.
        drop(a1);
        assert_eq!(admission.strangers(), 3);
        // 192.0.2.1 holds one place now, so it may take another; all hold
        // one, so the oldest of all (its own) goes.
        let (_a3, _) = admit(&admission, "[::ffff:192.0.2.1]:4").unwrap();
        assert!(a2_evicted.load(Ordering::SeqCst));
        assert!(!b1_evicted.load(Ordering::SeqCst));
        assert_eq!(admission.held.lock().unwrap().by_source.len(), 3);
    }

    #[test]
    fn places_come_back_when_dropped() {
        let admission = Arc::new(Admission::default());
        let (a1, _) = admit(&admission, "192.0.2.1:1").unwrap();
        let (_a2, _) = admit(&admission, "192.0.2.1:2").unwrap();
        assert!(admit(&admission, "192.0.2.1:3").is_none());
        drop(a1);
        assert!(admit(&admission, "192.0.2.1:3").is_some());
    }
}
