//! Proofs bound to one connection, made after the TLS handshake for each
//! folder a side offers:
//!
//! - **Access proof**: the side holds the folder's [`AccessKey`] (any key
//!   type has it). `BLAKE3-keyed(access key, "meshsync v1 access proof\0" ‖
//!   role ‖ channel binding)`.
//! - **Read proof**: the side holds the folder's [`DataKey`] (a read-write or
//!   read-only key; a storage-only key has none). The access key is the same
//!   for every key type, so the access proof cannot tell a reader from a
//!   storage-only peer, which could then claim to read and be sent plaintext
//!   names and chunk hashes. `BLAKE3-keyed(read proof key, "meshsync v1 read
//!   proof\0" ‖ role ‖ channel binding)` with `read proof key =
//!   BLAKE3-derive_key("meshsync v1 folder read proof key", data key)`. Only a
//!   holder of the data key can check one; a storage-only side has nothing in
//!   plaintext to give away, so it need not.
//!
//! Both are 32 bytes. The role byte is 1 for the side that opened the
//! connection ([`ProofRole::Initiator`], the TLS client) and 2 for the other
//! ([`ProofRole::Responder`]); the channel binding is the TLS exporter secret
//! of the connection (`docs/keys.md`, "Proofs"). So a proof cannot be
//! replayed on another connection (other exporter bytes), nor reflected back
//! to its sender (other role). Knowing the public
//! [`ShareId`](crate::ids::ShareId) is not enough to make either.
//!
//! Proofs are compared in constant time (`subtle`).
//!
//! Never: accept a proof without a channel binding, or compare one with `==`.

use subtle::ConstantTimeEq;

use zeroize::Zeroizing;

use super::KeyError;
use super::folder::{AccessKey, DataKey};

/// The label at the start of every proven message.
pub(crate) const PROOF_LABEL: &[u8; 25] = b"meshsync v1 access proof\0";

/// BLAKE3 `derive_key` context of the read proof key (input: the data key).
pub(crate) const READ_PROOF_KEY_CONTEXT: &str = "meshsync v1 folder read proof key";

/// The label at the start of every read-proven message.
pub(crate) const READ_PROOF_LABEL: &[u8; 23] = b"meshsync v1 read proof\0";

/// The shortest channel binding accepted, in bytes (a TLS exporter secret for
/// meshsync is 32).
pub const CHANNEL_BINDING_MIN_LEN: usize = 16;

/// Which end of the connection made a proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofRole {
    /// The side that opened the connection (the TLS client).
    Initiator,
    /// The side that accepted it (the TLS server).
    Responder,
}

impl ProofRole {
    /// The byte that stands for the role in the proven message.
    fn byte(self) -> u8 {
        match self {
            ProofRole::Initiator => 1,
            ProofRole::Responder => 2,
        }
    }
}

/// A 32-byte proof of holding a folder's access key on one connection.
#[derive(Clone, Copy)]
pub struct AccessProof([u8; 32]);

impl AccessProof {
    /// Wraps the 32 bytes of a proof (as read from the wire).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        AccessProof(bytes)
    }

    /// Reads a proof of unknown length; any length but 32 is
    /// [`KeyError::MalformedAccessProof`].
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        <[u8; 32]>::try_from(bytes)
            .map(AccessProof)
            .map_err(|_| KeyError::MalformedAccessProof { len: bytes.len() })
    }

    /// The 32 proof bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }
}

impl std::fmt::Debug for AccessProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessProof(..)")
    }
}

impl AccessKey {
    /// This side's proof, made in `role`, on the connection whose TLS exporter
    /// secret is `channel_binding`.
    pub fn prove(&self, role: ProofRole, channel_binding: &[u8]) -> Result<AccessProof, KeyError> {
        check_binding(channel_binding)?;
        let mut mac = blake3::Hasher::new_keyed(self.as_bytes());
        mac.update(PROOF_LABEL);
        mac.update(&[role.byte()]);
        mac.update(channel_binding);
        Ok(AccessProof(*mac.finalize().as_bytes()))
    }

    /// Checks the peer's proof: `peer_role` is the role of the side that made
    /// it (the opposite of this side's), on this connection. A mismatch is
    /// [`KeyError::BadAccessProof`].
    pub fn verify_proof(
        &self,
        peer_role: ProofRole,
        channel_binding: &[u8],
        proof: &AccessProof,
    ) -> Result<(), KeyError> {
        let expected = self.prove(peer_role, channel_binding)?;
        if bool::from(expected.0.ct_eq(&proof.0)) {
            Ok(())
        } else {
            Err(KeyError::BadAccessProof)
        }
    }
}

/// A 32-byte proof of holding a folder's data key on one connection.
#[derive(Clone, Copy)]
pub struct ReadProof([u8; 32]);

impl ReadProof {
    /// Wraps the 32 bytes of a proof (as read from the wire).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        ReadProof(bytes)
    }

    /// The 32 proof bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }
}

impl std::fmt::Debug for ReadProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadProof(..)")
    }
}

