//! Admission of incoming peer connections: bounds on connections that share
//! no folder yet.
//!
//! Sharing is by key, not by a list of devices, so any device may connect
//! and say hello; until it opens a folder with a valid access proof it is a
//! stranger. A stranger's connection is cheap (the protocol holds it to 64
//! KiB frames and 1024 refused offers), but its number was unbounded. Here:
//! - at most [`PER_ADDRESS`] incoming connections without an open folder
//!   from one address (an IPv6 address counts by its /64 prefix, what one
//!   host usually holds), and at most [`TOTAL`] from everywhere;
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
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

/// Incoming connections without an open folder, per address.
pub const PER_ADDRESS: usize = 16;
/// Incoming connections without an open folder, in all.
pub const TOTAL: usize = 256;

/// Where a connection comes from, as far as the bounds are concerned: an
/// IPv4 address, or an IPv6 /64 prefix (an IPv4-mapped IPv6 address is its
/// IPv4 address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressBucket(IpAddr);

impl AddressBucket {
    /// The bucket of `addr`.
    pub fn of(addr: SocketAddr) -> Self {
        match addr.ip() {
            IpAddr::V4(v4) => AddressBucket(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressBucket(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    AddressBucket(IpAddr::V6(Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
        }
    }
}

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
    by_bucket: HashMap<AddressBucket, usize>,
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
        let bucket = AddressBucket::of(addr);
        let mut held = self.held.lock().expect("poisoned");
        if held.total >= self.total {
            return Err(Refusal::Total);
        }
        let n = held.by_bucket.entry(bucket).or_default();
        if *n >= self.per_address {
            return Err(Refusal::Address);
        }
        *n += 1;
        held.total += 1;
        Ok(StrangerPlace {
            admission: Arc::clone(self),
            bucket,
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
    bucket: AddressBucket,
}

impl Drop for StrangerPlace {
    fn drop(&mut self) {
        let mut held = self.admission.held.lock().expect("poisoned");
        held.total -= 1;
        if let Some(n) = held.by_bucket.get_mut(&self.bucket) {
            *n -= 1;
            if *n == 0 {
                held.by_bucket.remove(&self.bucket);
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
    fn an_ipv6_host_counts_by_its_64_prefix_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            AddressBucket::of(at("[2001:db8:1:2:aaaa::1]:1")),
            AddressBucket::of(at("[2001:db8:1:2:bbbb::9]:2"))
        );
        assert_ne!(
            AddressBucket::of(at("[2001:db8:1:2::1]:1")),
            AddressBucket::of(at("[2001:db8:1:3::1]:1"))
        );
        assert_eq!(
            AddressBucket::of(at("[::ffff:192.0.2.7]:1")),
            AddressBucket::of(at("192.0.2.7:9"))
        );
        assert_ne!(
            AddressBucket::of(at("192.0.2.7:1")),
            AddressBucket::of(at("192.0.2.8:1"))
        );
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
        assert_eq!(admission.held.lock().unwrap().by_bucket.len(), 2);
    }
}
