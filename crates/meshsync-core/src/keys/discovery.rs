//! Names under which a folder is looked up on discovery services (trackers,
//! the DHT), derived from the folder's [`AccessKey`].
//!
//! The DHT is public: anyone can run nodes near any info-hash and log who
//! announces it. So the DHT name also *rotates*: [`dht_info_hash`] mixes in
//! a day number ([`dht_window`]), so the nodes that see one day's announces
//! cannot link them to the next day's, and a name that leaks (from a log,
//! from a node near it) stops pointing at the folder within a day. Peers
//! announce under the current window and look up the current and the
//! previous one, so clocks a little apart and announces made just before
//! midnight (UTC) still meet.
//!
//! A discovery service is untrusted and sees every lookup, so the name it
//! learns must tell it nothing: not the [`ShareId`](crate::ids::ShareId)
//! (which peers use in the clear once connected, and which would link the
//! tracker's view to a connection's), and nothing that proves access to or
//! opens the folder. Each name is a BLAKE3 `derive_key` of the access key with
//! its own context string: one-way, so it reveals neither the access key nor
//! anything derived from it, and independent of every other derivation. Only
//! holders of some key of the folder can compute it, so only they can find
//! each other.
//!
//! Knowing a lookup name still proves nothing: whoever a tracker introduces
//! must pass the access proof before a folder opens.
//!
//! Pure functions: no clock, no randomness, no I/O.

use super::AccessKey;

/// BLAKE3 `derive_key` context of [`tracker_lookup_key`].
pub const TRACKER_LOOKUP_CONTEXT: &str = "meshsync v1 tracker lookup key";

/// The key under which peers of a folder announce themselves to a tracker
/// and ask it for each other: `BLAKE3-derive_key("meshsync v1 tracker
/// lookup key", access key)`.
pub fn tracker_lookup_key(access: &AccessKey) -> [u8; 32] {
    blake3::derive_key(TRACKER_LOOKUP_CONTEXT, access.as_bytes())
}

/// BLAKE3 `derive_key` context of [`dht_info_hash`].
pub const DHT_INFO_HASH_CONTEXT: &str = "meshsync v1 dht info-hash";

/// The length of one DHT naming window: a day.
pub const DHT_WINDOW_SECS: u64 = 24 * 60 * 60;

/// The DHT naming window a moment falls in (seconds since the Unix epoch,
/// UTC): `floor(unix_secs / 86400)`, the day number.
pub fn dht_window(unix_secs: u64) -> u64 {
    unix_secs / DHT_WINDOW_SECS
}

/// The BitTorrent info-hash under which peers of a folder announce
/// themselves on the mainline DHT during `window` ([`dht_window`]):
/// the first 20 bytes of `BLAKE3-derive_key("meshsync v1 dht info-hash",
/// access key ‖ u64be(window))`.
pub fn dht_info_hash(access: &AccessKey, window: u64) -> [u8; 20] {
    let mut h = blake3::Hasher::new_derive_key(DHT_INFO_HASH_CONTEXT);
    h.update(access.as_bytes());
    h.update(&window.to_be_bytes());
    let mut out = [0u8; 20];
    out.copy_from_slice(&h.finalize().as_bytes()[..20]);
    out
}

