//! The three folder key types and the keys derived from a folder's secret.
//!
//! From the 32-byte read-write secret, HKDF-SHA256 (salt
//! [`HKDF_SALT`], one `info` label per output) derives the ed25519 signing key
//! seed and the data key. From the verify key (the signing key's public half),
//! BLAKE3 derives the [`ShareId`] (plain hash) and the [`AccessKey`]
//! (`derive_key` with its own context), so every key type of one folder agrees
//! on both. Derivation runs one way only: read-only and encrypted keys come out
//! of a read-write key, and nothing turns them back into one.
//!
//! Main types: [`ReadWriteKey`], [`ReadOnlyKey`], [`EncryptedKey`] (the three
//! key strings), [`FolderKey`] (any of them, parsed), [`VerifyKey`],
//! [`DataKey`], [`AccessKey`], [`KeyKind`].
//!
//! Never: a `Display` impl or a `Debug` that shows key bytes; a way from a
//! verify key or data key back to the secret.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{SigningKey, VerifyingKey};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::KeyError;
use super::text::{base32_len, decode_key, encode_key};
use crate::ids::ShareId;

/// HKDF-SHA256 salt for everything derived from a read-write secret.
pub(crate) const HKDF_SALT: &[u8] = b"meshsync v1 folder key";
/// HKDF `info` for the ed25519 signing key seed.
pub(crate) const HKDF_INFO_SIGNING: &[u8] = b"meshsync v1 folder signing key";
/// HKDF `info` for the data key.
pub(crate) const HKDF_INFO_DATA: &[u8] = b"meshsync v1 folder data key";
/// BLAKE3 `derive_key` context for the access key (input: the verify key).
pub(crate) const ACCESS_KEY_CONTEXT: &str = "meshsync v1 folder access key";

/// The three kinds of folder key, from most to least powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// Reads content, signs index updates (its changes propagate).
    ReadWrite,
    /// Reads content and verifies index updates; cannot sign, so its local
    /// changes never propagate.
    ReadOnly,
    /// Storage only: verifies index updates, stores and serves ciphertext,
    /// never sees names or content.
    Encrypted,
}

impl KeyKind {
    /// The name used in the CLI and JSON: `read-write`, `read-only` or
    /// `encrypted`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::ReadWrite => "read-write",
            KeyKind::ReadOnly => "read-only",
            KeyKind::Encrypted => "encrypted",
        }
    }

    /// The type letter that starts a key string: `W`, `R` or `E`.
    pub fn letter(self) -> char {
        match self {
            KeyKind::ReadWrite => 'W',
            KeyKind::ReadOnly => 'R',
            KeyKind::Encrypted => 'E',
        }
    }

    /// The kind a type letter (upper case) stands for.
    pub fn from_letter(letter: char) -> Option<Self> {
        match letter {
            'W' => Some(KeyKind::ReadWrite),
            'R' => Some(KeyKind::ReadOnly),
            'E' => Some(KeyKind::Encrypted),
            _ => None,
        }
    }

    /// Whether this kind can decrypt names and content.
    pub fn can_read(self) -> bool {
        matches!(self, KeyKind::ReadWrite | KeyKind::ReadOnly)
    }

    /// Whether this kind can sign index updates, i.e. make changes that other
    /// devices accept.
    pub fn can_write(self) -> bool {
        matches!(self, KeyKind::ReadWrite)
    }

    /// Bytes in the key string's body.
    pub(crate) fn payload_len(self) -> usize {
        match self {
            KeyKind::ReadWrite | KeyKind::Encrypted => 32,
            KeyKind::ReadOnly => 64,
        }
    }

    /// Characters in the key string: type letter, body, check character.
    pub fn text_len(self) -> usize {
        base32_len(self.payload_len()) + 2
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The folder's ed25519 public key. Not public despite the name: only its hash,
/// the [`ShareId`], leaves a device; holding it is what an encrypted key is.
#[derive(Clone)]
pub struct VerifyKey {
    bytes: Zeroizing<[u8; 32]>,
    share_id: ShareId,
    access: AccessKey,
}

impl VerifyKey {
    /// Takes the 32 bytes of an ed25519 public key, refusing encodings that are
    /// not a point or are of small order (such a key would accept forged
    /// signatures).
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let point = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::InvalidVerifyKey)?;
        if point.is_weak() {
            return Err(KeyError::InvalidVerifyKey);
        }
        Ok(VerifyKey {
            bytes: Zeroizing::new(*bytes),
            share_id: ShareId::from_verify_key(bytes),
            access: AccessKey::from_verify_key(bytes),
        })
    }

    /// The key bytes. Secret: see the type's docs.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// BLAKE3 of the verify key: the folder's public name.
    pub fn share_id(&self) -> ShareId {
        self.share_id
    }

    /// The folder's access key (the same for every key type).
    pub fn access_key(&self) -> &AccessKey {
        &self.access
    }

    /// The ed25519 key for verifying. Decompressed on each call so the only
    /// long-lived copy is the zeroizing byte array.
    pub(crate) fn ed25519(&self) -> VerifyingKey {
        VerifyingKey::from_bytes(&self.bytes).expect("checked in VerifyKey::from_bytes")
    }
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey")
            .field("share_id", &self.share_id)
            .finish_non_exhaustive()
    }
}

