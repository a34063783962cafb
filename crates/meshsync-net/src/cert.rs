//! Device certificates: the ed25519 key inside a peer's self-signed X.509
//! certificate, and the TLS 1.3 `CertificateVerify` signature checked with
//! exactly that key.
//!
//! A device is its ed25519 key; the certificate is only the envelope TLS
//! requires. So the checks here are the ones that bind a handshake to a
//! [`DeviceId`] and nothing else:
//!
//! - the certificate is well-formed DER down to `subjectPublicKeyInfo`
//!   (RFC 5280 §4.1), and that key is ed25519 (RFC 8410: OID 1.3.101.112, no
//!   parameters, a 32-byte key that is a valid, non-weak curve point);
//! - the handshake signature uses the ed25519 scheme and verifies under that
//!   key (`verify_strict`: no small-order keys, no malleable signatures).
//!
//! What is deliberately not checked: validity dates, names, extensions and the
//! certificate's own self-signature. None of them says anything about who holds
//! the key; the handshake signature does. A peer is trusted, or not, by its
//! [`DeviceId`], which the layers above compare with what the user paired.
//!
//! Never: accept a key other than ed25519, a TLS 1.2 signature, or DER that
//! does not parse exactly (trailing bytes, indefinite or non-minimal lengths).

use ed25519_dalek::{Signature, VerifyingKey};
use meshsync_core::ids::DeviceId;

/// The TLS `SignatureScheme` code point for ed25519 (RFC 8446 §4.2.3).
pub(crate) const ED25519_SCHEME: u16 = 0x0807;

/// The DER content of the id-Ed25519 object identifier, 1.3.101.112.
const ED25519_OID: [u8; 3] = [0x2b, 0x65, 0x70];

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;
/// `[0] EXPLICIT`, the optional version field of `TBSCertificate`.
const TAG_VERSION: u8 = 0xa0;

/// Why a peer's certificate or handshake signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// The certificate is not well-formed DER of an X.509 certificate.
    #[error("malformed certificate: {reason}")]
    Malformed {
        /// Which part failed to parse.
        reason: &'static str,
    },

    /// The certificate's key is not ed25519 (for example RSA or ECDSA).
    #[error(
        "the certificate's key algorithm is {algorithm}, meshsync devices use ed25519 (1.3.101.112)"
    )]
    UnsupportedKeyAlgorithm {
        /// The key algorithm's object identifier, dotted.
        algorithm: String,
    },

    /// The ed25519 key is not a valid curve point, or is a weak (small-order)
    /// one.
    #[error("the certificate's ed25519 key is not a valid public key")]
    InvalidPublicKey,

    /// The peer sent a certificate chain; a device presents exactly one
    /// self-signed certificate.
    #[error("the peer sent {count} certificates beyond its own; devices send exactly one")]
    UnexpectedChain {
        /// How many extra certificates came with the peer's own.
        count: usize,
    },

    /// The handshake was signed with a scheme other than ed25519.
    #[error("the handshake signature scheme 0x{scheme:04x} is not ed25519 (0x0807)")]
    UnsupportedSignatureScheme {
        /// The TLS `SignatureScheme` code point.
        scheme: u16,
    },

    /// A TLS 1.2 handshake signature was offered. meshsync speaks TLS 1.3
    /// only; this is never accepted.
    #[error("a TLS 1.2 handshake signature was offered; only TLS 1.3 is accepted")]
    Tls12Signature,

    /// The handshake signature does not verify under the certificate's key:
    /// the peer does not hold the key it presented.
    #[error("the handshake signature does not verify under the certificate's key")]
    BadSignature,
}