/// The info-hashes to look a folder up under at `unix_secs`: the current
/// window's, then the previous one's (peers that announced before the
/// window turned, or whose clock is behind).
pub fn dht_lookup_hashes(access: &AccessKey, unix_secs: u64) -> [[u8; 20]; 2] {
    let w = dht_window(unix_secs);
    [
        dht_info_hash(access, w),
        dht_info_hash(access, w.saturating_sub(1)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::ReadWriteKey;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The vector key of `docs/keys.md` (secret bytes 0x00..0x1f).
    fn vector_key() -> ReadWriteKey {
        let secret: [u8; 32] = std::array::from_fn(|i| i as u8);
        ReadWriteKey::from_secret(&secret)
    }

    /// Cross-checked with `b3sum --derive-key "meshsync v1 tracker lookup
    /// key"` over the access key's bytes.
    #[test]
    fn tracker_lookup_key_vector() {
        let key = vector_key();
        assert_eq!(
            hex(&tracker_lookup_key(key.access_key())),
            "08d4f5ed519cbf16df5fed5d691fa07258eecc0f814edfe3d76eda57eb73c99d"
        );
    }

    #[test]
    fn every_key_type_of_a_folder_finds_the_same_name() {
        let key = vector_key();
        let name = tracker_lookup_key(key.access_key());
        assert_eq!(tracker_lookup_key(key.read_only().access_key()), name);
        assert_eq!(tracker_lookup_key(key.encrypted().access_key()), name);
    }

    #[test]
    fn the_name_is_neither_the_share_id_nor_the_access_key() {
        let key = vector_key();
        let name = tracker_lookup_key(key.access_key());
        assert_ne!(&name, key.share_id().as_bytes());
        assert_ne!(&name, key.access_key().as_bytes());
        let other = ReadWriteKey::from_secret(&[9; 32]);
        assert_ne!(tracker_lookup_key(other.access_key()), name);
    }

    /// Cross-checked with `b3sum --derive-key "meshsync v1 dht info-hash"`
    /// over the access key's bytes followed by u64be(20000).
    #[test]
    fn dht_info_hash_vector() {
        let key = vector_key();
        assert_eq!(
            hex(&dht_info_hash(key.access_key(), 20_000)),
            "c5326bf87188fb2324bb453cc52a5f9bffc11d34"
        );
    }

    #[test]
    fn the_dht_name_rotates_daily_and_is_shared_by_every_key_type() {
        let key = vector_key();
        let day = 20_000 * DHT_WINDOW_SECS;
        assert_eq!(dht_window(day), 20_000);
        assert_eq!(dht_window(day + DHT_WINDOW_SECS - 1), 20_000);
        assert_eq!(dht_window(day + DHT_WINDOW_SECS), 20_001);
        let today = dht_info_hash(key.access_key(), 20_000);
        assert_ne!(dht_info_hash(key.access_key(), 20_001), today);
        assert_eq!(dht_info_hash(key.read_only().access_key(), 20_000), today);
        assert_eq!(dht_info_hash(key.encrypted().access_key(), 20_000), today);
        let other = ReadWriteKey::from_secret(&[9; 32]);
        assert_ne!(dht_info_hash(other.access_key(), 20_000), today);
        // Not a prefix of anything else the folder shows.
        assert_ne!(&today[..], &key.share_id().as_bytes()[..20]);
        assert_ne!(&today[..], &tracker_lookup_key(key.access_key())[..20]);
    }

    #[test]
    fn lookups_cover_the_current_and_the_previous_window() {
        let key = vector_key();
        let a = key.access_key();
        let t = 20_000 * DHT_WINDOW_SECS + 5;
        assert_eq!(
            dht_lookup_hashes(a, t),
            [dht_info_hash(a, 20_000), dht_info_hash(a, 19_999)]
        );
        // An announce made just before midnight is still found just after.
        let announced = dht_info_hash(a, dht_window(t - 10));
        assert!(dht_lookup_hashes(a, t).contains(&announced));
    }
}

// LAN announcements (`meshsync_proto::lan`, `docs/protocol.md` "LAN
// announcements"). Unlike a tracker or the DHT, a LAN has no service to look
// a name up on: every device hears every announcement. So an announcement
// carries no folder name at all, only per-folder *tags*: a MAC, under a key
// only holders of the folder can derive, over the announcing device's id, a
// time window and the announced addresses. A holder checks a tag by
// recomputing it; a listener without the key sees 16 random-looking bytes
// that change every window, differ between two devices of the same folder,
// and never equal anything else the folder shows (the ShareId, a tracker or
// DHT name).

/// BLAKE3 `derive_key` context of the [`LanTagKey`].
pub const LAN_TAG_CONTEXT: &str = "meshsync v1 lan announcement tag key";

/// The label at the start of every tagged message.
const LAN_TAG_LABEL: &[u8; 20] = b"meshsync v1 lan tag\0";

/// The length of one LAN tag window: five minutes. A captured announcement
/// can be replayed for at most a few windows, and tags of one device in two
/// windows cannot be linked without the key.
pub const LAN_WINDOW_SECS: u64 = 5 * 60;

/// The length of a LAN tag, in bytes.
pub const LAN_TAG_LEN: usize = 16;

/// The LAN window a moment falls in (seconds since the Unix epoch):
/// `floor(unix_secs / 300)`.
pub fn lan_window(unix_secs: u64) -> u64 {
    unix_secs / LAN_WINDOW_SECS
}

/// The key a folder's LAN tags are made with:
/// `BLAKE3-derive_key("meshsync v1 lan announcement tag key", access key)`.
/// Every key type of a folder derives the same one.
#[derive(Clone)]
pub struct LanTagKey(zeroize::Zeroizing<[u8; 32]>);

impl LanTagKey {
    /// Derives the folder's tag key from its access key.
    pub fn new(access: &AccessKey) -> Self {
        LanTagKey(zeroize::Zeroizing::new(blake3::derive_key(
            LAN_TAG_CONTEXT,
            access.as_bytes(),
        )))
    }

    /// The tag of `device`'s announcement in `window`, bound to `announced`
    /// (the announcement's encoded addresses, so a stranger who replays the
    /// tags cannot make holders dial addresses of its choosing): the first 16
    /// bytes of `BLAKE3-keyed(tag key, "meshsync v1 lan tag\0" ‖ device id ‖
    /// u64be(window) ‖ announced)`.
    pub fn tag(
        &self,
        device: &crate::ids::DeviceId,
        window: u64,
        announced: &[u8],
    ) -> [u8; LAN_TAG_LEN] {
        let mut mac = blake3::Hasher::new_keyed(&self.0);
        mac.update(LAN_TAG_LABEL);
        mac.update(device.as_bytes());
        mac.update(&window.to_be_bytes());
        mac.update(announced);
        let mut out = [0u8; LAN_TAG_LEN];
        out.copy_from_slice(&mac.finalize().as_bytes()[..LAN_TAG_LEN]);
        out
    }

    /// Whether `tag` is the tag of `device`'s announcement in `window` bound
    /// to `announced`; compared in constant time.
    pub fn verify(
        &self,
        device: &crate::ids::DeviceId,
        window: u64,
        announced: &[u8],
        tag: &[u8; LAN_TAG_LEN],
    ) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.tag(device, window, announced).ct_eq(tag))
    }
}

