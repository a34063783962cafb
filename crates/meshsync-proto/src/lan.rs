//! LAN announcements: the UDP datagram a device multicasts (and broadcasts)
//! on its local networks so that peers of its folders there find it without
//! any server. `docs/protocol.md` ("LAN announcements") gives the layout.
//!
//! An announcement says who is here ([`Announcement::device`]), where it
//! listens ([`Announcement::port`], [`Announcement::addresses`]) and, per
//! folder, a 16-byte tag: a MAC under a key derived from the folder's access
//! key ([`LanTagKey`]) over the whole announcement before the tags, which
//! includes the device id and a five-minute window number. Never a
//! `ShareId`: a listener without a folder's key learns that a meshsync
//! device is here and how many folders it announces, nothing about which;
//! the tags of one device change every window and two devices of the same
//! folder show different tags. A holder of the key recognises a tag by
//! recomputing it ([`Announcement::matches`]).
//!
//! The tag covers the addresses, so a stranger who captures an announcement
//! can replay it only as it was (for the window or two it is accepted) and
//! cannot point holders at addresses of its choosing. What a replay or a
//! forged source address can still do is make a holder dial the announcing
//! device's *real* addresses, or the forger's: every dial is pinned to the
//! announced device id, so the TLS handshake fails against anyone else, and
//! the access proof guards the folder after that.
//!
//! Decoding is strict and bounded: the datagram is at most
//! [`MAX_ANNOUNCEMENT_LEN`] bytes, every count is checked before it is used,
//! unknown versions, bad address families, unusable addresses and trailing
//! bytes are errors. It never panics on any input (property-tested, and the
//! `lan_announcement` fuzz target).
//!
//! Sans-IO like the rest of this crate: the caller supplies the window (from
//! its clock) and sends and receives the bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use meshsync_core::ids::DeviceId;
use meshsync_core::keys::discovery::{LAN_TAG_LEN, LanTagKey};

/// The first four bytes of every announcement.
pub const MAGIC: [u8; 4] = *b"MSLA";

/// The announcement format this crate writes and reads. A receiver ignores
/// announcements of other versions (a later version may be sent beside this
/// one).
pub const VERSION: u8 = 1;

/// The largest announcement, in bytes: a datagram longer than this is
/// refused before it is parsed. One with the most addresses and tags is 833
/// bytes, well under a 1280-byte IPv6 minimum MTU.
pub const MAX_ANNOUNCEMENT_LEN: usize = 1024;

/// The most addresses one announcement carries.
pub const MAX_ADDRESSES: usize = 16;

/// The most folder tags one announcement carries; a device with more
/// folders sends several announcements.
pub const MAX_TAGS: usize = 32;

/// Bytes before the address list: magic, version, device id, window, port,
/// address count.
const FIXED_LEN: usize = 4 + 1 + 32 + 8 + 2 + 1;

/// One decoded announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The announcing device (claimed: anyone can write any id here; a dial
    /// pinned to it proves it).
    pub device: DeviceId,
    /// The tag window the tags were made for
    /// ([`lan_window`](meshsync_core::keys::discovery::lan_window)).
    pub window: u64,
    /// The UDP port the device's QUIC endpoint listens on.
    pub port: u16,
    /// The device's own addresses on its networks (without the packet's
    /// source address, which the receiver knows anyway).
    pub addresses: Vec<IpAddr>,
    /// One tag per folder announced.
    pub tags: Vec<[u8; LAN_TAG_LEN]>,
    /// The bytes the tags cover (everything before the tag count).
    covered: Vec<u8>,
}

/// Why a datagram is not an announcement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LanError {
    /// Longer than [`MAX_ANNOUNCEMENT_LEN`].
    #[error("{len} bytes; an announcement is at most {MAX_ANNOUNCEMENT_LEN}")]
    TooLong {
        /// The datagram's length.
        len: usize,
    },
    /// It ends inside a field.
    #[error("truncated announcement")]
    Truncated,
    /// It does not start with [`MAGIC`].
    #[error("not a meshsync announcement")]
    BadMagic,
    /// A version this crate does not read.
    #[error("announcement version {0}")]
    UnknownVersion(u8),
    /// Port 0.
    #[error("port 0")]
    ZeroPort,
    /// More than [`MAX_ADDRESSES`] addresses.
    #[error("{0} addresses; the limit is {MAX_ADDRESSES}")]
    TooManyAddresses(usize),
    /// An address family byte other than 4 or 6.
    #[error("address family {0}")]
    BadFamily(u8),
    /// An address nobody can dial (unspecified, multicast, broadcast).
    #[error("unusable address {0}")]
    BadAddress(IpAddr),
    /// No tags, or more than [`MAX_TAGS`].
    #[error("{0} tags; an announcement has 1 to {MAX_TAGS}")]
    TagCount(usize),
    /// Bytes after the last tag.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
}

