//! Read proofs: a side that claims to hold a reading key (read-write or
//! read-only) proves it holds the folder's data key, bound to this
//! connection.
//!
//! The access proof shows only that a peer holds *some* key of the folder; a
//! storage-only peer holds one too. Without this proof, a storage-only peer
//! could claim "read-only" and be sent plaintext names and chunk hashes,
//! which it must never learn. Only a side that holds the data key can check a
//! read proof; a storage-only side has nothing in plaintext to give away, so
//! it need not.
//!
//! ```text
//! read proof key = BLAKE3-derive_key("meshsync v1 folder read proof key", data key)
//! read proof     = BLAKE3-keyed(read proof key, "meshsync v1 read proof\0" ‖ role ‖ channel binding)
//! role           = 0x01 for the side that opened the connection, 0x02 for the other
//! ```
//!
//! Compared in constant time (`blake3::Hash` equality).
//!
//! Never: accept a read proof made for the other role or another connection.
//! (This derivation belongs with the other key derivations in
//! `meshsync_core::keys`; it lives here until it moves there.)

use meshsync_core::keys::{DataKey, ProofRole};

/// BLAKE3 `derive_key` context for the read proof key (input: the data key).
pub(crate) const READ_PROOF_KEY_CONTEXT: &str = "meshsync v1 folder read proof key";

/// The label at the start of every read-proven message.
pub(crate) const READ_PROOF_LABEL: &[u8; 23] = b"meshsync v1 read proof\0";

fn role_byte(role: ProofRole) -> u8 {
    match role {
        ProofRole::Initiator => 1,
        ProofRole::Responder => 2,
    }
}

/// This side's read proof, made in `role`, on the connection whose channel
/// binding is `channel_binding`.
pub(crate) fn prove_read(
    data_key: &DataKey,
    role: ProofRole,
    channel_binding: &[u8; 32],
) -> [u8; 32] {
    let key = blake3::derive_key(READ_PROOF_KEY_CONTEXT, data_key.as_bytes());
    let mut mac = blake3::Hasher::new_keyed(&key);
    mac.update(READ_PROOF_LABEL);
    mac.update(&[role_byte(role)]);
    mac.update(channel_binding);
    *mac.finalize().as_bytes()
}

/// Whether `proof` is the read proof of the side in `peer_role` on this
/// connection.
pub(crate) fn verify_read(
    data_key: &DataKey,
    peer_role: ProofRole,
    channel_binding: &[u8; 32],
    proof: &[u8; 32],
) -> bool {
    let expected = blake3::Hash::from_bytes(prove_read(data_key, peer_role, channel_binding));
    expected == blake3::Hash::from_bytes(*proof)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshsync_core::keys::ReadWriteKey;

    #[test]
    fn proof_verifies_for_its_role_and_connection_only() {
        let key = ReadWriteKey::from_secret(&[3; 32]);
        let data = key.data_key();
        let proof = prove_read(data, ProofRole::Initiator, &[0xaa; 32]);
        assert!(verify_read(data, ProofRole::Initiator, &[0xaa; 32], &proof));
        assert!(!verify_read(
            data,
            ProofRole::Responder,
            &[0xaa; 32],
            &proof
        ));
        assert!(!verify_read(
            data,
            ProofRole::Initiator,
            &[0xbb; 32],
            &proof
        ));
        let other = ReadWriteKey::from_secret(&[4; 32]);
        assert!(!verify_read(
            other.data_key(),
            ProofRole::Initiator,
            &[0xaa; 32],
            &proof
        ));
    }

    /// Pins the derivation: the vector in `docs/protocol.md` ("Read proof").
    #[test]
    fn test_vector() {
        let data = DataKey::from_bytes(&[0x11; 32]);
        let proof = prove_read(&data, ProofRole::Initiator, &[0xaa; 32]);
        let hex: String = proof.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, READ_PROOF_VECTOR);
    }

    const READ_PROOF_VECTOR: &str =
        "118f395974c5b12f2db8b919b711c88b66edf0efea16fc00a98a1b674729fddc";
}