/// The ed25519 public key in a DER X.509 certificate.
///
/// Walks `Certificate -> tbsCertificate -> subjectPublicKeyInfo`, checks the
/// algorithm is ed25519 and the key a valid, non-weak curve point.
pub fn ed25519_public_key(certificate_der: &[u8]) -> Result<[u8; 32], CertificateError> {
    let spki = subject_public_key_info(certificate_der)?;
    let mut spki = Der::new(spki);
    let algorithm = spki.expect(TAG_SEQUENCE, "subjectPublicKeyInfo.algorithm")?;
    let key_bits = spki.expect(TAG_BIT_STRING, "subjectPublicKeyInfo.subjectPublicKey")?;
    spki.finish("subjectPublicKeyInfo")?;

    let mut algorithm = Der::new(algorithm);
    let oid = algorithm.expect(TAG_OID, "AlgorithmIdentifier.algorithm")?;
    if oid != ED25519_OID {
        return Err(CertificateError::UnsupportedKeyAlgorithm {
            algorithm: dotted_oid(oid),
        });
    }
    // RFC 8410 §3: for id-Ed25519 "the parameters MUST be absent".
    algorithm.finish("ed25519 AlgorithmIdentifier with parameters")?;

    // A BIT STRING's first content byte counts the unused bits: 0 here.
    let key: [u8; 32] = match key_bits {
        [0, key @ ..] => key.try_into().map_err(|_| CertificateError::Malformed {
            reason: "ed25519 key is not 32 bytes",
        })?,
        _ => {
            return Err(CertificateError::Malformed {
                reason: "ed25519 key is not a whole-byte BIT STRING",
            });
        }
    };
    let verifying_key =
        VerifyingKey::from_bytes(&key).map_err(|_| CertificateError::InvalidPublicKey)?;
    if verifying_key.is_weak() {
        return Err(CertificateError::InvalidPublicKey);
    }
    Ok(key)
}

/// The [`DeviceId`] of the device whose certificate this is: BLAKE3 of its
/// ed25519 key. Says nothing about whether the sender holds the key; only a
/// verified handshake signature does.
pub fn device_id_of_certificate(certificate_der: &[u8]) -> Result<DeviceId, CertificateError> {
    ed25519_public_key(certificate_der).map(|key| DeviceId::from_public_key(&key))
}

/// Checks a TLS 1.3 `CertificateVerify` signature (`scheme`, `signature`)
/// over `message` with the ed25519 key of `certificate_der`, and returns that
/// key: the one that proved possession, from which the peer's [`DeviceId`] is
/// derived.
pub(crate) fn verify_tls13_signature(
    message: &[u8],
    certificate_der: &[u8],
    scheme: u16,
    signature: &[u8],
) -> Result<[u8; 32], CertificateError> {
    if scheme != ED25519_SCHEME {
        return Err(CertificateError::UnsupportedSignatureScheme { scheme });
    }
    let key = ed25519_public_key(certificate_der)?;
    let verifying_key =
        VerifyingKey::from_bytes(&key).map_err(|_| CertificateError::InvalidPublicKey)?;
    let signature = Signature::from_slice(signature).map_err(|_| CertificateError::BadSignature)?;
    verifying_key
        .verify_strict(message, &signature)
        .map_err(|_| CertificateError::BadSignature)?;
    Ok(key)
}

/// The content of `subjectPublicKeyInfo`, after checking the certificate's
/// outer structure: `Certificate ::= SEQUENCE { tbsCertificate,
/// signatureAlgorithm, signatureValue }` with nothing after it.
fn subject_public_key_info(certificate_der: &[u8]) -> Result<&[u8], CertificateError> {
    let mut outer = Der::new(certificate_der);
    let certificate = outer.expect(TAG_SEQUENCE, "Certificate")?;
    outer.finish("bytes after the Certificate")?;

    let mut certificate = Der::new(certificate);
    let tbs = certificate.expect(TAG_SEQUENCE, "tbsCertificate")?;
    certificate.expect(TAG_SEQUENCE, "signatureAlgorithm")?;
    certificate.expect(TAG_BIT_STRING, "signatureValue")?;
    certificate.finish("Certificate")?;

    let mut tbs = Der::new(tbs);
    if tbs.peek_tag() == Some(TAG_VERSION) {
        tbs.expect(TAG_VERSION, "version")?;
    }
    tbs.expect(TAG_INTEGER, "serialNumber")?;
    tbs.expect(TAG_SEQUENCE, "signature")?;
    tbs.expect(TAG_SEQUENCE, "issuer")?;
    tbs.expect(TAG_SEQUENCE, "validity")?;
    tbs.expect(TAG_SEQUENCE, "subject")?;
    // Unique ids and extensions may follow; nothing in them matters here.
    tbs.expect(TAG_SEQUENCE, "subjectPublicKeyInfo")
}