/// Whether `ip` can be an announced address: not unspecified, multicast or
/// the IPv4 broadcast address.
pub fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    }
}

/// Whether an announcement made for `window` is accepted at `now_window`:
/// the same window or one either side of it, so a clock a few minutes off
/// and an announcement sent just before the window turned still count.
pub fn window_accepted(window: u64, now_window: u64) -> bool {
    window.abs_diff(now_window) <= 1
}

/// Encodes `device`'s announcements for `window`: one datagram per
/// [`MAX_TAGS`] folders in `keys` (none when `keys` is empty). `addresses`
/// beyond [`MAX_ADDRESSES`] and unusable ones are left out.
pub fn encode(
    device: &DeviceId,
    window: u64,
    port: u16,
    addresses: &[IpAddr],
    keys: &[LanTagKey],
) -> Vec<Vec<u8>> {
    let mut covered = Vec::with_capacity(FIXED_LEN + 17 * MAX_ADDRESSES);
    covered.extend_from_slice(&MAGIC);
    covered.push(VERSION);
    covered.extend_from_slice(device.as_bytes());
    covered.extend_from_slice(&window.to_be_bytes());
    covered.extend_from_slice(&port.to_be_bytes());
    let addresses: Vec<IpAddr> = addresses
        .iter()
        .copied()
        .filter(|ip| usable(*ip))
        .take(MAX_ADDRESSES)
        .collect();
    covered.push(addresses.len() as u8);
    for ip in &addresses {
        match ip {
            IpAddr::V4(v4) => {
                covered.push(4);
                covered.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                covered.push(6);
                covered.extend_from_slice(&v6.octets());
            }
        }
    }
    keys.chunks(MAX_TAGS)
        .map(|group| {
            let mut datagram = covered.clone();
            datagram.push(group.len() as u8);
            for key in group {
                datagram.extend_from_slice(&key.tag(device, window, &covered));
            }
            datagram
        })
        .collect()
}

impl Announcement {
    /// Decodes one datagram.
    pub fn decode(datagram: &[u8]) -> Result<Announcement, LanError> {
        if datagram.len() > MAX_ANNOUNCEMENT_LEN {
            return Err(LanError::TooLong {
                len: datagram.len(),
            });
        }
        let mut r = Reader(datagram);
        if r.take(4)? != MAGIC {
            return Err(LanError::BadMagic);
        }
        let version = r.byte()?;
        if version != VERSION {
            return Err(LanError::UnknownVersion(version));
        }
        let device = DeviceId::from_bytes(r.array()?);
        let window = u64::from_be_bytes(r.array()?);
        let port = u16::from_be_bytes(r.array()?);
        if port == 0 {
            return Err(LanError::ZeroPort);
        }
        let count = usize::from(r.byte()?);
        if count > MAX_ADDRESSES {
            return Err(LanError::TooManyAddresses(count));
        }
        let mut addresses = Vec::with_capacity(count);
        for _ in 0..count {
            let ip = match r.byte()? {
                4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
                6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
                other => return Err(LanError::BadFamily(other)),
            };
            if !usable(ip) {
                return Err(LanError::BadAddress(ip));
            }
            addresses.push(ip);
        }
        let covered = datagram[..datagram.len() - r.0.len()].to_vec();
        let tag_count = usize::from(r.byte()?);
        if tag_count == 0 || tag_count > MAX_TAGS {
            return Err(LanError::TagCount(tag_count));
        }
        let mut tags = Vec::with_capacity(tag_count);
        for _ in 0..tag_count {
            tags.push(r.array()?);
        }
        if !r.0.is_empty() {
            return Err(LanError::TrailingBytes(r.0.len()));
        }
        Ok(Announcement {
            device,
            window,
            port,
            addresses,
            tags,
            covered,
        })
    }

    /// Whether one of the tags is `key`'s folder's tag for this device,
    /// window and addresses (constant-time comparisons).
    pub fn matches(&self, key: &LanTagKey) -> bool {
        // Every tag is checked, so the time taken does not say which one
        // matched.
        self.tags.iter().fold(false, |found, tag| {
            key.verify(&self.device, self.window, &self.covered, tag) | found
        })
    }
}

