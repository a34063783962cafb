//! Names under which a folder is looked up on discovery services (trackers,
//! the DHT), derived from the folder's [`AccessKey`].
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
}