/// The folder's content key: decrypts names and chunks stored on storage-only
/// peers (see the methods in the crypt module: `encrypt_name`,
/// `decrypt_chunk`, …). Held by read-write and read-only keys only.
#[derive(Clone)]
pub struct DataKey {
    bytes: Zeroizing<[u8; 32]>,
}

impl DataKey {
    /// Wraps raw data key bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        DataKey {
            bytes: Zeroizing::new(*bytes),
        }
    }

    /// The key bytes. Secret.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// The folder's access key: `BLAKE3-derive_key("meshsync v1 folder access
/// key", verify key)`. Every key type derives it; see the `proof` module for
/// what it proves.
#[derive(Clone)]
pub struct AccessKey {
    bytes: Zeroizing<[u8; 32]>,
}

impl AccessKey {
    fn from_verify_key(verify_key: &[u8; 32]) -> Self {
        AccessKey {
            bytes: Zeroizing::new(blake3::derive_key(ACCESS_KEY_CONTEXT, verify_key)),
        }
    }

    /// The key bytes. Secret.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
}

impl fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessKey(<redacted>)")
    }
}

/// A read-only key: verify key and data key. Reads and verifies; cannot sign.
#[derive(Clone)]
pub struct ReadOnlyKey {
    verify: VerifyKey,
    data: DataKey,
}

impl ReadOnlyKey {
    /// Assembles a read-only key from its parts.
    pub fn from_parts(verify: VerifyKey, data: DataKey) -> Self {
        ReadOnlyKey { verify, data }
    }

    /// The verify key.
    pub fn verify_key(&self) -> &VerifyKey {
        &self.verify
    }

    /// The data key.
    pub fn data_key(&self) -> &DataKey {
        &self.data
    }

    /// The folder's share id.
    pub fn share_id(&self) -> ShareId {
        self.verify.share_id()
    }

    /// The folder's access key.
    pub fn access_key(&self) -> &AccessKey {
        self.verify.access_key()
    }

    /// The storage-only key of the same folder.
    pub fn encrypted(&self) -> EncryptedKey {
        EncryptedKey {
            verify: self.verify.clone(),
        }
    }

    /// The key string: `R`, base32(verify key ‖ data key), check character.
    pub fn to_key_string(&self) -> Zeroizing<String> {
        let mut payload = Zeroizing::new([0u8; 64]);
        payload[..32].copy_from_slice(self.verify.as_bytes());
        payload[32..].copy_from_slice(self.data.as_bytes());
        encode_key(KeyKind::ReadOnly, &payload[..])
    }

    fn from_payload(payload: &[u8]) -> Result<Self, KeyError> {
        let (verify, data) = payload.split_at(32);
        let verify: &[u8; 32] = verify.try_into().expect("64-byte payload");
        let data: &[u8; 32] = data.try_into().expect("64-byte payload");
        Ok(ReadOnlyKey {
            verify: VerifyKey::from_bytes(verify)?,
            data: DataKey::from_bytes(data),
        })
    }
}

impl fmt::Debug for ReadOnlyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadOnlyKey")
            .field("share_id", &self.share_id())
            .finish_non_exhaustive()
    }
}

/// An encrypted (storage-only) key: the verify key alone. It verifies index
/// signatures and handles ciphertext; it has no data key, so it has no method
/// that decrypts anything.
#[derive(Clone)]
pub struct EncryptedKey {
    verify: VerifyKey,
}