impl DataKey {
    /// The key read proofs are made with.
    fn read_proof_key(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(READ_PROOF_KEY_CONTEXT, self.as_bytes()))
    }

    /// This side's read proof, made in `role`, on the connection whose TLS
    /// exporter secret is `channel_binding`.
    pub fn prove_read(
        &self,
        role: ProofRole,
        channel_binding: &[u8],
    ) -> Result<ReadProof, KeyError> {
        check_binding(channel_binding)?;
        let mut mac = blake3::Hasher::new_keyed(&self.read_proof_key());
        mac.update(READ_PROOF_LABEL);
        mac.update(&[role.byte()]);
        mac.update(channel_binding);
        Ok(ReadProof(*mac.finalize().as_bytes()))
    }

    /// Checks the peer's read proof: `peer_role` is the role of the side
    /// that made it (the opposite of this side's), on this connection. A
    /// mismatch is [`KeyError::BadReadProof`].
    pub fn verify_read_proof(
        &self,
        peer_role: ProofRole,
        channel_binding: &[u8],
        proof: &ReadProof,
    ) -> Result<(), KeyError> {
        let expected = self.prove_read(peer_role, channel_binding)?;
        if bool::from(expected.0.ct_eq(&proof.0)) {
            Ok(())
        } else {
            Err(KeyError::BadReadProof)
        }
    }
}

fn check_binding(channel_binding: &[u8]) -> Result<(), KeyError> {
    if channel_binding.len() < CHANNEL_BINDING_MIN_LEN {
        return Err(KeyError::ChannelBindingTooShort {
            len: channel_binding.len(),
            min: CHANNEL_BINDING_MIN_LEN,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::ReadWriteKey;

    const EXPORTER: [u8; 32] = [0xaa; 32];

    #[test]
    fn both_directions_prove_with_any_key_type() {
        let rw = ReadWriteKey::from_secret(&[3; 32]);
        let enc = rw.encrypted();
        let client = enc
            .access_key()
            .prove(ProofRole::Initiator, &EXPORTER)
            .unwrap();
        let server = rw
            .access_key()
            .prove(ProofRole::Responder, &EXPORTER)
            .unwrap();
        assert_eq!(
            rw.access_key()
                .verify_proof(ProofRole::Initiator, &EXPORTER, &client),
            Ok(())
        );
        assert_eq!(
            enc.access_key()
                .verify_proof(ProofRole::Responder, &EXPORTER, &server),
            Ok(())
        );
        assert_ne!(client.to_bytes(), server.to_bytes(), "directions differ");
    }

    #[test]
    fn reflected_proof_is_refused() {
        let key = ReadWriteKey::from_secret(&[3; 32]);
        let client = key
            .access_key()
            .prove(ProofRole::Initiator, &EXPORTER)
            .unwrap();
        // A server that sends the client's own proof back as its answer:
        assert_eq!(
            key.access_key()
                .verify_proof(ProofRole::Responder, &EXPORTER, &client),
            Err(KeyError::BadAccessProof)
        );
    }

    #[test]
    fn proof_from_another_connection_is_refused() {
        let key = ReadWriteKey::from_secret(&[3; 32]);
        let old = key
            .access_key()
            .prove(ProofRole::Initiator, &EXPORTER)
            .unwrap();
        assert_eq!(
            key.access_key()
                .verify_proof(ProofRole::Initiator, &[0xbb; 32], &old),
            Err(KeyError::BadAccessProof)
        );
    }

    #[test]
    fn proof_from_another_folder_is_refused() {
        let ours = ReadWriteKey::from_secret(&[3; 32]);
        let theirs = ReadWriteKey::from_secret(&[4; 32]);
        let proof = theirs
            .access_key()
            .prove(ProofRole::Initiator, &EXPORTER)
            .unwrap();
        assert_eq!(
            ours.access_key()
                .verify_proof(ProofRole::Initiator, &EXPORTER, &proof),
            Err(KeyError::BadAccessProof)
        );
    }

    #[test]
    fn a_read_proof_verifies_for_its_role_connection_and_folder_only() {
        let key = ReadWriteKey::from_secret(&[3; 32]);
        let reader = key.read_only();
        let proof = reader
            .data_key()
            .prove_read(ProofRole::Initiator, &EXPORTER)
            .unwrap();
        let data = key.data_key();
        assert_eq!(
            data.verify_read_proof(ProofRole::Initiator, &EXPORTER, &proof),
            Ok(())
        );
        for (role, binding) in [
            (ProofRole::Responder, EXPORTER),
            (ProofRole::Initiator, [0xbb; 32]),
        ] {
            assert_eq!(
                data.verify_read_proof(role, &binding, &proof),
                Err(KeyError::BadReadProof)
            );
        }
        let other = ReadWriteKey::from_secret(&[4; 32]);
        assert_eq!(
            other
                .data_key()
                .verify_read_proof(ProofRole::Initiator, &EXPORTER, &proof),
            Err(KeyError::BadReadProof)
        );
        // Not the access proof under another name.
        let access = key
            .access_key()
            .prove(ProofRole::Initiator, &EXPORTER)
            .unwrap();
        assert_ne!(access.to_bytes(), proof.to_bytes());
        assert_eq!(
            data.prove_read(ProofRole::Initiator, &[0; 15]).unwrap_err(),
            KeyError::ChannelBindingTooShort { len: 15, min: 16 }
        );
        assert_eq!(format!("{proof:?}"), "ReadProof(..)");
    }

    #[test]
    fn short_binding_and_malformed_proof_are_refused() {
        let key = ReadWriteKey::from_secret(&[3; 32]);
        assert_eq!(
            key.access_key()
                .prove(ProofRole::Initiator, &[])
                .unwrap_err(),
            KeyError::ChannelBindingTooShort { len: 0, min: 16 }
        );
        assert_eq!(
            AccessProof::from_slice(&[0; 31]).unwrap_err(),
            KeyError::MalformedAccessProof { len: 31 }
        );
    }
}
