//! [`KeyError`]: every way a key, signature, proof or ciphertext is refused.
//!
//! One variant per cause, each saying what is wrong in words a person can act
//! on. Messages never contain key material.

use super::folder::KeyKind;

/// Why a key, signature, access proof, ciphertext or secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key string is empty (after dropping dashes and white space).
    #[error("the key is empty")]
    EmptyKey,

    /// The first character is not a known key type letter.
    #[error(
        "unknown key type letter {letter:?}: a key starts with W (read-write), R (read-only) or E (encrypted)"
    )]
    UnknownKeyType {
        /// The letter found.
        letter: char,
    },

    /// A character outside the base32 alphabet, e.g. `=` padding, `0`, `1`, `8`
    /// or `9`.
    #[error(
        "invalid character {character:?} at position {position} of the key: keys use only A-Z and 2-7, without '=' padding"
    )]
    InvalidCharacter {
        /// The character found.
        character: char,
        /// Its 1-based position in the text as given (dashes and spaces count).
        position: usize,
    },

    /// The key has too few or too many characters: it was truncated or has
    /// extra characters pasted on.
    #[error(
        "{kind} keys have {expected} characters, this one has {found}: it is truncated or has extra characters"
    )]
    WrongLength {
        /// The key type announced by the first letter.
        kind: KeyKind,
        /// Characters a key of that type has (dashes and spaces aside).
        expected: usize,
        /// Characters found.
        found: usize,
    },

    /// The check character does not match: a character was mistyped, or two
    /// were swapped.
    #[error("the key's check character does not match: the key has a typo")]
    ChecksumMismatch,

    /// The check character matches but the base32 body is not in canonical
    /// form (non-zero trailing bits): the string was not made by meshsync.
    #[error("the key's base32 body is not canonical: it was not produced by meshsync")]
    NonCanonicalKey,

    /// The verify key inside a read-only or encrypted key is not a usable
    /// ed25519 public key.
    #[error("the key's verify key is not a valid ed25519 public key")]
    InvalidVerifyKey,

    /// A key of one type was given where another is needed, e.g. a read-only
    /// key where a read-write key is needed.
    #[error("wrong key type: a key of type {expected} is needed here, this one is {found}")]
    WrongKeyType {
        /// The type needed.
        expected: KeyKind,
        /// The type given.
        found: KeyKind,
    },

    /// An index batch arrived without a signature.
    #[error("the index batch is not signed")]
    MissingSignature,

    /// A signature does not have the length of an ed25519 signature.
    #[error("an index batch signature has 64 bytes, this one has {len}")]
    MalformedSignature {
        /// Bytes found.
        len: usize,
    },

    /// The signature does not verify for this folder, sequence number and
    /// payload: it was made by another folder's key, for another sequence
    /// number (a replay), or the batch was altered.
    #[error(
        "the index batch signature does not verify: it is from another folder, for another sequence number, or the batch was altered"
    )]
    BadSignature,

    /// An access proof does not have the proof length.
    #[error("an access proof has 32 bytes, this one has {len}")]
    MalformedAccessProof {
        /// Bytes found.
        len: usize,
    },

    /// The channel binding (TLS exporter secret) is too short to bind a proof
    /// to one connection.
    #[error("the channel binding has {len} bytes, at least {min} are needed")]
    ChannelBindingTooShort {
        /// Bytes given.
        len: usize,
        /// The minimum.
        min: usize,
    },

    /// The peer's access proof does not match: it does not hold a key of this
    /// folder, or the proof was made for another connection or reflected back
    /// from this side.
    #[error(
        "the access proof does not match: the peer holds no key of this folder, or the proof belongs to another connection or direction"
    )]
    BadAccessProof,

    /// The peer's read proof does not match: it does not hold this folder's
    /// data key (a storage-only peer claiming to read), or the proof was made
    /// for another connection or reflected back from this side.
    #[error(
        "the read proof does not match: the peer holds no data key of this folder, or the proof belongs to another connection or direction"
    )]
    BadReadProof,

    /// A path component to encrypt is empty or contains `/`.
    #[error("a path component to encrypt must be non-empty and contain no '/'")]
    InvalidNameComponent,

    /// A plaintext name is too long for its encrypted form to fit in a file
    /// name component.
    #[error(
        "the name has {len} bytes; encrypted names are limited to {max} bytes of plaintext per path component"
    )]
    NameTooLong {
        /// Bytes in the name.
        len: usize,
        /// The longest name that can be encrypted.
        max: usize,
    },

    /// An encrypted name is not lower-case base32 of the right size.
    #[error("{0:?} is not an encrypted name (lower-case base32 of at least 40 bytes)")]
    MalformedEncryptedName(String),

    /// An encrypted name does not decrypt with this folder's data key: it
    /// belongs to another folder or was altered.
    #[error(
        "an encrypted name does not decrypt with this folder's key (another folder, or altered)"
    )]
    NameDecryptionFailed,

    /// An encrypted chunk does not decrypt with this folder's data key and the
    /// expected plaintext hash: wrong folder, wrong hash, or altered.
    #[error(
        "an encrypted chunk does not decrypt with this folder's key and hash (another folder, another chunk, or altered)"
    )]
    ChunkDecryptionFailed,

    /// A chunk decrypted, but its plaintext does not have the expected hash: a
    /// holder of the data key encrypted other content under this hash.
    #[error("a decrypted chunk does not match its hash: the chunk was forged by a key holder")]
    ChunkHashMismatch,

    /// Sealed entry metadata does not decrypt with this folder's data key
    /// for its encrypted path: another folder, another path, or altered.
    #[error(
        "sealed entry metadata does not decrypt with this folder's key for its path (another folder, another path, or altered)"
    )]
    MetadataDecryptionFailed,

    /// A key file is shorter than the minimum.
    #[error("the key file has {len} bytes, at least {min} are needed")]
    KeyFileTooShort {
        /// Bytes in the file.
        len: usize,
        /// The minimum.
        min: usize,
    },

    /// The password is empty.
    #[error("the password is empty")]
    EmptyPassword,

    /// The salt for password hashing is too short.
    #[error("the password salt has {len} bytes, at least {min} are needed")]
    SaltTooShort {
        /// Bytes given.
        len: usize,
        /// The minimum.
        min: usize,
    },

    /// Argon2 refused to run (out of memory, or input beyond its limits).
    #[error("password hashing failed: {reason}")]
    PasswordHashing {
        /// Argon2's own description.
        reason: String,
    },
}
