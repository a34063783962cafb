//! Admission of incoming peer connections: bounds on connections that share
//! no folder yet.
//!
//! Sharing is by key, not by a list of devices, so any device may connect
//! and say hello; until it opens a folder with a valid access proof it is a
//! stranger. A stranger's connection is cheap (the protocol holds it to 64
//! KiB frames and 1024 refused offers), but its number was unbounded. Here:
//! - at most [`PER_ADDRESS`] incoming connections without an open folder
//!   from one address (a [`SourceKey`]: an IPv6 address counts by its /64
//!   prefix, what one host usually holds), and at most [`TOTAL`] from
//!   everywhere;
//! - the connection that would go over either bound is closed before it is
//!   registered as a peer, so it displaces nobody;
//! - a connection leaves the count once a folder opens on it (a real peer
//!   does so within a round trip of its hello), or when it closes.
//!
//! The hello timeout that reaps a silent stranger is the connection driver's
//! (peer.rs, `device.hello_timeout_secs`). Connections this device dialled
//! are never counted: it chose them.
//!
//! This module must never refuse a connection for any reason but these
//! bounds, nor hold a count after its connection is gone.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use meshsync_net::ratelimit::SourceKey;

/// Incoming connections without an open folder, per address.
pub const PER_ADDRESS: usize = 16;
/// Incoming connections without an open folder, in all.
pub const TOTAL: usize = 256;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address holds [`PER_ADDRESS`] connections without a folder.
    Address,
    /// [`TOTAL`] connections without a folder are open.
    Total,
}

impl Refusal {
    /// The reason sent to the peer and logged.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Address => "too many connections without a shared folder from this address",
            Refusal::Total => "too many connections without a shared folder",
        }
    }
}

/// The counts of connections without an open folder.
#[derive(Debug)]
pub struct Admission {
    per_address: usize,
    total: usize,
    held: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    by_source: HashMap<SourceKey, usize>,
    total: usize,
}

impl Default for Admission {
    fn default() -> Self {
        Admission::with_bounds(PER_ADDRESS, TOTAL)
    }
}

impl Admission {
    /// Bounds other than the defaults (tests).
    pub fn with_bounds(per_address: usize, total: usize) -> Self {
        Admission {
            per_address,
            total,
            held: Mutex::default(),
        }
    }

    /// Counts an incoming connection from `addr` as a stranger until the
    /// returned place is dropped; refuses it if that would pass a bound.
    pub fn admit(self: &Arc<Self>, addr: SocketAddr) -> Result<StrangerPlace, Refusal> {
        let source = SourceKey::of(addr.ip());
        let mut held = self.held.lock().expect("poisoned");
        if held.total >= self.total {
            return Err(Refusal::Total);
        }
        let n = held.by_source.entry(source).or_default();
        if *n >= self.per_address {
            return Err(Refusal::Address);
        }
        *n += 1;
        held.total += 1;
        Ok(StrangerPlace {
            admission: Arc::clone(self),
            source,
        })
    }

    /// Strangers counted now (all addresses).
    pub fn strangers(&self) -> usize {
        self.held.lock().expect("poisoned").total
    }
}

/// A stranger's place in the counts; dropping it (a folder opened, or the
/// connection ended) frees the place.
#[derive(Debug)]
pub struct StrangerPlace {
    admission: Arc<Admission>,
    source: SourceKey,
}

impl Drop for StrangerPlace {
    fn drop(&mut self) {
        let mut held = self.admission.held.lock().expect("poisoned");
        held.total -= 1;
        if let Some(n) = held.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                held.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_address_and_the_whole_are_bounded_and_places_come_back() {
        let admission = Arc::new(Admission::with_bounds(2, 3));
        let a1 = admission.admit(at("192.0.2.1:1")).unwrap();
        let _a2 = admission.admit(at("192.0.2.1:2")).unwrap();
        assert_eq!(
            admission.admit(at("192.0.2.1:3")).unwrap_err(),
            Refusal::Address
        );
        let _b1 = admission.admit(at("192.0.2.2:1")).unwrap();
        assert_eq!(
            admission.admit(at("192.0.2.3:1")).unwrap_err(),
            Refusal::Total
        );
        assert_eq!(admission.strangers(), 3);
        drop(a1);
        assert_eq!(admission.strangers(), 2);
        let _a3 = admission.admit(at("192.0.2.1:3")).unwrap();
        assert_eq!(admission.held.lock().unwrap().by_source.len(), 2);
    }
}