/// A cursor over a run of DER elements. Single-byte tags, definite minimal
/// lengths up to 4 bytes: all an X.509 certificate's outer layers need.
struct Der<'a> {
    rest: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Der { rest: bytes }
    }

    fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The content of the next element, which must have tag `tag`.
    fn expect(&mut self, tag: u8, what: &'static str) -> Result<&'a [u8], CertificateError> {
        let malformed = CertificateError::Malformed { reason: what };
        let (&found, rest) = self.rest.split_first().ok_or(malformed.clone())?;
        if found != tag {
            return Err(malformed);
        }
        let (len, rest) = read_length(rest).ok_or(malformed.clone())?;
        if len > rest.len() {
            return Err(malformed);
        }
        let (content, rest) = rest.split_at(len);
        self.rest = rest;
        Ok(content)
    }

    /// Checks nothing is left.
    fn finish(&self, what: &'static str) -> Result<(), CertificateError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(CertificateError::Malformed { reason: what })
        }
    }
}

/// A DER length (X.690 §8.1.3, §10.1: definite, minimal) and the bytes after
/// it, or `None` if it is not one.
fn read_length(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let (&first, rest) = bytes.split_first()?;
    if first < 0x80 {
        return Some((usize::from(first), rest));
    }
    let count = usize::from(first & 0x7f);
    // 0x80 is the indefinite form (BER only); over 4 bytes is absurd here.
    if count == 0 || count > 4 || rest.len() < count {
        return None;
    }
    let (digits, rest) = rest.split_at(count);
    if digits[0] == 0 {
        return None;
    }
    let len = digits
        .iter()
        .fold(0usize, |len, &digit| (len << 8) | usize::from(digit));
    if len < 0x80 {
        return None;
    }
    Some((len, rest))
}

