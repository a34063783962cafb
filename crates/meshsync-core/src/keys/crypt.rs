//! Storage-only encryption: what a peer holding only an [`EncryptedKey`]
//! stores and serves, and how holders of the [`DataKey`] make and read it.
//!
//! Both schemes are deterministic, so a storage-only peer can still dedupe
//! and serve deltas without learning anything but equality:
//!
//! - **Names**, one path component at a time (so directory structure maps and
//!   a directory rename renames one ciphertext name): a synthetic nonce
//!   `N = BLAKE3-keyed(name nonce key, name)[..24]`, then
//!   XChaCha20-Poly1305 under the name cipher key with nonce `N` and
//!   associated data `"meshsync v1 name"`. The encrypted name is lower-case
//!   base32 (no padding) of `N ‖ ciphertext ‖ tag`, a valid file name on
//!   case-insensitive file systems too. Decryption re-derives `N` from the
//!   plaintext and refuses a mismatch, so each name has exactly one encrypted
//!   form. Equal names in different directories encrypt equally (a known,
//!   accepted leak: it is what lets a rename of a directory leave its children
//!   untouched). With 40 bytes of overhead and base32's 8/5 growth, a
//!   component of at most [`NAME_MAX_PLAINTEXT_LEN`] bytes fits the usual
//!   255-byte limit; longer names are refused.
//! - **Chunks**: from the chunk's plaintext BLAKE3 hash `H`,
//!   `K ‖ N = BLAKE3-keyed-XOF(chunk key, H)[..56]` (a 32-byte key and a
//!   24-byte nonce), then XChaCha20-Poly1305 with associated data
//!   `"meshsync v1 chunk"`. Identical chunks give identical ciphertext
//!   (convergent encryption, within one folder only); every chunk has its own
//!   key, so no nonce is ever reused under one key. A storage-only peer indexes
//!   and serves chunks by the ciphertext's own BLAKE3 hash.
//!
//! The three subkeys are `BLAKE3-derive_key(context, data key)` with the
//! contexts below. See `docs/keys.md` for the byte-exact description.
//!
//! Never: a decrypt method reachable from an [`EncryptedKey`]; returning a
//! decrypted chunk whose hash was not checked.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use data_encoding::BASE32_NOPAD;
use zeroize::{Zeroize, Zeroizing};

#[cfg(doc)]
use super::EncryptedKey;
use super::KeyError;
use super::folder::DataKey;
use super::text::base32_len;
use crate::ids::Hash;

/// `derive_key` context of the key that makes synthetic name nonces.
pub(crate) const NAME_NONCE_CONTEXT: &str = "meshsync v1 name nonce key";
/// `derive_key` context of the key that encrypts names.
pub(crate) const NAME_CIPHER_CONTEXT: &str = "meshsync v1 name cipher key";
/// `derive_key` context of the key that derives per-chunk keys and nonces.
pub(crate) const CHUNK_CONTEXT: &str = "meshsync v1 chunk key";
/// Associated data of every encrypted name.
pub(crate) const NAME_AAD: &[u8] = b"meshsync v1 name";
/// Associated data of every encrypted chunk.
pub(crate) const CHUNK_AAD: &[u8] = b"meshsync v1 chunk";

/// Bytes the encryption adds to a name: a 24-byte nonce and a 16-byte tag.
const NAME_OVERHEAD: usize = 24 + 16;

/// The longest encrypted name, in bytes (the common file-system limit).
pub const ENCRYPTED_NAME_MAX_LEN: usize = 255;

/// The longest plaintext name component that can be encrypted, in bytes.
pub const NAME_MAX_PLAINTEXT_LEN: usize = 119;

const _: () = assert!(base32_len(NAME_OVERHEAD + NAME_MAX_PLAINTEXT_LEN) <= ENCRYPTED_NAME_MAX_LEN);
const _: () =
    assert!(base32_len(NAME_OVERHEAD + NAME_MAX_PLAINTEXT_LEN + 1) > ENCRYPTED_NAME_MAX_LEN);

/// One chunk, encrypted for storage-only peers.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptedChunk {
    /// BLAKE3 of the plaintext: what readers need to decrypt (it selects the
    /// key). Secret from storage-only peers.
    pub plain_hash: Hash,
    /// XChaCha20-Poly1305 ciphertext and tag (plaintext length + 16 bytes).
    pub ciphertext: Vec<u8>,
    /// BLAKE3 of `ciphertext`: the name a storage-only peer indexes and
    /// serves the chunk under.
    pub cipher_hash: Hash,
}

impl std::fmt::Debug for EncryptedChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedChunk")
            .field("len", &self.ciphertext.len())
            .field("cipher_hash", &self.cipher_hash)
            .finish_non_exhaustive()
    }
}

