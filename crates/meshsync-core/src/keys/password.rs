//! Secrets for sessions and multicast distribution, from a password or a key
//! file rather than a folder key.
//!
//! - From a password: Argon2id (version 0x13) with m = 64 MiB
//!   ([`ARGON2_M_COST_KIB`]), t = 3, p = 1, 32 bytes of output, and a salt the
//!   caller chooses (at least [`SALT_MIN_LEN`] bytes; e.g. the session id, so
//!   every session has its own).
//! - From a key file: its bytes (at least [`KEY_FILE_MIN_LEN`]) through
//!   `BLAKE3-derive_key("meshsync v1 session key file", bytes)`, so a file of
//!   any length gives a uniform 32-byte secret.
//!
//! The caller reads the file and supplies the salt; this module does no I/O.
//! Never: accept an empty password or a short key file.

use argon2::{Algorithm, Argon2, Params, Version};
use zeroize::Zeroizing;

use super::KeyError;

/// Argon2id memory cost, in KiB (64 MiB).
pub const ARGON2_M_COST_KIB: u32 = 64 * 1024;
/// Argon2id passes.
pub const ARGON2_T_COST: u32 = 3;
/// Argon2id lanes.
pub const ARGON2_P_COST: u32 = 1;
/// The shortest salt accepted, in bytes.
pub const SALT_MIN_LEN: usize = 8;
/// The shortest key file accepted, in bytes.
pub const KEY_FILE_MIN_LEN: usize = 32;

/// `derive_key` context for key files.
pub(crate) const KEY_FILE_CONTEXT: &str = "meshsync v1 session key file";

/// A 32-byte secret shared by the members of a session or the receivers of a
/// multicast distribution.
#[derive(Clone)]
pub struct SessionSecret(Zeroizing<[u8; 32]>);

impl SessionSecret {
    /// Stretches a password with Argon2id (m = 64 MiB, t = 3, p = 1). Takes a
    /// fraction of a second and 64 MiB of memory, on purpose.
    pub fn from_password(password: &str, salt: &[u8]) -> Result<Self, KeyError> {
        if password.is_empty() {
            return Err(KeyError::EmptyPassword);
        }
        if salt.len() < SALT_MIN_LEN {
            return Err(KeyError::SaltTooShort {
                len: salt.len(),
                min: SALT_MIN_LEN,
            });
        }
        let params = Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST, Some(32))
            .expect("constant Argon2 parameters are valid");
        let mut out = Zeroizing::new([0u8; 32]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(password.as_bytes(), salt, &mut out[..])
            .map_err(|e| KeyError::PasswordHashing {
                reason: e.to_string(),
            })?;
        Ok(SessionSecret(out))
    }

    /// Derives the secret from a key file's contents.
    pub fn from_key_file_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() < KEY_FILE_MIN_LEN {
            return Err(KeyError::KeyFileTooShort {
                len: bytes.len(),
                min: KEY_FILE_MIN_LEN,
            });
        }
        Ok(SessionSecret(Zeroizing::new(blake3::derive_key(
            KEY_FILE_CONTEXT,
            bytes,
        ))))
    }

    /// The secret bytes. Secret.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSecret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_shorter_than_32_bytes_is_refused() {
        assert_eq!(
            SessionSecret::from_key_file_bytes(&[1; 31]).unwrap_err(),
            KeyError::KeyFileTooShort { len: 31, min: 32 }
        );
        let a = SessionSecret::from_key_file_bytes(&[1; 32]).unwrap();
        let b = SessionSecret::from_key_file_bytes(&[1; 33]).unwrap();
        assert_ne!(a.as_bytes(), b.as_bytes());
    }

    #[test]
    fn empty_password_and_short_salt_are_refused() {
        assert_eq!(
            SessionSecret::from_password("", b"salty salt").unwrap_err(),
            KeyError::EmptyPassword
        );
        assert_eq!(
            SessionSecret::from_password("pw", b"short").unwrap_err(),
            KeyError::SaltTooShort { len: 5, min: 8 }
        );
    }

    #[test]
    fn debug_is_redacted() {
        let s = SessionSecret::from_key_file_bytes(&[0xab; 32]).unwrap();
        assert_eq!(format!("{s:?}"), "SessionSecret(<redacted>)");
    }
}