/// An object identifier's content bytes in dotted form, for error messages.
fn dotted_oid(content: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut value: u64 = 0;
    for &byte in content {
        value = value.saturating_mul(128) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    if arcs.is_empty() || content.last().is_some_and(|b| b & 0x80 != 0) {
        return format!("(undecodable OID {content:02x?})");
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use meshsync_store::identity::DeviceIdentity;
    use proptest::prelude::*;

    fn identity(seed: u8) -> DeviceIdentity {
        DeviceIdentity::from_seed(&[seed; 32]).unwrap()
    }

    #[test]
    fn extracts_the_device_key_from_its_certificate() {
        let device = identity(7);
        let key = ed25519_public_key(device.certificate_der()).unwrap();
        assert_eq!(&key, device.public_key());
        assert_eq!(
            device_id_of_certificate(device.certificate_der()).unwrap(),
            device.device_id()
        );
    }

    #[test]
    fn refuses_ecdsa_certificates_by_algorithm() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
        ] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let cert = rcgen::CertificateParams::new(vec!["meshsync".into()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            assert_eq!(
                ed25519_public_key(cert.der()),
                Err(CertificateError::UnsupportedKeyAlgorithm {
                    algorithm: "1.2.840.10045.2.1".into()
                })
            );
        }
    }

    #[test]
    fn refuses_every_truncation_and_trailing_bytes() {
        let cert = identity(1).certificate_der().to_vec();
        for len in 0..cert.len() {
            assert!(
                ed25519_public_key(&cert[..len]).is_err(),
                "truncated to {len} bytes"
            );
        }
        let mut longer = cert.clone();
        longer.push(0);
        assert_eq!(
            ed25519_public_key(&longer),
            Err(CertificateError::Malformed {
                reason: "bytes after the Certificate"
            })
        );
    }

    #[test]
    fn refuses_non_minimal_and_indefinite_lengths() {
        assert_eq!(read_length(&[0x05, 1]), Some((5, &[1u8][..])));
        assert_eq!(read_length(&[0x81, 0x80]), Some((0x80, &[][..])));
        assert_eq!(read_length(&[0x82, 0x01, 0x00]), Some((0x100, &[][..])));
        assert_eq!(read_length(&[0x80]), None, "indefinite");
        assert_eq!(
            read_length(&[0x81, 0x05]),
            None,
            "long form for a short length"
        );
        assert_eq!(read_length(&[0x82, 0x00, 0x90]), None, "leading zero");
        assert_eq!(read_length(&[0x85, 1, 1, 1, 1, 1]), None, "too long");
        assert_eq!(read_length(&[0x82, 0x01]), None, "truncated");
    }

    /// The certificate of `seed` with its SPKI rewritten by `edit` (same length).
    fn with_spki_edit(edit: impl Fn(&mut [u8])) -> Vec<u8> {
        let device = identity(3);
        let mut cert = device.certificate_der().to_vec();
        let at = cert
            .windows(32)
            .position(|w| w == device.public_key())
            .unwrap();
        // `30 2a 30 05 06 03 2b 65 70 03 21 00 <key>` sits just before the key.
        let spki = at - 12;
        assert_eq!(
            cert[spki..spki + 12],
            [
                0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00
            ]
        );
        edit(&mut cert[spki..spki + 44]);
        cert
    }

    #[test]
    fn refuses_a_wrong_oid_unused_bits_or_a_weak_key() {
        let other_oid = with_spki_edit(|spki| spki[8] = 0x71); // 1.3.101.113 = Ed448
        assert_eq!(
            ed25519_public_key(&other_oid),
            Err(CertificateError::UnsupportedKeyAlgorithm {
                algorithm: "1.3.101.113".into()
            })
        );
        let unused_bits = with_spki_edit(|spki| spki[11] = 1);
        assert!(matches!(
            ed25519_public_key(&unused_bits),
            Err(CertificateError::Malformed { .. })
        ));
        // The identity point (small order): a key anyone "holds".
        let weak = with_spki_edit(|spki| {
            spki[12..].fill(0);
            spki[12] = 1;
        });
        assert_eq!(
            ed25519_public_key(&weak),
            Err(CertificateError::InvalidPublicKey)
        );
    }

    #[test]
    fn dotted_oids() {
        assert_eq!(dotted_oid(&[0x2b, 0x65, 0x70]), "1.3.101.112");
        assert_eq!(
            dotted_oid(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]),
            "1.2.840.10045.2.1"
        );
        assert!(dotted_oid(&[0x86]).starts_with("(undecodable"));
    }

    #[test]
    fn handshake_signature_must_be_ed25519_by_the_certificate_key() {
        let device = identity(9);
        let signer = SigningKey::from_bytes(&[9; 32]);
        let message = b"TLS 1.3, server CertificateVerify\0transcript hash";
        let signature = signer.sign(message).to_bytes();
        let cert = device.certificate_der();

        assert_eq!(
            verify_tls13_signature(message, cert, ED25519_SCHEME, &signature),
            Ok(*device.public_key())
        );
        assert_eq!(
            verify_tls13_signature(b"another transcript", cert, ED25519_SCHEME, &signature),
            Err(CertificateError::BadSignature)
        );
        let impostor = SigningKey::from_bytes(&[10; 32]).sign(message).to_bytes();
        assert_eq!(
            verify_tls13_signature(message, cert, ED25519_SCHEME, &impostor),
            Err(CertificateError::BadSignature)
        );
        assert_eq!(
            verify_tls13_signature(message, cert, 0x0403, &signature),
            Err(CertificateError::UnsupportedSignatureScheme { scheme: 0x0403 })
        );
        assert_eq!(
            verify_tls13_signature(message, cert, ED25519_SCHEME, &signature[..63]),
            Err(CertificateError::BadSignature)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = ed25519_public_key(&bytes);
        }

        #[test]
        fn flipping_any_byte_never_yields_another_valid_key(at in 0usize..1000, bit in 0u8..8) {
            let device = identity(5);
            let mut cert = device.certificate_der().to_vec();
            let at = at % cert.len();
            cert[at] ^= 1 << bit;
            // Either refused, or (a flip outside the key) the same key.
            if let Ok(key) = ed25519_public_key(&cert) {
                let in_key = cert.windows(32).any(|w| w == key);
                prop_assert!(in_key);
                let original = device.public_key();
                let key_start = device.certificate_der().windows(32).position(|w| w == original).unwrap();
                if !(key_start..key_start + 32).contains(&at) {
                    prop_assert_eq!(&key, original);
                }
            }
        }
    }
}