impl DataKey {
    pub(super) fn subkey(&self, context: &str) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(context, self.as_bytes()))
    }

    fn name_cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new_from_slice(&self.subkey(NAME_CIPHER_CONTEXT)[..])
            .expect("32-byte key")
    }

    fn name_nonce(&self, name: &[u8]) -> [u8; 24] {
        let hash = blake3::keyed_hash(&self.subkey(NAME_NONCE_CONTEXT), name);
        hash.as_bytes()[..24].try_into().expect("24 of 32 bytes")
    }

    /// Encrypts one path component (no `/`). The same name always gives the
    /// same encrypted name.
    pub fn encrypt_name(&self, name: &str) -> Result<String, KeyError> {
        if name.is_empty() || name.contains('/') {
            return Err(KeyError::InvalidNameComponent);
        }
        if name.len() > NAME_MAX_PLAINTEXT_LEN {
            return Err(KeyError::NameTooLong {
                len: name.len(),
                max: NAME_MAX_PLAINTEXT_LEN,
            });
        }
        let nonce = self.name_nonce(name.as_bytes());
        let sealed = self
            .name_cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: name.as_bytes(),
                    aad: NAME_AAD,
                },
            )
            .expect("XChaCha20-Poly1305 encrypts any name of at most 119 bytes");
        let mut raw = Vec::with_capacity(NAME_OVERHEAD + name.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&sealed);
        Ok(BASE32_NOPAD.encode(&raw).to_ascii_lowercase())
    }

    /// Decrypts one encrypted path component.
    pub fn decrypt_name(&self, encrypted: &str) -> Result<String, KeyError> {
        let malformed = || KeyError::MalformedEncryptedName(encrypted.to_owned());
        if encrypted.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(malformed());
        }
        let raw = BASE32_NOPAD
            .decode(encrypted.to_ascii_uppercase().as_bytes())
            .map_err(|_| malformed())?;
        if raw.len() <= NAME_OVERHEAD {
            return Err(malformed());
        }
        let (nonce, sealed) = raw.split_at(24);
        let plain = Zeroizing::new(
            self.name_cipher()
                .decrypt(
                    &XNonce::try_from(nonce).expect("24 bytes"),
                    Payload {
                        msg: sealed,
                        aad: NAME_AAD,
                    },
                )
                .map_err(|_| KeyError::NameDecryptionFailed)?,
        );
        // Only the canonical (synthetic-nonce) form of a name is accepted, so
        // one name never has two encrypted forms.
        if self.name_nonce(&plain) != nonce {
            return Err(KeyError::NameDecryptionFailed);
        }
        let name = String::from_utf8(plain.to_vec()).map_err(|_| KeyError::NameDecryptionFailed)?;
        if name.is_empty() || name.contains('/') {
            return Err(KeyError::NameDecryptionFailed);
        }
        Ok(name)
    }

    /// Encrypts a relative path (`/`-separated) component by component.
    pub fn encrypt_path(&self, path: &str) -> Result<String, KeyError> {
        let parts = path
            .split('/')
            .map(|component| self.encrypt_name(component))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(parts.join("/"))
    }

    /// Decrypts a path made by [`DataKey::encrypt_path`].
    pub fn decrypt_path(&self, encrypted: &str) -> Result<String, KeyError> {
        let parts = encrypted
            .split('/')
            .map(|component| self.decrypt_name(component))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(parts.join("/"))
    }

    /// `K ‖ N` of the chunk whose plaintext hash is `plain_hash`.
    fn chunk_key_and_nonce(&self, plain_hash: &Hash) -> Zeroizing<[u8; 56]> {
        let mut okm = Zeroizing::new([0u8; 56]);
        blake3::Hasher::new_keyed(&self.subkey(CHUNK_CONTEXT))
            .update(&plain_hash.0)
            .finalize_xof()
            .fill(&mut okm[..]);
        okm
    }

    /// The cipher of the chunk whose plaintext hash is `plain_hash`.
    fn chunk_cipher(&self, plain_hash: &Hash) -> ChunkCipher {
        let okm = self.chunk_key_and_nonce(plain_hash);
        ChunkCipher::new(
            okm[..32].try_into().expect("32 bytes"),
            okm[32..].try_into().expect("24 bytes"),
        )
    }

    /// Encrypts one chunk for storage-only peers.
    pub fn encrypt_chunk(&self, plaintext: &[u8]) -> EncryptedChunk {
        self.encrypt_chunk_with_hash(Hash::of(plaintext), plaintext)
    }

    /// [`DataKey::encrypt_chunk`] for a caller that has just checked that
    /// `plain_hash` is BLAKE3 of `plaintext` (a verified read), sparing a
    /// second hash pass. A wrong hash gives ciphertext no reader accepts
    /// (decryption checks the plaintext against the hash), never a wrong
    /// plaintext.
    pub fn encrypt_chunk_with_hash(&self, plain_hash: Hash, plaintext: &[u8]) -> EncryptedChunk {
        let ciphertext = self.chunk_cipher(&plain_hash).seal(plaintext);
        let cipher_hash = Hash::of(&ciphertext);
        EncryptedChunk {
            plain_hash,
            ciphertext,
            cipher_hash,
        }
    }

    /// Decrypts a chunk whose plaintext hash (from the signed index) is
    /// `plain_hash`, and checks the plaintext against it.
    pub fn decrypt_chunk(&self, plain_hash: &Hash, ciphertext: &[u8]) -> Result<Vec<u8>, KeyError> {
        let plaintext = self
            .chunk_cipher(plain_hash)
            .open(ciphertext)
            .ok_or(KeyError::ChunkDecryptionFailed)?;
        if Hash::of(&plaintext) != *plain_hash {
            return Err(KeyError::ChunkHashMismatch);
        }
        Ok(plaintext)
    }
}

