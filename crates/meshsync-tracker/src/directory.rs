//! [`Directory`]: who announced which lookup key, from where, until when.
//! Sans-IO: the caller passes `now` and the device's authenticated id and
//! observed address.
//!
//! The directory is all a tracker stores, and only in memory: per device its
//! observed (reflexive) address, the addresses it announced, and the lookup
//! keys it announced with their expiry. No `ShareId`, nothing about content.
//!
//! Every table is bounded ([`DirectoryLimits`]): devices per key, keys per
//! device, entries per source address (an IPv4 address or an IPv6 /64, so
//! one host cannot fill the table for everyone) and entries in total. An
//! announcement that does not fit is refused, never one that was there
//! evicted, so a flood cannot push real peers out.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meshsync_core::ids::DeviceId;
use meshsync_proto::tracker::{LookupKey, MAX_ADDRS, MAX_PEERS, PeerInfo};

use meshsync_net::ratelimit::SourceKey;

/// The bounds of a [`Directory`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryLimits {
    /// How long an announcement holds without being renewed.
    pub ttl: Duration,
    /// The most devices announced under one key.
    pub max_devices_per_key: usize,
    /// The most keys one device may have announced.
    pub max_keys_per_device: usize,
    /// The most announcements (key, device) from one source address.
    pub max_entries_per_source: usize,
    /// The most announcements in total.
    pub max_entries: usize,
}

impl Default for DirectoryLimits {
    fn default() -> Self {
        DirectoryLimits {
            ttl: Duration::from_secs(300),
            max_devices_per_key: 256,
            max_keys_per_device: 4096,
            max_entries_per_source: 16_384,
            max_entries: 1_000_000,
        }
    }
}

struct DeviceRecord {
    observed: SocketAddr,
    addrs: Vec<SocketAddr>,
    /// Expiry of each key this device announced.
    keys: HashMap<LookupKey, Instant>,
}

/// Announcements, bounded and expiring.
pub struct Directory {
    limits: DirectoryLimits,
    devices: HashMap<DeviceId, DeviceRecord>,
    keys: HashMap<LookupKey, HashSet<DeviceId>>,
    per_source: HashMap<SourceKey, usize>,
    entries: usize,
}

/// What became of an announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AnnounceOutcome {
    /// Keys recorded or renewed.
    pub accepted: usize,
    /// Keys refused because a table was full.
    pub refused: usize,
}