impl std::fmt::Debug for LanTagKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LanTagKey(<redacted>)")
    }
}

#[cfg(test)]
mod lan_tag_tests {
    use super::*;
    use crate::keys::ReadWriteKey;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn vector_key() -> ReadWriteKey {
        let secret: [u8; 32] = std::array::from_fn(|i| i as u8);
        ReadWriteKey::from_secret(&secret)
    }

    use crate::ids::DeviceId;

    fn device() -> DeviceId {
        DeviceId::from_bytes([0x22; 32])
    }

    /// Cross-checked with `b3sum --derive-key "meshsync v1 lan announcement
    /// tag key"` over the access key, then `b3sum --keyed` over the label,
    /// device id, u64be(window) and the bytes `01 02 03`.
    #[test]
    fn lan_tag_vector() {
        let key = LanTagKey::new(vector_key().access_key());
        assert_eq!(
            hex(&key.tag(&device(), 5_000_000, &[1, 2, 3])),
            "386ed435ea089e772253a1c73c09e004"
        );
    }

    #[test]
    fn every_key_type_of_a_folder_makes_the_same_tag() {
        let rw = vector_key();
        let tag = LanTagKey::new(rw.access_key()).tag(&device(), 7, b"a");
        assert_eq!(
            LanTagKey::new(rw.read_only().access_key()).tag(&device(), 7, b"a"),
            tag
        );
        assert_eq!(
            LanTagKey::new(rw.encrypted().access_key()).tag(&device(), 7, b"a"),
            tag
        );
    }

    #[test]
    fn tags_differ_by_window_device_addresses_and_folder() {
        let key = LanTagKey::new(vector_key().access_key());
        let tag = key.tag(&device(), 7, b"a");
        assert_ne!(key.tag(&device(), 8, b"a"), tag, "another window");
        let other_device = DeviceId::from_bytes([0x23; 32]);
        assert_ne!(key.tag(&other_device, 7, b"a"), tag, "another device");
        assert_ne!(key.tag(&device(), 7, b"b"), tag, "other addresses");
        let other = LanTagKey::new(ReadWriteKey::from_secret(&[9; 32]).access_key());
        assert_ne!(other.tag(&device(), 7, b"a"), tag, "another folder");
    }

    #[test]
    fn a_tag_is_not_the_share_id_nor_another_lookup_name() {
        let rw = vector_key();
        let tag = LanTagKey::new(rw.access_key()).tag(&device(), 7, b"");
        assert_ne!(&tag[..], &rw.share_id().as_bytes()[..LAN_TAG_LEN]);
        assert_ne!(
            &tag[..],
            &tracker_lookup_key(rw.access_key())[..LAN_TAG_LEN]
        );
        assert_ne!(&tag[..], &dht_info_hash(rw.access_key(), 7)[..LAN_TAG_LEN]);
    }

    #[test]
    fn verify_accepts_the_tag_and_nothing_else() {
        let key = LanTagKey::new(vector_key().access_key());
        let tag = key.tag(&device(), 7, b"a");
        assert!(key.verify(&device(), 7, b"a", &tag));
        for i in 0..LAN_TAG_LEN {
            let mut bad = tag;
            bad[i] ^= 1;
            assert!(!key.verify(&device(), 7, b"a", &bad), "byte {i} flipped");
        }
        assert!(!key.verify(&device(), 6, b"a", &tag));
    }

    #[test]
    fn windows_are_five_minutes() {
        assert_eq!(lan_window(0), 0);
        assert_eq!(lan_window(299), 0);
        assert_eq!(lan_window(300), 1);
        assert_eq!(
            format!("{:?}", LanTagKey::new(vector_key().access_key())),
            "LanTagKey(<redacted>)"
        );
    }
}