impl EncryptedKey {
    /// The storage-only key for a verify key.
    pub fn from_verify_key(verify: VerifyKey) -> Self {
        EncryptedKey { verify }
    }

    /// The verify key.
    pub fn verify_key(&self) -> &VerifyKey {
        &self.verify
    }

    /// The folder's share id.
    pub fn share_id(&self) -> ShareId {
        self.verify.share_id()
    }

    /// The folder's access key.
    pub fn access_key(&self) -> &AccessKey {
        self.verify.access_key()
    }

    /// The key string: `E`, base32(verify key), check character.
    pub fn to_key_string(&self) -> Zeroizing<String> {
        encode_key(KeyKind::Encrypted, self.verify.as_bytes())
    }
}

impl fmt::Debug for EncryptedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedKey")
            .field("share_id", &self.share_id())
            .finish_non_exhaustive()
    }
}

/// A read-write key: the folder's 32-byte secret and everything derived from
/// it. Signs index updates and reads content.
#[derive(Clone)]
pub struct ReadWriteKey {
    secret: Zeroizing<[u8; 32]>,
    /// Boxed: with its expanded public point it is ~250 bytes, which would
    /// make every [`FolderKey`] that size.
    signing: Box<SigningKey>,
    read_only: ReadOnlyKey,
}

impl ReadWriteKey {
    /// Derives a folder's keys from its secret. A new folder takes 32 bytes
    /// from the operating system's random number generator (the caller's job:
    /// this crate draws no randomness).
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        let hkdf = Hkdf::<Sha256>::new(Some(HKDF_SALT), secret);
        let mut seed = Zeroizing::new([0u8; 32]);
        hkdf.expand(HKDF_INFO_SIGNING, &mut seed[..])
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let mut data = Zeroizing::new([0u8; 32]);
        hkdf.expand(HKDF_INFO_DATA, &mut data[..])
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let signing = SigningKey::from_bytes(&seed);
        let verify = VerifyKey::from_bytes(signing.verifying_key().as_bytes())
            .expect("a key derived from a secret scalar is a valid point of large order");
        ReadWriteKey {
            secret: Zeroizing::new(*secret),
            signing: Box::new(signing),
            read_only: ReadOnlyKey {
                verify,
                data: DataKey::from_bytes(&data),
            },
        }
    }

    /// The read-only key of the same folder.
    pub fn read_only(&self) -> ReadOnlyKey {
        self.read_only.clone()
    }

    /// The storage-only key of the same folder.
    pub fn encrypted(&self) -> EncryptedKey {
        self.read_only.encrypted()
    }

    /// The verify key.
    pub fn verify_key(&self) -> &VerifyKey {
        self.read_only.verify_key()
    }

    /// The data key.
    pub fn data_key(&self) -> &DataKey {
        self.read_only.data_key()
    }

    /// The folder's share id.
    pub fn share_id(&self) -> ShareId {
        self.read_only.share_id()
    }

    /// The folder's access key.
    pub fn access_key(&self) -> &AccessKey {
        self.read_only.access_key()
    }

    /// The ed25519 signing key.
    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// The key string: `W`, base32(secret), check character.
    pub fn to_key_string(&self) -> Zeroizing<String> {
        encode_key(KeyKind::ReadWrite, &self.secret[..])
    }
}

impl fmt::Debug for ReadWriteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadWriteKey")
            .field("share_id", &self.share_id())
            .finish_non_exhaustive()
    }
}

/// Any folder key, as parsed from a key string.
#[derive(Clone, Debug)]
pub enum FolderKey {
    /// A read-write key.
    ReadWrite(ReadWriteKey),
    /// A read-only key.
    ReadOnly(ReadOnlyKey),
    /// An encrypted (storage-only) key.
    Encrypted(EncryptedKey),
}

impl FolderKey {
    /// Which kind of key this is.
    pub fn kind(&self) -> KeyKind {
        match self {
            FolderKey::ReadWrite(_) => KeyKind::ReadWrite,
            FolderKey::ReadOnly(_) => KeyKind::ReadOnly,
            FolderKey::Encrypted(_) => KeyKind::Encrypted,
        }
    }