impl Directory {
    /// An empty directory.
    pub fn new(limits: DirectoryLimits) -> Self {
        Directory {
            limits,
            devices: HashMap::new(),
            keys: HashMap::new(),
            per_source: HashMap::new(),
            entries: 0,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &DirectoryLimits {
        &self.limits
    }

    /// Records that `device`, seen at `observed`, holds the folders of
    /// `keys` and listens on `addrs`; renews keys it announced before.
    /// Keys that do not fit a bound are refused (and counted).
    pub fn announce(
        &mut self,
        now: Instant,
        device: DeviceId,
        observed: SocketAddr,
        keys: &[LookupKey],
        addrs: &[SocketAddr],
    ) -> AnnounceOutcome {
        let source = SourceKey::of(observed.ip());
        self.move_device(device, observed);
        let expires = now + self.limits.ttl;
        let record = self.devices.entry(device).or_insert_with(|| DeviceRecord {
            observed,
            addrs: Vec::new(),
            keys: HashMap::new(),
        });
        record.addrs = addrs.iter().take(MAX_ADDRS).copied().collect();
        let mut outcome = AnnounceOutcome::default();
        for key in keys {
            if let Some(e) = record.keys.get_mut(key) {
                *e = expires;
                outcome.accepted += 1;
                continue;
            }
            let members = self.keys.get(key).map_or(0, HashSet::len);
            let from_source = self.per_source.get(&source).copied().unwrap_or(0);
            if members >= self.limits.max_devices_per_key
                || record.keys.len() >= self.limits.max_keys_per_device
                || from_source >= self.limits.max_entries_per_source
                || self.entries >= self.limits.max_entries
            {
                outcome.refused += 1;
                continue;
            }
            record.keys.insert(*key, expires);
            self.keys.entry(*key).or_default().insert(device);
            *self.per_source.entry(source).or_default() += 1;
            self.entries += 1;
            outcome.accepted += 1;
        }
        if record.keys.is_empty() {
            self.devices.remove(&device);
        }
        outcome
    }

    /// A device seen at a new address keeps its keys, counted against the
    /// new source.
    fn move_device(&mut self, device: DeviceId, observed: SocketAddr) {
        let Some(record) = self.devices.get_mut(&device) else {
            return;
        };
        let (old, new) = (
            SourceKey::of(record.observed.ip()),
            SourceKey::of(observed.ip()),
        );
        record.observed = observed;
        if old != new {
            let n = record.keys.len();
            self.uncount_source(old, n);
            *self.per_source.entry(new).or_default() += n;
        }
    }

    fn uncount_source(&mut self, source: SourceKey, n: usize) {
        if let Some(count) = self.per_source.get_mut(&source) {
            *count = count.saturating_sub(n);
            if *count == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    /// Withdraws `device`'s announcements of `keys`.
    pub fn leave(&mut self, device: DeviceId, keys: &[LookupKey]) {
        let Some(record) = self.devices.get_mut(&device) else {
            return;
        };
        let source = SourceKey::of(record.observed.ip());
        let mut removed = 0;
        for key in keys {
            if record.keys.remove(key).is_some() {
                removed += 1;
                remove_member(&mut self.keys, key, &device);
            }
        }
        if record.keys.is_empty() {
            self.devices.remove(&device);
        }
        self.entries -= removed;
        self.uncount_source(source, removed);
    }

    /// Forgets everything `device` announced (its connection closed).
    pub fn forget(&mut self, device: DeviceId) {
        if let Some(record) = self.devices.remove(&device) {
            for key in record.keys.keys() {
                remove_member(&mut self.keys, key, &device);
            }
            self.entries -= record.keys.len();
            self.uncount_source(SourceKey::of(record.observed.ip()), record.keys.len());
        }
    }

    /// Drops every announcement expired at `now`.
    pub fn expire(&mut self, now: Instant) {
        let mut gone: Vec<(DeviceId, LookupKey)> = Vec::new();
        for (device, record) in &self.devices {
            for (key, expires) in &record.keys {
                if *expires <= now {
                    gone.push((*device, *key));
                }
            }
        }
        for (device, key) in gone {
            self.leave(device, &[key]);
        }
    }

    /// The other devices that announced `key` (unexpired at `now`), most
    /// recently announced first, at most [`MAX_PEERS`].
    pub fn peers(&self, now: Instant, key: &LookupKey, asking: DeviceId) -> Vec<PeerInfo> {
        let Some(members) = self.keys.get(key) else {
            return Vec::new();
        };
        let mut found: Vec<(Instant, PeerInfo)> = members
            .iter()
            .filter(|d| **d != asking)
            .filter_map(|d| {
                let record = self.devices.get(d)?;
                let expires = *record.keys.get(key)?;
                (expires > now).then(|| {
                    (
                        expires,
                        PeerInfo {
                            device: *d,
                            observed: record.observed,
                            addrs: record.addrs.clone(),
                        },
                    )
                })
            })
            .collect();
        found.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.device.cmp(&b.1.device)));
        found.truncate(MAX_PEERS);
        found.into_iter().map(|(_, p)| p).collect()
    }

    /// Whether both devices have an unexpired announcement of `key`: what
    /// lets one ask for a hole punch or a relay session with the other.
    pub fn shares_key(&self, now: Instant, key: &LookupKey, a: DeviceId, b: DeviceId) -> bool {
        let holds = |d: DeviceId| {
            self.devices
                .get(&d)
                .and_then(|r| r.keys.get(key))
                .is_some_and(|e| *e > now)
        };
        a != b && holds(a) && holds(b)
    }

    /// Where `device` can be dialled: its observed address first, then its
    /// announced ones (deduplicated, at most [`MAX_ADDRS`]).
    pub fn addresses(&self, device: DeviceId) -> Option<Vec<SocketAddr>> {
        let record = self.devices.get(&device)?;
        let mut out = vec![record.observed];
        for a in &record.addrs {
            if !out.contains(a) && out.len() < MAX_ADDRS {
                out.push(*a);
            }
        }
        Some(out)
    }

    /// How many (key, device) announcements are held.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether nothing is announced.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

fn remove_member(keys: &mut HashMap<LookupKey, HashSet<DeviceId>>, key: &LookupKey, d: &DeviceId) {
    if let Some(members) = keys.get_mut(key) {
        members.remove(d);
        if members.is_empty() {
            keys.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(n: u8) -> DeviceId {
        DeviceId::from_bytes([n; 32])
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn peers_of_a_key_see_each_other_not_themselves() {
        let now = Instant::now();
        let mut dir = Directory::new(DirectoryLimits::default());
        let (a, b, c) = (device(1), device(2), device(3));
        dir.announce(
            now,
            a,
            addr("198.51.100.1:4000"),
            &[[1; 32]],
            &[addr("10.0.0.1:22000")],
        );
        dir.announce(now, b, addr("198.51.100.2:5000"), &[[1; 32], [2; 32]], &[]);
        dir.announce(now, c, addr("198.51.100.3:6000"), &[[2; 32]], &[]);
        let peers = dir.peers(now, &[1; 32], a);
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].device, b);
        assert_eq!(peers[0].observed, addr("198.51.100.2:5000"));
        let peers = dir.peers(now, &[1; 32], b);
        assert_eq!(peers[0].addrs, vec![addr("10.0.0.1:22000")]);
        assert!(dir.shares_key(now, &[1; 32], a, b));
        assert!(
            !dir.shares_key(now, &[1; 32], a, c),
            "c never announced key 1"
        );
        assert!(!dir.shares_key(now, &[1; 32], a, a));
        assert_eq!(dir.len(), 4);
        assert_eq!(
            dir.addresses(a).unwrap(),
            vec![addr("198.51.100.1:4000"), addr("10.0.0.1:22000")]
        );
    }

    #[test]
    fn announcements_expire_unless_renewed() {
        let t0 = Instant::now();
        let limits = DirectoryLimits::default();
        let ttl = limits.ttl;
        let mut dir = Directory::new(limits);
        let (a, b) = (device(1), device(2));
        dir.announce(t0, a, addr("198.51.100.1:1"), &[[1; 32]], &[]);
        dir.announce(t0, b, addr("198.51.100.2:1"), &[[1; 32]], &[]);
        let later = t0 + ttl / 2;
        dir.announce(later, b, addr("198.51.100.2:1"), &[[1; 32]], &[]);
        let after_ttl = t0 + ttl + Duration::from_secs(1);
        assert!(dir.peers(after_ttl, &[1; 32], b).is_empty(), "a expired");
        assert_eq!(dir.peers(after_ttl, &[1; 32], a).len(), 1, "b renewed");
        dir.expire(after_ttl);
        assert_eq!(dir.len(), 1);
        dir.expire(later + ttl);
        assert!(dir.is_empty());
        assert!(dir.per_source.is_empty() && dir.keys.is_empty() && dir.devices.is_empty());
    }

    #[test]
    fn leave_and_forget_clean_every_table() {
        let now = Instant::now();
        let mut dir = Directory::new(DirectoryLimits::default());
        let a = device(1);
        dir.announce(
            now,
            a,
            addr("198.51.100.1:1"),
            &[[1; 32], [2; 32], [3; 32]],
            &[],
        );
        dir.leave(a, &[[1; 32], [9; 32]]);
        assert_eq!(dir.len(), 2);
        dir.forget(a);
        assert!(dir.is_empty());
        assert!(dir.per_source.is_empty() && dir.keys.is_empty() && dir.devices.is_empty());
    }

    #[test]
    fn bounds_refuse_newcomers_and_keep_what_is_there() {
        let now = Instant::now();
        let mut dir = Directory::new(DirectoryLimits {
            max_devices_per_key: 2,
            max_keys_per_device: 3,
            max_entries_per_source: 4,
            max_entries: 6,
            ..DirectoryLimits::default()
        });
        let src = addr("198.51.100.1:1");
        // Per key.
        dir.announce(now, device(1), src, &[[0; 32]], &[]);
        dir.announce(now, device(2), src, &[[0; 32]], &[]);
        let o = dir.announce(now, device(3), src, &[[0; 32]], &[]);
        assert_eq!(
            o,
            AnnounceOutcome {
                accepted: 0,
                refused: 1
            }
        );
        // Per device.
        let o = dir.announce(now, device(1), src, &[[1; 32], [2; 32], [3; 32]], &[]);
        assert_eq!(
            o,
            AnnounceOutcome {
                accepted: 2,
                refused: 1
            }
        );
        // Per source (4 from 198.51.100.1 now).
        let o = dir.announce(now, device(4), src, &[[4; 32]], &[]);
        assert_eq!(o.refused, 1);
        // IPv6 sources count per /64: another address of the same /64 is the same source.
        let v6a = addr("[2001:db8:1:2::1]:1");
        let v6b = addr("[2001:db8:1:2::ffff]:1");
        dir.announce(now, device(5), v6a, &[[5; 32]], &[]);
        dir.announce(now, device(6), v6b, &[[6; 32]], &[]);
        assert_eq!(dir.per_source[&SourceKey::of(v6a.ip())], 2);
        // Total (6).
        let o = dir.announce(now, device(7), addr("198.51.100.9:1"), &[[7; 32]], &[]);
        assert_eq!(o.refused, 1);
        assert_eq!(dir.len(), 6);
        // Renewing an existing entry is never refused.
        let o = dir.announce(now, device(1), src, &[[0; 32]], &[]);
        assert_eq!(o.accepted, 1);
    }

    #[test]
    fn a_device_that_moves_is_counted_at_its_new_source() {
        let now = Instant::now();
        let mut dir = Directory::new(DirectoryLimits::default());
        let a = device(1);
        dir.announce(now, a, addr("198.51.100.1:1"), &[[1; 32], [2; 32]], &[]);
        dir.announce(now, a, addr("198.51.100.2:1"), &[[1; 32]], &[]);
        assert!(
            !dir.per_source
                .contains_key(&SourceKey::of(addr("198.51.100.1:1").ip()))
        );
        assert_eq!(
            dir.per_source[&SourceKey::of(addr("198.51.100.2:1").ip())],
            2
        );
        assert_eq!(dir.addresses(a).unwrap(), vec![addr("198.51.100.2:1")]);
    }

    #[test]
    fn answers_are_bounded_and_newest_first() {
        let t0 = Instant::now();
        let mut dir = Directory::new(DirectoryLimits::default());
        for n in 0..(MAX_PEERS as u8 + 10) {
            let t = t0 + Duration::from_millis(u64::from(n));
            dir.announce(t, device(n), addr("198.51.100.1:1"), &[[1; 32]], &[]);
        }
        let peers = dir.peers(t0, &[1; 32], device(255));
        assert_eq!(peers.len(), MAX_PEERS);
        assert_eq!(peers[0].device, device(MAX_PEERS as u8 + 9));
    }
}
