//! The two primitives under sealed index entries (what storage-only peers
//! hold instead of plaintext entries; see [`crate::encrypted_index`]):
//!
//! - **Metadata sealing**: deterministic authenticated encryption of an
//!   entry's private fields (size, mtime, permissions, symlink target,
//!   plaintext chunk hashes), bound to the entry's encrypted path. Built like
//!   the name encryption (SIV-like): a synthetic nonce
//!   `N = BLAKE3-keyed(metadata nonce key, aad ‖ plaintext)[..24]`, then
//!   XChaCha20-Poly1305 under the metadata cipher key with associated data
//!   `aad = "meshsync v1 metadata\0" ‖ u32be(len(path)) ‖ path`. The sealed
//!   blob is `N ‖ ciphertext ‖ tag`; opening recomputes `N` and refuses a
//!   mismatch. Identical metadata at one path seals identically (re-sending
//!   an entry costs nothing new and signatures stay stable); the same
//!   metadata at two paths seals differently, so equal sizes or mtimes are
//!   not visible as equal blobs.
//! - **Entry signatures**: Ed25519 by the folder's signing key over
//!   `"meshsync v1 sealed entry\0" ‖ ShareId ‖ BLAKE3(entry encoding)`
//!   (89 bytes), verified strictly. What the entry encoding is belongs to
//!   [`crate::encrypted_index`]; this module signs bytes.
//!
//! Both subkeys are `BLAKE3-derive_key(context, data key)` with the contexts
//! below; `docs/keys.md` ("Sealed index entries") is the byte-exact
//! description, with test vectors.
//!
//! Never: a way to open metadata from an [`EncryptedKey`](super::EncryptedKey)
//! (it has no data key), or a signature made by anything but a read-write key.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signature, Signer};
use zeroize::Zeroizing;

use super::KeyError;
use super::folder::{DataKey, ReadWriteKey, VerifyKey};

/// `derive_key` context of the key that makes synthetic metadata nonces.
pub(crate) const METADATA_NONCE_CONTEXT: &str = "meshsync v1 metadata nonce key";
/// `derive_key` context of the key that encrypts metadata.
pub(crate) const METADATA_CIPHER_CONTEXT: &str = "meshsync v1 metadata cipher key";
/// The label that opens the associated data of sealed metadata.
pub(crate) const METADATA_AAD_LABEL: &[u8; 21] = b"meshsync v1 metadata\0";
/// The label that opens every signed entry message.
pub(crate) const ENTRY_LABEL: &[u8; 25] = b"meshsync v1 sealed entry\0";

/// Bytes sealing adds to metadata: a 24-byte nonce and a 16-byte tag.
pub const METADATA_OVERHEAD: usize = 24 + 16;

/// Bytes in a signed entry message.
const ENTRY_MESSAGE_LEN: usize = 25 + 32 + 32;

/// An Ed25519 signature over one sealed index entry.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EntrySignature([u8; 64]);

impl EntrySignature {
    /// Wraps the 64 bytes of a signature.
    pub fn from_bytes(bytes: [u8; 64]) -> Self {
        EntrySignature(bytes)
    }

    /// The 64 signature bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        self.0
    }
}