/// XChaCha20-Poly1305 for chunks, computed as its definition goes: the
/// subkey `HChaCha20(K, N[..16])`, then the IETF ChaCha20-Poly1305 (RFC 8439)
/// of ring with nonce `0⁴ ‖ N[16..]`. Byte for byte the same AEAD as the
/// `chacha20poly1305` crate's (the chunk vectors of `docs/keys.md` pin it),
/// but ring's assembly runs it about 1.6 times as fast here (1.3 against
/// 0.8 GiB/s for 77 KiB chunks), and chunks are the bulk of what a device
/// encrypts for a storage peer. Names and metadata are short and keep the
/// `chacha20poly1305` crate.
struct ChunkCipher {
    key: ring::aead::LessSafeKey,
    nonce: [u8; 12],
}

impl ChunkCipher {
    fn new(key: &[u8; 32], nonce: &[u8; 24]) -> Self {
        let mut subkey = chacha20::hchacha::<chacha20::R20>(
            key.into(),
            nonce[..16].try_into().expect("16 bytes"),
        );
        let key = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, subkey.as_slice())
                .expect("a 32-byte key"),
        );
        subkey.as_mut_slice().zeroize();
        let mut ietf_nonce = [0u8; 12];
        ietf_nonce[4..].copy_from_slice(&nonce[16..]);
        ChunkCipher {
            key,
            nonce: ietf_nonce,
        }
    }

    /// Ciphertext ‖ tag.
    fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + ring::aead::MAX_TAG_LEN);
        out.extend_from_slice(plaintext);
        self.key
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(self.nonce),
                ring::aead::Aad::from(CHUNK_AAD),
                &mut out,
            )
            .expect("ChaCha20-Poly1305 encrypts up to 256 GiB");
        out
    }

    /// The plaintext, if the tag checks.
    fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        let mut buf = sealed.to_vec();
        let len = self
            .key
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key(self.nonce),
                ring::aead::Aad::from(CHUNK_AAD),
                &mut buf,
            )
            .ok()?
            .len();
        buf.truncate(len);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::ReadWriteKey;

    fn data_key(seed: u8) -> DataKey {
        ReadWriteKey::from_secret(&[seed; 32]).data_key().clone()
    }

    #[test]
    fn names_are_deterministic_and_round_trip() {
        let key = data_key(5);
        let a = key.encrypt_name("report.pdf").unwrap();
        assert_eq!(a, key.encrypt_name("report.pdf").unwrap());
        assert_ne!(a, key.encrypt_name("report.pdF").unwrap());
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
        );
        assert_eq!(key.decrypt_name(&a).unwrap(), "report.pdf");
    }

    #[test]
    fn paths_map_component_by_component() {
        let key = data_key(5);
        let enc = key.encrypt_path("docs/2024/report.pdf").unwrap();
        let parts: Vec<&str> = enc.split('/').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], key.encrypt_name("docs").unwrap());
        assert_eq!(key.decrypt_path(&enc).unwrap(), "docs/2024/report.pdf");
        assert_eq!(
            key.encrypt_path("a//b"),
            Err(KeyError::InvalidNameComponent)
        );
    }

    #[test]
    fn name_length_limit_holds() {
        let key = data_key(5);
        let longest = "n".repeat(NAME_MAX_PLAINTEXT_LEN);
        let enc = key.encrypt_name(&longest).unwrap();
        assert!(enc.len() <= ENCRYPTED_NAME_MAX_LEN, "{}", enc.len());
        assert_eq!(
            key.encrypt_name(&format!("{longest}n")),
            Err(KeyError::NameTooLong { len: 120, max: 119 })
        );
        let multibyte = "é".repeat(59); // 118 bytes
        assert_eq!(
            key.decrypt_name(&key.encrypt_name(&multibyte).unwrap())
                .unwrap(),
            multibyte
        );
    }

    #[test]
    fn foreign_or_altered_names_are_refused() {
        let enc = data_key(5).encrypt_name("secret.txt").unwrap();
        assert_eq!(
            data_key(6).decrypt_name(&enc),
            Err(KeyError::NameDecryptionFailed)
        );
        let mut altered = enc.clone().into_bytes();
        altered[60] = if altered[60] == b'a' { b'b' } else { b'a' };
        let altered = String::from_utf8(altered).unwrap();
        assert_eq!(
            data_key(5).decrypt_name(&altered),
            Err(KeyError::NameDecryptionFailed)
        );
        assert!(matches!(
            data_key(5).decrypt_name(&enc.to_ascii_uppercase()),
            Err(KeyError::MalformedEncryptedName(_))
        ));
        assert!(matches!(
            data_key(5).decrypt_name("abc"),
            Err(KeyError::MalformedEncryptedName(_))
        ));
    }

    #[test]
    fn chunks_dedupe_as_ciphertext_and_round_trip() {
        let key = data_key(5);
        let chunk = vec![7u8; 4096];
        let a = key.encrypt_chunk(&chunk);
        let b = key.encrypt_chunk(&chunk);
        assert_eq!(a, b);
        assert_eq!(a.ciphertext.len(), chunk.len() + 16);
        assert_eq!(a.cipher_hash, Hash::of(&a.ciphertext));
        assert_ne!(a.cipher_hash, a.plain_hash);
        assert_eq!(
            key.decrypt_chunk(&a.plain_hash, &a.ciphertext).unwrap(),
            chunk
        );
        // Another folder's same chunk is different ciphertext.
        assert_ne!(data_key(6).encrypt_chunk(&chunk).cipher_hash, a.cipher_hash);
    }

    #[test]
    fn foreign_altered_or_forged_chunks_are_refused() {
        let key = data_key(5);
        let enc = key.encrypt_chunk(b"chunk bytes");
        assert_eq!(
            data_key(6).decrypt_chunk(&enc.plain_hash, &enc.ciphertext),
            Err(KeyError::ChunkDecryptionFailed)
        );
        let mut altered = enc.ciphertext.clone();
        altered[0] ^= 1;
        assert_eq!(
            key.decrypt_chunk(&enc.plain_hash, &altered),
            Err(KeyError::ChunkDecryptionFailed)
        );
        // A data-key holder encrypting other bytes under this hash's key:
        let okm = key.chunk_key_and_nonce(&enc.plain_hash);
        let forged = XChaCha20Poly1305::new_from_slice(&okm[..32])
            .unwrap()
            .encrypt(
                &XNonce::try_from(&okm[32..]).unwrap(),
                Payload {
                    msg: b"evil bytes!",
                    aad: CHUNK_AAD,
                },
            )
            .unwrap();
        assert_eq!(
            key.decrypt_chunk(&enc.plain_hash, &forged),
            Err(KeyError::ChunkHashMismatch)
        );
    }

    /// The ring-backed chunk cipher is the XChaCha20-Poly1305 of the
    /// `chacha20poly1305` crate, byte for byte, at every length around the
    /// block sizes.
    #[test]
    fn chunk_cipher_is_xchacha20_poly1305() {
        let key: [u8; 32] = std::array::from_fn(|i| (i * 7 + 1) as u8);
        let nonce: [u8; 24] = std::array::from_fn(|i| (i * 13 + 5) as u8);
        let reference = XChaCha20Poly1305::new_from_slice(&key).unwrap();
        let ours = ChunkCipher::new(&key, &nonce);
        for len in [
            0,
            1,
            15,
            16,
            17,
            63,
            64,
            65,
            255,
            256,
            257,
            1000,
            4096,
            77 * 1024 + 3,
        ] {
            let msg: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let expected = reference
                .encrypt(
                    &XNonce::from(nonce),
                    Payload {
                        msg: &msg,
                        aad: CHUNK_AAD,
                    },
                )
                .unwrap();
            let sealed = ours.seal(&msg);
            assert_eq!(sealed, expected, "length {len}");
            assert_eq!(ours.open(&sealed).as_deref(), Some(&msg[..]));
            let mut bad = sealed.clone();
            bad[len / 2] ^= 0x80;
            assert_eq!(ours.open(&bad), None, "length {len} altered");
        }
        assert_eq!(ours.open(&[0u8; 15]), None, "shorter than a tag");
    }
}
