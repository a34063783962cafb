//! Identities: devices, shares, and the 32-byte BLAKE3 hashes they are made of.
//!
//! - [`DeviceId`]: BLAKE3 of a device's public key. Its text form is base32 in
//!   four blocks of 13 characters, each followed by a check character (the
//!   GF(32) weighted sum of [`crate::keys`]' key strings), shown as eight
//!   dash-separated groups of seven: any single typo, and any swap of two
//!   different neighbouring characters, is caught when the id is typed in.
//! - [`ShareId`]: BLAKE3 of a folder's verify key; the only folder identifier
//!   that ever leaves a device in the clear.
//! - [`ShortId`]: the first 8 bytes of a device id, the key of version vectors.
//! - [`Hash`]: a BLAKE3 digest of content (a chunk or a whole file).
//!
//! Nothing here generates ids: they are derived from keys the caller holds.

use std::fmt;
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;
use serde::{Deserialize, Serialize};

use crate::keys::text::check_character;

/// The RFC 4648 base32 alphabet, used for every text form in meshsync.
pub const BASE32_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// Why a text form could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdParseError {
    /// The text has the wrong number of characters (dashes and spaces aside).
    #[error("wrong length: expected {expected} characters, got {got}")]
    Length {
        /// Characters expected.
        expected: usize,
        /// Characters found.
        got: usize,
    },
    /// A character outside the base32 alphabet (A–Z, 2–7).
    #[error("invalid character {0:?} (allowed: A-Z and 2-7)")]
    Character(char),
    /// A check character did not match: the id has a typo.
    #[error("check character of group {group} does not match: the id has a typo")]
    Check {
        /// Which block of 13 characters (1-based) failed.
        group: usize,
    },
}

/// A 32-byte BLAKE3 digest of content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Hash(*blake3::hash(bytes).as_bytes())
    }

    /// Lower-case hex, as `b3sum` prints it.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl From<blake3::Hash> for Hash {
    fn from(h: blake3::Hash) -> Self {
        Hash(*h.as_bytes())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", &self.to_hex()[..16])
    }
}

/// A device: BLAKE3 of its ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceId([u8; 32]);

impl DeviceId {
    /// The id of the device whose public key this is.
    pub fn from_public_key(public_key: &[u8; 32]) -> Self {
        DeviceId(*blake3::hash(public_key).as_bytes())
    }

    /// Wraps raw id bytes (as read from an index or the wire).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DeviceId(bytes)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The short id used as a version-vector key.
    pub fn short(&self) -> ShortId {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        ShortId(u64::from_be_bytes(b))
    }
}

const DEVICE_BLOCK: usize = 13;
const DEVICE_BLOCKS: usize = 4;
const DEVICE_TEXT_LEN: usize = DEVICE_BLOCKS * (DEVICE_BLOCK + 1);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = BASE32_NOPAD.encode(&self.0);
        let mut with_checks = String::with_capacity(DEVICE_TEXT_LEN);
        for block in body.as_bytes().chunks(DEVICE_BLOCK) {
            with_checks.push_str(std::str::from_utf8(block).expect("base32 is ascii"));
            with_checks.push(check_character(block) as char);
        }
        for (i, group) in with_checks.as_bytes().chunks(7).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            f.write_str(std::str::from_utf8(group).expect("ascii"))?;
        }
        Ok(())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", &self.to_string()[..7])
    }
}

impl FromStr for DeviceId {
    type Err = IdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = normalize_base32_text(s)?;
        if text.len() != DEVICE_TEXT_LEN {
            return Err(IdParseError::Length {
                expected: DEVICE_TEXT_LEN,
                got: text.len(),
            });
        }
        let mut body = Vec::with_capacity(DEVICE_BLOCK * DEVICE_BLOCKS);
        for (i, block) in text.as_bytes().chunks(DEVICE_BLOCK + 1).enumerate() {
            let (data, check) = block.split_at(DEVICE_BLOCK);
            if check_character(data) != check[0] {
                return Err(IdParseError::Check { group: i + 1 });
            }
            body.extend_from_slice(data);
        }
        let bytes = BASE32_NOPAD
            .decode(&body)
            .map_err(|_| IdParseError::Character('?'))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|v: Vec<u8>| IdParseError::Length {
                expected: 32,
                got: v.len(),
            })?;
        Ok(DeviceId(arr))
    }
}