impl std::fmt::Debug for EntrySignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EntrySignature({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// The associated data of metadata sealed for the entry at `path` (its
/// encrypted form).
fn metadata_aad(path: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(METADATA_AAD_LABEL.len() + 4 + path.len());
    aad.extend_from_slice(METADATA_AAD_LABEL);
    aad.extend_from_slice(&(path.len() as u32).to_be_bytes());
    aad.extend_from_slice(path);
    aad
}

impl DataKey {
    fn metadata_cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new_from_slice(&self.subkey(METADATA_CIPHER_CONTEXT)[..])
            .expect("32-byte key")
    }

    fn metadata_nonce(&self, aad: &[u8], plaintext: &[u8]) -> [u8; 24] {
        let hash = blake3::Hasher::new_keyed(&self.subkey(METADATA_NONCE_CONTEXT))
            .update(aad)
            .update(plaintext)
            .finalize();
        hash.as_bytes()[..24].try_into().expect("24 of 32 bytes")
    }

    /// Seals an entry's private metadata, bound to `path` (the entry's
    /// encrypted path, as text bytes). Deterministic.
    pub fn seal_metadata(&self, path: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let aad = metadata_aad(path);
        let nonce = self.metadata_nonce(&aad, plaintext);
        let sealed = self
            .metadata_cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 encrypts up to 256 GiB");
        let mut out = Vec::with_capacity(METADATA_OVERHEAD + plaintext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens metadata sealed by [`DataKey::seal_metadata`] for `path`. Only
    /// the canonical (synthetic-nonce) form is accepted.
    pub fn open_metadata(
        &self,
        path: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        if sealed.len() < METADATA_OVERHEAD {
            return Err(KeyError::MetadataDecryptionFailed);
        }
        let aad = metadata_aad(path);
        let (nonce, body) = sealed.split_at(24);
        let plain = Zeroizing::new(
            self.metadata_cipher()
                .decrypt(
                    &XNonce::try_from(nonce).expect("24 bytes"),
                    Payload {
                        msg: body,
                        aad: &aad,
                    },
                )
                .map_err(|_| KeyError::MetadataDecryptionFailed)?,
        );
        if self.metadata_nonce(&aad, &plain) != nonce {
            return Err(KeyError::MetadataDecryptionFailed);
        }
        Ok(plain)
    }
}

/// The message signed for an entry whose canonical encoding is `encoding`.
pub(crate) fn entry_message(key: &VerifyKey, encoding: &[u8]) -> [u8; ENTRY_MESSAGE_LEN] {
    let mut message = [0u8; ENTRY_MESSAGE_LEN];
    message[..25].copy_from_slice(ENTRY_LABEL);
    message[25..57].copy_from_slice(key.share_id().as_bytes());
    message[57..].copy_from_slice(blake3::hash(encoding).as_bytes());
    message
}

/// Signs one sealed entry's canonical encoding with the folder's signing key.
pub fn sign_entry(key: &ReadWriteKey, encoding: &[u8]) -> EntrySignature {
    let message = entry_message(key.verify_key(), encoding);
    EntrySignature(key.signing_key().sign(&message).to_bytes())
}

/// Verifies a sealed entry's signature against the folder's verify key
/// ([`KeyError::BadSignature`] if it does not verify for this folder and
/// these bytes).
pub fn verify_entry(
    key: &VerifyKey,
    encoding: &[u8],
    signature: &EntrySignature,
) -> Result<(), KeyError> {
    let message = entry_message(key, encoding);
    key.ed25519()
        .verify_strict(&message, &Signature::from_bytes(&signature.0))
        .map_err(|_| KeyError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> ReadWriteKey {
        ReadWriteKey::from_secret(&[seed; 32])
    }

    #[test]
    fn metadata_is_deterministic_bound_to_its_path_and_round_trips() {
        let k = key(3);
        let data = k.data_key();
        let a = data.seal_metadata(b"aaaa/bbbb", b"size 12");
        assert_eq!(a, data.seal_metadata(b"aaaa/bbbb", b"size 12"));
        assert_eq!(a.len(), METADATA_OVERHEAD + 7);
        // The same metadata at another path seals differently.
        assert_ne!(a, data.seal_metadata(b"aaaa/cccc", b"size 12"));
        assert_eq!(
            &data.open_metadata(b"aaaa/bbbb", &a).unwrap()[..],
            b"size 12"
        );
        assert_eq!(
            data.open_metadata(b"aaaa/cccc", &a),
            Err(KeyError::MetadataDecryptionFailed)
        );
        assert_eq!(
            key(4).data_key().open_metadata(b"aaaa/bbbb", &a),
            Err(KeyError::MetadataDecryptionFailed)
        );
        let mut altered = a.clone();
        altered[30] ^= 1;
        assert_eq!(
            data.open_metadata(b"aaaa/bbbb", &altered),
            Err(KeyError::MetadataDecryptionFailed)
        );
        assert_eq!(
            data.open_metadata(b"aaaa/bbbb", &a[..39]),
            Err(KeyError::MetadataDecryptionFailed)
        );
    }

    #[test]
    fn a_non_canonical_nonce_is_refused() {
        // A data-key holder sealing under another nonce makes a second form;
        // it must not open.
        let k = key(3);
        let data = k.data_key();
        let aad = metadata_aad(b"p");
        let nonce = [7u8; 24];
        let body = data
            .metadata_cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: b"meta",
                    aad: &aad,
                },
            )
            .unwrap();
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&body);
        assert_eq!(
            data.open_metadata(b"p", &blob),
            Err(KeyError::MetadataDecryptionFailed)
        );
    }

    #[test]
    fn entry_signatures_bind_folder_and_bytes() {
        let k = key(1);
        let sig = sign_entry(&k, b"entry");
        for verify in [
            k.verify_key(),
            k.read_only().verify_key(),
            k.encrypted().verify_key(),
        ] {
            assert_eq!(verify_entry(verify, b"entry", &sig), Ok(()));
        }
        assert_eq!(
            verify_entry(k.verify_key(), b"entrY", &sig),
            Err(KeyError::BadSignature)
        );
        assert_eq!(
            verify_entry(key(2).verify_key(), b"entry", &sig),
            Err(KeyError::BadSignature)
        );
        let mut bytes = sig.to_bytes();
        bytes[5] ^= 1;
        assert_eq!(
            verify_entry(k.verify_key(), b"entry", &EntrySignature::from_bytes(bytes)),
            Err(KeyError::BadSignature)
        );
        // An index-batch signature over the same bytes is not an entry
        // signature (other label).
        let batch = crate::keys::sign_batch(&k, 0, b"entry");
        assert_eq!(
            verify_entry(
                k.verify_key(),
                b"entry",
                &EntrySignature::from_bytes(batch.to_bytes())
            ),
            Err(KeyError::BadSignature)
        );
    }
}
