//! This device's identity: an ed25519 key pair kept in the state directory,
//! the self-signed TLS certificate made from it, and the [`DeviceId`] peers
//! know it by (BLAKE3 of the public key).
//!
//! The key lives in `device.key` ([`KEY_FILE_NAME`]) as the 48-byte PKCS#8 v1
//! DER of RFC 8410 (readable by `openssl pkey -inform DER`), mode 0600. It is
//! created on first use: 32 bytes from the operating system's random number
//! generator, written to a temporary file in the same directory, fsynced,
//! linked into place without replacing anything (two processes starting at
//! once agree on one key: the loser discards its own and loads the winner's),
//! and the directory fsynced. A crash at any point leaves either no key or the
//! whole key.
//!
//! The certificate is not stored: ed25519 signatures are deterministic and the
//! parameters fixed, so every load rebuilds the same DER bytes. Peers pin the
//! [`DeviceId`], not the certificate.
//!
//! Never: replace an existing key (that would change this device's id), load
//! a key file that others can read, or show key bytes in `Debug`.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use meshsync_core::ids::DeviceId;
use rand::TryRng;
use rand::rngs::SysRng;
use zeroize::Zeroizing;

/// The key file's name inside the state directory.
pub const KEY_FILE_NAME: &str = "device.key";

/// The common name and DNS name in the certificate. Peers authenticate by
/// [`DeviceId`], so this is a label, not a claim.
const CERTIFICATE_NAME: &str = "meshsync";

/// PKCS#8 v1 (RFC 5958) `PrivateKeyInfo` for Ed25519 (RFC 8410) up to the
/// 32-byte seed: SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 },
/// OCTET STRING { OCTET STRING (32) } }.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Bytes in the key file.
const PKCS8_LEN: usize = PKCS8_ED25519_PREFIX.len() + 32;

/// Why this device's identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The state directory could not be created.
    #[error("cannot create the state directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },

    /// The key file exists but could not be read.
    #[error("cannot read the device key {path}: {source}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },

    /// A new key file could not be written (or its directory synced).
    #[error("cannot write the device key {path}: {source}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },

    /// The key file is not a PKCS#8 ed25519 key of the form meshsync writes.
    #[error(
        "{path} is not a meshsync device key (48-byte PKCS#8 ed25519); move it away to make a new identity, which gives this device a new id"
    )]
    Corrupt {
        /// The key file.
        path: PathBuf,
    },

    /// The key file can be read by other users.
    #[error("the device key {path} is readable by others (mode {mode:o}); run: chmod 600 {path}")]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed: {0}")]
    Randomness(rand::rngs::SysError),

    /// rcgen could not build the certificate.
    #[error("cannot make the device's TLS certificate: {0}")]
    Certificate(rcgen::Error),
}

/// This device's key pair, certificate and id.
pub struct DeviceIdentity {
    pkcs8: Zeroizing<Vec<u8>>,
    public_key: [u8; 32],
    certificate: Vec<u8>,
    device_id: DeviceId,
}

impl DeviceIdentity {
    /// Loads the identity from `state_dir`, creating the directory and a new
    /// key on first use.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, IdentityError> {
        let path = state_dir.join(KEY_FILE_NAME);
        match load_seed(&path)? {
            Some(seed) => Self::from_seed(&seed),
            None => {
                create_state_dir(state_dir)?;
                let seed = create_key_file(state_dir, &path)?;
                Self::from_seed(&seed)
            }
        }
    }

    /// The identity whose ed25519 secret key (seed) is `seed`. For tests and
    /// simulations; devices use [`DeviceIdentity::load_or_create`].
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, IdentityError> {
        let public_key = SigningKey::from_bytes(seed).verifying_key().to_bytes();
        let mut pkcs8 = Zeroizing::new(Vec::with_capacity(PKCS8_LEN));
        pkcs8.extend_from_slice(&PKCS8_ED25519_PREFIX);
        pkcs8.extend_from_slice(seed);
        let certificate = self_signed_certificate(&pkcs8)?;
        Ok(DeviceIdentity {
            pkcs8,
            public_key,
            certificate,
            device_id: DeviceId::from_public_key(&public_key),
        })
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        self.device_id
    }

    /// The ed25519 public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    /// The self-signed X.509 certificate (DER) for TLS.
    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate
    }

    /// The private key as PKCS#8 DER, for the TLS stack. Secret.
    pub fn private_key_pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }
}

impl fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// The seed in the key file at `path`, or `None` if there is no file.
fn load_seed(path: &Path) -> Result<Option<Zeroizing<[u8; 32]>>, IdentityError> {
    let read_error = |source| IdentityError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(e)),
    };
    let mode = file.metadata().map_err(read_error)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(IdentityError::InsecurePermissions {
            path: path.to_owned(),
            mode: mode & 0o777,
        });
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(PKCS8_LEN + 1));
    // Read one byte more than a key has, to notice a longer file.
    Read::by_ref(&mut file)
        .take(PKCS8_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() != PKCS8_LEN || bytes[..16] != PKCS8_ED25519_PREFIX {
        return Err(IdentityError::Corrupt {
            path: path.to_owned(),
        });
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    seed.copy_from_slice(&bytes[16..]);
    Ok(Some(seed))
}

fn create_state_dir(state_dir: &Path) -> Result<(), IdentityError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|source| IdentityError::CreateDir {
            path: state_dir.to_owned(),
            source,
        })
}

