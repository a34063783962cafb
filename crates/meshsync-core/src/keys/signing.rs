//! Signed index updates: read-write devices sign each batch of index entries
//! with the folder's signing key; holders of any key type verify.
//!
//! The signature is ed25519 (verified strictly: no malleable signatures, no
//! small-order keys) over a fixed-size message that binds the batch to one
//! folder and one position in the sender's sequence:
//!
//! ```text
//! "meshsync v1 index batch\0" (24 bytes) ‖ ShareId (32) ‖ sequence (u64 BE, 8) ‖ BLAKE3(payload) (32)
//! ```
//!
//! so a signature made by another folder's key, or replayed at another
//! sequence number, fails. The payload is hashed first so a batch of any size
//! is signed without copying it. What the payload is (the encoded entries) is
//! the caller's business: this module is generic over bytes.
//!
//! Never: accept a batch without a signature.

use ed25519_dalek::{Signature, Signer};

use super::KeyError;
use super::folder::{ReadWriteKey, VerifyKey};
use crate::ids::ShareId;

/// The label that opens every signed batch message.
pub(crate) const BATCH_LABEL: &[u8; 24] = b"meshsync v1 index batch\0";

/// Bytes in a signed batch message.
const BATCH_MESSAGE_LEN: usize = 24 + 32 + 8 + 32;

/// An ed25519 signature over one index batch.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BatchSignature([u8; 64]);

impl BatchSignature {
    /// Wraps the 64 bytes of a signature (as read from the wire).
    pub fn from_bytes(bytes: [u8; 64]) -> Self {
        BatchSignature(bytes)
    }

    /// Reads a signature of unknown length: empty is
    /// [`KeyError::MissingSignature`], any length but 64 is
    /// [`KeyError::MalformedSignature`].
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        match <[u8; 64]>::try_from(bytes) {
            Ok(array) => Ok(BatchSignature(array)),
            Err(_) if bytes.is_empty() => Err(KeyError::MissingSignature),
            Err(_) => Err(KeyError::MalformedSignature { len: bytes.len() }),
        }
    }

    /// The 64 signature bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        self.0
    }
}

impl std::fmt::Debug for BatchSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BatchSignature({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// The message that is signed for a batch.
pub(crate) fn batch_message(
    share_id: &ShareId,
    sequence: u64,
    payload: &[u8],
) -> [u8; BATCH_MESSAGE_LEN] {
    let mut message = [0u8; BATCH_MESSAGE_LEN];
    message[..24].copy_from_slice(BATCH_LABEL);
    message[24..56].copy_from_slice(share_id.as_bytes());
    message[56..64].copy_from_slice(&sequence.to_be_bytes());
    message[64..].copy_from_slice(blake3::hash(payload).as_bytes());
    message
}

/// Signs one batch of index entries, numbered `sequence` by the sender. The
/// folder's [`ShareId`] is taken from the key, so it cannot disagree with it.
pub fn sign_batch(key: &ReadWriteKey, sequence: u64, payload: &[u8]) -> BatchSignature {
    let message = batch_message(&key.share_id(), sequence, payload);
    BatchSignature(key.signing_key().sign(&message).to_bytes())
}

/// Verifies the signature of one batch, numbered `sequence`, against the
/// folder's verify key. `None` (the batch came unsigned) is
/// [`KeyError::MissingSignature`]; a signature that does not verify for this
/// folder, sequence and payload is [`KeyError::BadSignature`].
pub fn verify_batch(
    key: &VerifyKey,
    sequence: u64,
    payload: &[u8],
    signature: Option<&BatchSignature>,
) -> Result<(), KeyError> {
    let signature = signature.ok_or(KeyError::MissingSignature)?;
    let message = batch_message(&key.share_id(), sequence, payload);
    key.ed25519()
        .verify_strict(&message, &Signature::from_bytes(&signature.0))
        .map_err(|_| KeyError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::FolderKey;

    fn folder(seed: u8) -> ReadWriteKey {
        ReadWriteKey::from_secret(&[seed; 32])
    }

    #[test]
    fn every_key_type_verifies_a_read_write_signature() {
        let rw = folder(1);
        let sig = sign_batch(&rw, 7, b"entries");
        let ro = rw.read_only();
        let enc = rw.encrypted();
        for verify in [rw.verify_key(), ro.verify_key(), enc.verify_key()] {
            assert_eq!(verify_batch(verify, 7, b"entries", Some(&sig)), Ok(()));
        }
    }

    #[test]
    fn signature_from_another_folder_is_refused() {
        let sig = sign_batch(&folder(2), 7, b"entries");
        let err = verify_batch(folder(1).verify_key(), 7, b"entries", Some(&sig));
        assert_eq!(err, Err(KeyError::BadSignature));
    }

    #[test]
    fn signature_replayed_at_another_sequence_is_refused() {
        let rw = folder(1);
        let sig = sign_batch(&rw, 7, b"entries");
        assert_eq!(
            verify_batch(rw.verify_key(), 8, b"entries", Some(&sig)),
            Err(KeyError::BadSignature)
        );
    }

    #[test]
    fn altered_payload_or_signature_is_refused() {
        let rw = folder(1);
        let sig = sign_batch(&rw, 7, b"entries");
        assert_eq!(
            verify_batch(rw.verify_key(), 7, b"entrieS", Some(&sig)),
            Err(KeyError::BadSignature)
        );
        let mut bytes = sig.to_bytes();
        bytes[10] ^= 1;
        let flipped = BatchSignature::from_bytes(bytes);
        assert_eq!(
            verify_batch(rw.verify_key(), 7, b"entries", Some(&flipped)),
            Err(KeyError::BadSignature)
        );
    }

    #[test]
    fn missing_or_malformed_signature_is_refused() {
        let rw = folder(1);
        assert_eq!(
            verify_batch(rw.verify_key(), 7, b"entries", None),
            Err(KeyError::MissingSignature)
        );
        assert_eq!(
            BatchSignature::from_slice(&[]),
            Err(KeyError::MissingSignature)
        );
        assert_eq!(
            BatchSignature::from_slice(&[0; 63]),
            Err(KeyError::MalformedSignature { len: 63 })
        );
        let sig = sign_batch(&rw, 7, b"entries");
        assert_eq!(BatchSignature::from_slice(&sig.to_bytes()), Ok(sig));
    }

    #[test]
    fn read_only_key_cannot_be_used_to_sign() {
        let ro_text = folder(1).read_only().to_key_string();
        let parsed: FolderKey = ro_text.parse().unwrap();
        assert_eq!(
            parsed.into_read_write().unwrap_err(),
            KeyError::WrongKeyType {
                expected: crate::keys::KeyKind::ReadWrite,
                found: crate::keys::KeyKind::ReadOnly
            }
        );
    }
}