/// Upper-cases `s`, drops dashes and white space, and checks the alphabet.
pub fn normalize_base32_text(s: &str) -> Result<String, IdParseError> {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '-' || c.is_whitespace() {
            continue;
        }
        let u = c.to_ascii_uppercase();
        if !u.is_ascii() || !BASE32_ALPHABET.contains(&(u as u8)) {
            return Err(IdParseError::Character(c));
        }
        out.push(u);
    }
    Ok(out)
}

/// A shared folder: BLAKE3 of its verify key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShareId([u8; 32]);

impl ShareId {
    /// The id of the share whose verify key this is.
    pub fn from_verify_key(verify_key: &[u8; 32]) -> Self {
        ShareId(*blake3::hash(verify_key).as_bytes())
    }

    /// Wraps raw id bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        ShareId(bytes)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ShareId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE32_NOPAD.encode(&self.0))
    }
}

impl fmt::Debug for ShareId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShareId({})", &self.to_string()[..8])
    }
}

impl FromStr for ShareId {
    type Err = IdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = normalize_base32_text(s)?;
        if text.len() != 52 {
            return Err(IdParseError::Length {
                expected: 52,
                got: text.len(),
            });
        }
        let bytes = BASE32_NOPAD
            .decode(text.as_bytes())
            .map_err(|_| IdParseError::Character('?'))?;
        Ok(ShareId(
            bytes.try_into().expect("52 base32 chars are 32 bytes"),
        ))
    }
}

/// The key of a version vector: the first 8 bytes of a [`DeviceId`] (or of a
/// local tree's id, for `meshsync sync`).
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize, Default,
)]
pub struct ShortId(pub u64);

impl fmt::Display for ShortId {
    /// Seven base32 characters, as used in conflict-copy names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = BASE32_NOPAD.encode(&self.0.to_be_bytes());
        f.write_str(&text[..7])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DeviceId {
        DeviceId::from_public_key(&[7u8; 32])
    }

    #[test]
    fn device_id_text_round_trips() {
        let id = sample();
        let text = id.to_string();
        assert_eq!(text.len(), 56 + 7, "8 groups of 7 and 7 dashes: {text}");
        assert_eq!(text.parse::<DeviceId>().unwrap(), id);
        assert_eq!(text.to_lowercase().parse::<DeviceId>().unwrap(), id);
        assert_eq!(text.replace('-', " ").parse::<DeviceId>().unwrap(), id);
    }

    #[test]
    fn device_id_catches_every_single_typo() {
        let text: Vec<u8> = sample().to_string().replace('-', "").into_bytes();
        for i in 0..text.len() {
            for &c in BASE32_ALPHABET {
                if c == text[i] {
                    continue;
                }
                let mut t = text.clone();
                t[i] = c;
                let s = String::from_utf8(t).unwrap();
                assert!(s.parse::<DeviceId>().is_err(), "typo at {i} accepted");
            }
        }
    }

    #[test]
    fn device_id_catches_adjacent_swaps() {
        let text: Vec<u8> = sample().to_string().replace('-', "").into_bytes();
        for i in 0..text.len() - 1 {
            if text[i] == text[i + 1] || (i + 1) % 14 == 0 {
                continue; // equal neighbours, or a swap across two check blocks
            }
            let mut t = text.clone();
            t.swap(i, i + 1);
            let s = String::from_utf8(t).unwrap();
            assert!(s.parse::<DeviceId>().is_err(), "swap at {i} accepted");
        }
    }

    #[test]
    fn device_id_check_sees_a_and_7_swapped() {
        // Luhn mod 32 cannot tell "A7" from "7A" (values 0 and 31); the
        // GF(32) check can. Regression for the first version of this module.
        assert_ne!(
            check_character(b"BCDA7FGHIJKLM"),
            check_character(b"BCD7AFGHIJKLM")
        );
    }

    #[test]
    fn device_id_rejects_wrong_length_and_alphabet() {
        assert!(matches!(
            "ABC".parse::<DeviceId>(),
            Err(IdParseError::Length { .. })
        ));
        assert!(matches!(
            "AB1".parse::<DeviceId>(),
            Err(IdParseError::Character('1'))
        ));
    }

    #[test]
    fn share_id_round_trips() {
        let s = ShareId::from_verify_key(&[1u8; 32]);
        assert_eq!(s.to_string().parse::<ShareId>().unwrap(), s);
    }
}