/// Writes a new key to `path` unless one appears there first, and returns the
/// seed of whichever key is in place afterwards.
fn create_key_file(state_dir: &Path, path: &Path) -> Result<Zeroizing<[u8; 32]>, IdentityError> {
    let mut seed = Zeroizing::new([0u8; 32]);
    SysRng
        .try_fill_bytes(&mut seed[..])
        .map_err(IdentityError::Randomness)?;
    let mut suffix = [0u8; 8];
    SysRng
        .try_fill_bytes(&mut suffix)
        .map_err(IdentityError::Randomness)?;
    let temp = state_dir.join(format!(
        ".{KEY_FILE_NAME}.tmp-{}-{:016x}",
        std::process::id(),
        u64::from_le_bytes(suffix)
    ));
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| IdentityError::Write { path, source }
    };
    let result = write_new_key(&temp, &seed).map_err(write_error(&temp));
    let linked = result.and_then(|()| {
        // A hard link never replaces an existing file: if another process
        // created the key meanwhile, keep theirs.
        match fs::hard_link(&temp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(write_error(path)(e)),
        }
    });
    let _ = fs::remove_file(&temp);
    let ours = linked?;
    sync_dir(state_dir).map_err(write_error(state_dir))?;
    if ours {
        Ok(seed)
    } else {
        load_seed(path)?.ok_or_else(|| IdentityError::Corrupt {
            path: path.to_owned(),
        })
    }
}

fn write_new_key(temp: &Path, seed: &[u8; 32]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(temp)?;
    let mut der = Zeroizing::new([0u8; PKCS8_LEN]);
    der[..16].copy_from_slice(&PKCS8_ED25519_PREFIX);
    der[16..].copy_from_slice(seed);
    file.write_all(&der[..])?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn self_signed_certificate(pkcs8: &[u8]) -> Result<Vec<u8>, IdentityError> {
    let key_pair = rcgen::KeyPair::try_from(pkcs8).map_err(IdentityError::Certificate)?;
    let mut params = rcgen::CertificateParams::new(vec![CERTIFICATE_NAME.to_owned()])
        .map_err(IdentityError::Certificate)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, CERTIFICATE_NAME);
    let certificate = params
        .self_signed(&key_pair)
        .map_err(IdentityError::Certificate)?;
    Ok(certificate.der().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn first_use_creates_a_private_key_file_and_later_loads_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state/nested");
        let first = DeviceIdentity::load_or_create(&state).unwrap();
        let key_path = state.join(KEY_FILE_NAME);
        assert_eq!(mode_of(&key_path), 0o600);
        assert_eq!(fs::read(&key_path).unwrap().len(), 48);
        let again = DeviceIdentity::load_or_create(&state).unwrap();
        assert_eq!(first.device_id(), again.device_id());
        assert_eq!(
            first.certificate_der(),
            again.certificate_der(),
            "deterministic"
        );
        assert_eq!(first.private_key_pkcs8_der(), again.private_key_pkcs8_der());
        let leftovers: Vec<_> = fs::read_dir(&state).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left behind");
    }

    #[test]
    fn device_id_is_blake3_of_the_public_key_in_the_certificate() {
        let identity = DeviceIdentity::from_seed(&[5; 32]).unwrap();
        let public = SigningKey::from_bytes(&[5; 32]).verifying_key().to_bytes();
        assert_eq!(identity.public_key(), &public);
        assert_eq!(identity.device_id(), DeviceId::from_public_key(&public));
        let key_pair = rcgen::KeyPair::try_from(identity.private_key_pkcs8_der()).unwrap();
        assert_eq!(key_pair.public_key_raw(), public);
        let cert = identity.certificate_der();
        assert!(
            cert.windows(32).any(|w| w == public),
            "certificate carries the key"
        );
    }

    #[test]
    fn different_devices_get_different_ids() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let a = DeviceIdentity::load_or_create(a.path()).unwrap();
        let b = DeviceIdentity::load_or_create(b.path()).unwrap();
        assert_ne!(a.device_id(), b.device_id());
    }

    #[test]
    fn racing_creators_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<DeviceId> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        DeviceIdentity::load_or_create(dir.path())
                            .unwrap()
                            .device_id()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    }

    #[test]
    fn corrupt_key_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE_NAME);
        fs::write(&path, b"not a key").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = DeviceIdentity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"not a key");
    }

    #[test]
    fn key_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        DeviceIdentity::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE_NAME);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = DeviceIdentity::load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(err, IdentityError::InsecurePermissions { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let identity = DeviceIdentity::from_seed(&[0xab; 32]).unwrap();
        let shown = format!("{identity:?}");
        assert!(shown.starts_with("DeviceIdentity"));
        assert!(!shown.contains("ab, ab") && !shown.contains("abab") && !shown.contains("171"));
    }
}
