//! Folder keys and the cryptography under them: who may read, write, store or
//! join a share, enforced by keys rather than by trust.
//!
//! The model follows BitTorrent Sync / Resilio: a folder is shared by handing
//! out one string. `docs/keys.md` is the byte-exact specification (every
//! derivation, label and encoding, with test vectors); this module is its
//! reference implementation.
//!
//! Main types:
//! - [`ReadWriteKey`]: the folder's 32-byte secret. Signs index updates and
//!   reads content. Derives everything else.
//! - [`ReadOnlyKey`]: [`VerifyKey`] + [`DataKey`]: reads content and verifies
//!   index updates, cannot sign them.
//! - [`EncryptedKey`]: [`VerifyKey`] only: a storage-only peer. It verifies
//!   signatures and stores and serves ciphertext, and has no way to decrypt:
//!   it holds no [`DataKey`], so it has no decrypt method to call.
//! - [`FolderKey`]: any of the three, as parsed from a key string.
//! - [`AccessKey`]: the same for every key type of one folder; proves to a peer,
//!   bound to one TLS connection, that this side holds some key of the folder
//!   ([`AccessProof`]); [`DataKey::prove_read`] proves the same of the data
//!   key ([`ReadProof`]: this side can read, it is not a storage-only peer).
//! - [`BatchSignature`], [`sign_batch`], [`verify_batch`]: signed index updates.
//! - [`EntrySignature`], [`sign_entry`], [`verify_entry`] and
//!   [`DataKey::seal_metadata`]: the primitives under sealed index entries
//!   (what storage-only peers hold; see [`crate::encrypted_index`]).
//! - [`SessionSecret`]: a secret from a password (Argon2id) or a key file, for
//!   sessions and multicast.
//!
//! Secrecy of the verify key: the verify key is *not* public. Only the
//! [`ShareId`](crate::ids::ShareId) (BLAKE3 of the verify key) ever leaves a device in the clear.
//! That is what lets the access key be derived from the verify key: every key
//! type holds the verify key, so every holder of any key can compute the access
//! key, and nobody else can. An encrypted key string *is* the verify key, so it
//! must be guarded as well as the others.
//!
//! This module must never draw randomness, read a clock or touch the disk: the
//! caller hands in the secret bytes, salts and channel bindings. Keys are never
//! logged: every key type redacts itself in `Debug`, has no `Display`, and
//! zeroizes its secret bytes on drop.

mod crypt;
pub mod discovery;
mod error;
mod folder;
mod password;
mod proof;
mod sealed;
mod signing;
pub(crate) mod text;
#[cfg(test)]
mod vectors;

pub use crypt::{ENCRYPTED_NAME_MAX_LEN, EncryptedChunk, NAME_MAX_PLAINTEXT_LEN};
pub use error::KeyError;
pub use folder::{
    AccessKey, DataKey, EncryptedKey, FolderKey, KeyKind, ReadOnlyKey, ReadWriteKey, VerifyKey,
};
pub use password::{
    ARGON2_M_COST_KIB, ARGON2_P_COST, ARGON2_T_COST, KEY_FILE_MIN_LEN, SALT_MIN_LEN, SessionSecret,
};
pub use proof::{AccessProof, CHANNEL_BINDING_MIN_LEN, ProofRole, ReadProof};
pub use sealed::{EntrySignature, METADATA_OVERHEAD, sign_entry, verify_entry};
pub use signing::{BatchSignature, sign_batch, verify_batch};