    /// The verify key (every kind has it).
    pub fn verify_key(&self) -> &VerifyKey {
        match self {
            FolderKey::ReadWrite(k) => k.verify_key(),
            FolderKey::ReadOnly(k) => k.verify_key(),
            FolderKey::Encrypted(k) => k.verify_key(),
        }
    }

    /// The folder's share id.
    pub fn share_id(&self) -> ShareId {
        self.verify_key().share_id()
    }

    /// The folder's access key.
    pub fn access_key(&self) -> &AccessKey {
        self.verify_key().access_key()
    }

    /// The data key, if this kind can read.
    pub fn data_key(&self) -> Option<&DataKey> {
        match self {
            FolderKey::ReadWrite(k) => Some(k.data_key()),
            FolderKey::ReadOnly(k) => Some(k.data_key()),
            FolderKey::Encrypted(_) => None,
        }
    }

    /// The read-write key, or [`KeyError::WrongKeyType`] if this is a weaker
    /// kind.
    pub fn into_read_write(self) -> Result<ReadWriteKey, KeyError> {
        match self {
            FolderKey::ReadWrite(k) => Ok(k),
            other => Err(KeyError::WrongKeyType {
                expected: KeyKind::ReadWrite,
                found: other.kind(),
            }),
        }
    }

    /// The read-only key of this folder: derived from a read-write key, as is
    /// from a read-only key, [`KeyError::WrongKeyType`] from an encrypted key.
    pub fn to_read_only(&self) -> Result<ReadOnlyKey, KeyError> {
        match self {
            FolderKey::ReadWrite(k) => Ok(k.read_only()),
            FolderKey::ReadOnly(k) => Ok(k.clone()),
            FolderKey::Encrypted(_) => Err(KeyError::WrongKeyType {
                expected: KeyKind::ReadOnly,
                found: KeyKind::Encrypted,
            }),
        }
    }

    /// The encrypted (storage-only) key of this folder; every kind has one.
    pub fn to_encrypted(&self) -> EncryptedKey {
        EncryptedKey {
            verify: self.verify_key().clone(),
        }
    }

    /// The key string.
    pub fn to_key_string(&self) -> Zeroizing<String> {
        match self {
            FolderKey::ReadWrite(k) => k.to_key_string(),
            FolderKey::ReadOnly(k) => k.to_key_string(),
            FolderKey::Encrypted(k) => k.to_key_string(),
        }
    }
}

impl FromStr for FolderKey {
    type Err = KeyError;

    /// Parses any key string; lower case, dashes and white space are accepted.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, payload) = decode_key(s)?;
        Ok(match kind {
            KeyKind::ReadWrite => {
                let secret: &[u8; 32] = payload[..].try_into().expect("32-byte payload");
                FolderKey::ReadWrite(ReadWriteKey::from_secret(secret))
            }
            KeyKind::ReadOnly => FolderKey::ReadOnly(ReadOnlyKey::from_payload(&payload)?),
            KeyKind::Encrypted => {
                let verify: &[u8; 32] = payload[..].try_into().expect("32-byte payload");
                FolderKey::Encrypted(EncryptedKey {
                    verify: VerifyKey::from_bytes(verify)?,
                })
            }
        })
    }
}

impl FromStr for ReadWriteKey {
    type Err = KeyError;

    /// Parses a read-write key string; any other kind is
    /// [`KeyError::WrongKeyType`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<FolderKey>()?.into_read_write()
    }
}

impl FromStr for ReadOnlyKey {
    type Err = KeyError;

    /// Parses a read-only key string; any other kind is
    /// [`KeyError::WrongKeyType`] (derive a read-only key from a read-write
    /// one with [`FolderKey::to_read_only`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<FolderKey>()? {
            FolderKey::ReadOnly(k) => Ok(k),
            other => Err(KeyError::WrongKeyType {
                expected: KeyKind::ReadOnly,
                found: other.kind(),
            }),
        }
    }
}

impl FromStr for EncryptedKey {
    type Err = KeyError;