/// A cursor over the datagram that never reads past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LanError> {
        if self.0.len() < n {
            return Err(LanError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, LanError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], LanError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshsync_core::keys::ReadWriteKey;
    use proptest::prelude::*;

    fn key(seed: u8) -> LanTagKey {
        LanTagKey::new(ReadWriteKey::from_secret(&[seed; 32]).access_key())
    }

    fn device() -> DeviceId {
        DeviceId::from_bytes([0x42; 32])
    }

    fn addrs() -> Vec<IpAddr> {
        vec!["192.168.1.20".parse().unwrap(), "fd00::20".parse().unwrap()]
    }

    #[test]
    fn round_trip_and_matching() {
        let datagrams = encode(&device(), 900, 22000, &addrs(), &[key(1), key(2)]);
        assert_eq!(datagrams.len(), 1);
        let a = Announcement::decode(&datagrams[0]).unwrap();
        assert_eq!(a.device, device());
        assert_eq!((a.window, a.port), (900, 22000));
        assert_eq!(a.addresses, addrs());
        assert_eq!(a.tags.len(), 2);
        assert!(a.matches(&key(1)));
        assert!(a.matches(&key(2)));
        assert!(!a.matches(&key(3)), "a folder not announced");
    }

    #[test]
    fn the_layout_is_pinned() {
        let d = &encode(
            &device(),
            1,
            0x5208,
            &["10.0.0.1".parse().unwrap()],
            &[key(1)],
        )[0];
        assert_eq!(&d[..5], b"MSLA\x01");
        assert_eq!(&d[5..37], &[0x42; 32]);
        assert_eq!(&d[37..45], &1u64.to_be_bytes());
        assert_eq!(&d[45..47], &[0x52, 0x08]);
        assert_eq!(&d[47..53], &[1, 4, 10, 0, 0, 1]);
        assert_eq!(d[53], 1, "tag count");
        assert_eq!(
            &d[54..],
            &key(1).tag(&device(), 1, &d[..53]),
            "the tag covers every byte before the tag count"
        );
        assert_eq!(d.len(), 54 + 16);
    }

    /// The test vector of docs/protocol.md ("LAN announcements"); the tag
    /// cross-checked with `b3sum --keyed`.
    #[test]
    fn announcement_vector() {
        let secret: [u8; 32] = std::array::from_fn(|i| i as u8);
        let key = LanTagKey::new(ReadWriteKey::from_secret(&secret).access_key());
        let d = &encode(&device(), 1, 0x5208, &["10.0.0.1".parse().unwrap()], &[key])[0];
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            concat!(
                "4d534c4101",
                "4242424242424242424242424242424242424242424242424242424242424242",
                "0000000000000001",
                "5208",
                "01040a000001",
                "01",
                "d1ca9140046e4b7ae9cd9b8f07b2fe6d"
            )
        );
    }

    #[test]
    fn the_largest_announcement_fits() {
        let many: Vec<IpAddr> = (0..40u8)
            .map(|i| IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(i) + 1)))
            .collect();
        let keys: Vec<LanTagKey> = (0..70).map(key).collect();
        let datagrams = encode(&device(), 1, 1, &many, &keys);
        assert_eq!(datagrams.len(), 3, "70 folders in groups of 32");
        assert_eq!(datagrams[0].len(), 833);
        assert!(datagrams[0].len() <= MAX_ANNOUNCEMENT_LEN);
        let a = Announcement::decode(&datagrams[2]).unwrap();
        assert_eq!(a.addresses.len(), MAX_ADDRESSES);
        assert_eq!(a.tags.len(), 6);
        assert!(a.matches(&keys[69]));
        assert!(!a.matches(&keys[0]));
    }

    #[test]
    fn unusable_addresses_are_not_sent() {
        let bad: Vec<IpAddr> = vec![
            "0.0.0.0".parse().unwrap(),
            "239.1.2.3".parse().unwrap(),
            "255.255.255.255".parse().unwrap(),
            "::".parse().unwrap(),
            "ff02::1".parse().unwrap(),
            "10.1.1.1".parse().unwrap(),
        ];
        let a = Announcement::decode(&encode(&device(), 1, 1, &bad, &[key(1)])[0]).unwrap();
        assert_eq!(a.addresses, vec!["10.1.1.1".parse::<IpAddr>().unwrap()]);
        assert!(
            encode(&device(), 1, 1, &bad, &[]).is_empty(),
            "no folder, no announcement"
        );
    }

    #[test]
    fn a_tampered_announcement_matches_nothing() {
        let d = encode(&device(), 5, 22000, &addrs(), &[key(1)]).remove(0);
        // A stranger rewrites the address to one of its choosing.
        let mut moved = d.clone();
        moved[50] ^= 1;
        let a = Announcement::decode(&moved).unwrap();
        assert!(!a.matches(&key(1)));
        // ... or the port, or the device id, or the window.
        for at in [46, 10, 44] {
            let mut changed = d.clone();
            changed[at] ^= 1;
            let a = Announcement::decode(&changed).unwrap();
            assert!(!a.matches(&key(1)), "byte {at}");
        }
    }

    #[test]
    fn malformed_datagrams_are_refused() {
        let good = encode(&device(), 5, 22000, &addrs(), &[key(1)]).remove(0);
        let with = |at: usize, b: u8| {
            let mut d = good.clone();
            d[at] = b;
            Announcement::decode(&d).unwrap_err()
        };
        assert_eq!(with(0, b'X'), LanError::BadMagic);
        assert_eq!(with(4, 2), LanError::UnknownVersion(2));
        assert_eq!(
            {
                let mut d = good.clone();
                d[45] = 0;
                d[46] = 0;
                Announcement::decode(&d).unwrap_err()
            },
            LanError::ZeroPort
        );
        assert_eq!(with(47, 17), LanError::TooManyAddresses(17));
        assert_eq!(with(48, 5), LanError::BadFamily(5));
        assert_eq!(
            with(49, 224),
            LanError::BadAddress("224.168.1.20".parse().unwrap())
        );
        let tag_at = 48 + 5 + 17;
        assert_eq!(with(tag_at, 0), LanError::TagCount(0));
        assert_eq!(with(tag_at, 33), LanError::TagCount(33));
        assert_eq!(with(tag_at, 2), LanError::Truncated);
        let mut long = good.clone();
        long.push(0);
        assert_eq!(Announcement::decode(&long), Err(LanError::TrailingBytes(1)));
        for cut in 0..good.len() {
            assert_eq!(
                Announcement::decode(&good[..cut]),
                Err(LanError::Truncated),
                "cut at {cut}"
            );
        }
        assert_eq!(
            Announcement::decode(&vec![0; MAX_ANNOUNCEMENT_LEN + 1]),
            Err(LanError::TooLong {
                len: MAX_ANNOUNCEMENT_LEN + 1
            })
        );
    }

    #[test]
    fn windows_are_accepted_one_either_side() {
        assert!(window_accepted(10, 10));
        assert!(window_accepted(9, 10));
        assert!(window_accepted(11, 10));
        assert!(!window_accepted(8, 10));
        assert!(!window_accepted(12, 10));
        assert!(window_accepted(0, 0));
        assert!(!window_accepted(u64::MAX, 0));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in prop::collection::vec(any::<u8>(), 0..1100)) {
            let _ = Announcement::decode(&data);
        }

        /// Random bytes behind a valid header reach the address and tag
        /// decoders; whatever decodes re-encodes to the same bytes.
        #[test]
        fn what_decodes_is_canonical(body in prop::collection::vec(any::<u8>(), 0..900)) {
            let mut data = b"MSLA\x01".to_vec();
            data.extend_from_slice(&body);
            if let Ok(a) = Announcement::decode(&data) {
                prop_assert!(a.addresses.len() <= MAX_ADDRESSES);
                prop_assert!(!a.tags.is_empty() && a.tags.len() <= MAX_TAGS);
                prop_assert!(a.addresses.iter().all(|ip| usable(*ip)));
                prop_assert_eq!(&a.covered[..], &data[..a.covered.len()]);
                prop_assert_eq!(data.len(), a.covered.len() + 1 + 16 * a.tags.len());
            }
        }

        #[test]
        fn encoded_announcements_decode_and_match(
            window in any::<u64>(),
            port in 1u16..,
            v4 in prop::collection::vec(any::<[u8; 4]>(), 0..20),
            folders in 1u8..40,
        ) {
            let ips: Vec<IpAddr> = v4.into_iter().map(|o| IpAddr::V4(Ipv4Addr::from(o))).collect();
            let keys: Vec<LanTagKey> = (0..folders).map(key).collect();
            let datagrams = encode(&device(), window, port, &ips, &keys);
            prop_assert_eq!(datagrams.len(), usize::from(folders).div_ceil(MAX_TAGS));
            for (i, d) in datagrams.iter().enumerate() {
                let a = Announcement::decode(d).unwrap();
                prop_assert_eq!(a.port, port);
                prop_assert!(a.matches(&keys[i * MAX_TAGS]));
            }
        }
    }
}