    /// Parses an encrypted key string; any other kind is
    /// [`KeyError::WrongKeyType`] (derive one with [`FolderKey::to_encrypted`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<FolderKey>()? {
            FolderKey::Encrypted(k) => Ok(k),
            other => Err(KeyError::WrongKeyType {
                expected: KeyKind::Encrypted,
                found: other.kind(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::text::check_character;

    fn sample() -> ReadWriteKey {
        ReadWriteKey::from_secret(&[9; 32])
    }

    fn all_key_strings() -> Vec<String> {
        let key = sample();
        vec![
            key.to_key_string().to_string(),
            key.read_only().to_key_string().to_string(),
            key.encrypted().to_key_string().to_string(),
        ]
    }

    /// Re-seals `body` (type letter + base32) with a valid check character.
    fn sealed(body: &str) -> String {
        let check = check_character(body.as_bytes());
        format!("{body}{}", char::from(check))
    }

    #[test]
    fn every_kind_agrees_on_share_id_and_access_key() {
        let key = sample();
        let ro = key.read_only();
        let enc = key.encrypted();
        assert_eq!(key.share_id(), ro.share_id());
        assert_eq!(key.share_id(), enc.share_id());
        assert_eq!(key.access_key().as_bytes(), ro.access_key().as_bytes());
        assert_eq!(key.access_key().as_bytes(), enc.access_key().as_bytes());
        assert_ne!(
            key.share_id(),
            ReadWriteKey::from_secret(&[8; 32]).share_id()
        );
    }

    #[test]
    fn key_strings_round_trip_with_kinds_and_lengths() {
        let texts = all_key_strings();
        let kinds = [KeyKind::ReadWrite, KeyKind::ReadOnly, KeyKind::Encrypted];
        for (text, kind) in texts.iter().zip(kinds) {
            assert_eq!(text.len(), kind.text_len());
            let parsed: FolderKey = text.parse().unwrap();
            assert_eq!(parsed.kind(), kind);
            assert_eq!(*parsed.to_key_string(), *text);
        }
        assert_eq!(KeyKind::ReadWrite.text_len(), 54);
        assert_eq!(KeyKind::ReadOnly.text_len(), 105);
    }

    #[test]
    fn parsing_accepts_lower_case_dashes_and_spaces() {
        let text = sample().to_key_string().to_string();
        let grouped: Vec<String> = text
            .to_lowercase()
            .as_bytes()
            .chunks(6)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        let pasted = format!("  {} \n", grouped.join("-").replacen('-', " ", 2));
        let parsed: ReadWriteKey = pasted.parse().unwrap();
        assert_eq!(parsed.share_id(), sample().share_id());
    }

    #[test]
    fn every_single_character_typo_is_caught() {
        for text in all_key_strings() {
            let bytes = text.as_bytes();
            for i in 0..bytes.len() {
                for &c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567" {
                    if c == bytes[i] {
                        continue;
                    }
                    let mut typo = bytes.to_vec();
                    typo[i] = c;
                    let typo = String::from_utf8(typo).unwrap();
                    assert!(typo.parse::<FolderKey>().is_err(), "typo at {i} accepted");
                }
            }
        }
    }

    #[test]
    fn every_adjacent_swap_is_caught() {
        for text in all_key_strings() {
            let bytes = text.as_bytes();
            for i in 0..bytes.len() - 1 {
                if bytes[i] == bytes[i + 1] {
                    continue;
                }
                let mut swapped = bytes.to_vec();
                swapped.swap(i, i + 1);
                let swapped = String::from_utf8(swapped).unwrap();
                assert!(
                    swapped.parse::<FolderKey>().is_err(),
                    "swap at {i} accepted"
                );
            }
        }
    }

    #[test]
    fn a_typo_reports_the_check_character() {
        let mut text = sample().to_key_string().to_string();
        let replacement = if text.as_bytes()[10] == b'A' {
            "B"
        } else {
            "A"
        };
        text.replace_range(10..11, replacement);
        assert_eq!(
            text.parse::<FolderKey>().unwrap_err(),
            KeyError::ChecksumMismatch
        );
    }

    #[test]
    fn truncated_or_extended_key_reports_its_length() {
        let text = sample().to_key_string().to_string();
        assert_eq!(
            text[..50].parse::<FolderKey>().unwrap_err(),
            KeyError::WrongLength {
                kind: KeyKind::ReadWrite,
                expected: 54,
                found: 50
            }
        );
        assert_eq!(
            format!("{text}AA").parse::<FolderKey>().unwrap_err(),
            KeyError::WrongLength {
                kind: KeyKind::ReadWrite,
                expected: 54,
                found: 56
            }
        );
    }

    #[test]
    fn padded_key_reports_the_padding_character() {
        let text = sample().to_key_string().to_string();
        assert_eq!(
            format!("{text}====").parse::<FolderKey>().unwrap_err(),
            KeyError::InvalidCharacter {
                character: '=',
                position: 55
            }
        );
    }

    #[test]
    fn characters_outside_base32_are_reported_with_position() {
        let mut text = sample().to_key_string().to_string();
        text.replace_range(3..4, "1");
        assert_eq!(
            text.parse::<FolderKey>().unwrap_err(),
            KeyError::InvalidCharacter {
                character: '1',
                position: 4
            }
        );
    }

    #[test]
    fn unknown_type_letter_and_empty_key_are_refused() {
        let text = sample().to_key_string().to_string();
        let other = format!("X{}", &text[1..]);
        assert_eq!(
            other.parse::<FolderKey>().unwrap_err(),
            KeyError::UnknownKeyType { letter: 'X' }
        );
        assert_eq!(" - ".parse::<FolderKey>().unwrap_err(), KeyError::EmptyKey);
    }

    #[test]
    fn weaker_key_where_stronger_is_needed_is_refused() {
        let ro = sample().read_only().to_key_string();
        assert_eq!(
            ro.parse::<ReadWriteKey>().unwrap_err(),
            KeyError::WrongKeyType {
                expected: KeyKind::ReadWrite,
                found: KeyKind::ReadOnly
            }
        );
        let enc: FolderKey = sample().encrypted().to_key_string().parse().unwrap();
        assert!(enc.data_key().is_none());
        assert_eq!(
            enc.to_read_only().unwrap_err(),
            KeyError::WrongKeyType {
                expected: KeyKind::ReadOnly,
                found: KeyKind::Encrypted
            }
        );
        let rw = sample().to_key_string();
        assert_eq!(
            rw.parse::<EncryptedKey>().unwrap_err(),
            KeyError::WrongKeyType {
                expected: KeyKind::Encrypted,
                found: KeyKind::ReadWrite
            }
        );
    }

    #[test]
    fn derived_keys_match_their_parsed_strings() {
        let key = sample();
        let rw: FolderKey = key.to_key_string().parse().unwrap();
        assert_eq!(
            *rw.to_read_only().unwrap().to_key_string(),
            *key.read_only().to_key_string()
        );
        assert_eq!(
            *rw.to_encrypted().to_key_string(),
            *key.encrypted().to_key_string()
        );
    }

    #[test]
    fn non_canonical_body_is_refused() {
        // 52 base32 characters carry 260 bits; the last 4 must be zero.
        let text = sample().encrypted().to_key_string().to_string();
        let body = &text[..53];
        let last = body.as_bytes()[52];
        let odd = if last == b'7' {
            'Z'
        } else {
            char::from(last + 1)
        };
        let forged = sealed(&format!("{}{odd}", &body[..52]));
        assert_eq!(
            forged.parse::<FolderKey>().unwrap_err(),
            KeyError::NonCanonicalKey
        );
    }

    #[test]
    fn small_order_verify_key_is_refused() {
        let mut identity = [0u8; 32];
        identity[0] = 1; // the neutral element: accepts forged signatures
        let body = format!("E{}", data_encoding::BASE32_NOPAD.encode(&identity));
        assert_eq!(
            sealed(&body).parse::<FolderKey>().unwrap_err(),
            KeyError::InvalidVerifyKey
        );
        assert_eq!(
            VerifyKey::from_bytes(&identity).unwrap_err(),
            KeyError::InvalidVerifyKey
        );
    }

    #[test]
    fn debug_output_never_shows_key_material() {
        let key = sample();
        let secret_text = key.to_key_string().to_string();
        let shown = format!(
            "{key:?} {:?} {:?} {:?} {:?} {:?}",
            key.read_only(),
            key.encrypted(),
            key.data_key(),
            key.access_key(),
            key.verify_key()
        );
        assert!(!shown.contains(&secret_text[1..20]), "{shown}");
        let hex_of = |b: &[u8; 32]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        for bytes in [
            key.verify_key().as_bytes(),
            key.data_key().as_bytes(),
            key.access_key().as_bytes(),
        ] {
            assert!(!shown.contains(&hex_of(bytes)[..16]));
        }
        assert!(shown.contains("ReadWriteKey"));
    }
}
