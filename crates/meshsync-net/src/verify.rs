//! The rustls certificate verifiers: one [`HandshakeAuth`] per handshake,
//! used as the client's `ServerCertVerifier` or the server's
//! `ClientCertVerifier`.
//!
//! There is no certificate authority: a peer is whoever holds the ed25519 key
//! in the certificate it sends, proven by the TLS 1.3 handshake signature,
//! which this verifier checks itself with that key (see [`crate::cert`]). On
//! success it records the [`DeviceId`] of exactly that key, and the transport
//! reads the peer's identity from this record, never from anything the peer
//! could send unverified. On failure it records why, so the caller gets a
//! typed error rather than a TLS alert's text.
//!
//! One verifier per handshake is what makes the record unambiguous; rustls
//! configurations are cheap to build. Session resumption is disabled by the
//! transport, so every handshake runs these checks.

use std::sync::{Mutex, MutexGuard};

use meshsync_core::ids::DeviceId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::cert::{self, CertificateError};

/// What one handshake's verifier concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Not decided yet (or the handshake failed before reaching the verifier,
    /// e.g. the peer sent no certificate).
    Pending,
    /// The certificate was acceptable and the handshake signature verified:
    /// the peer holds the key of this device.
    Verified(DeviceId),
    /// The peer's certificate or signature was refused.
    Refused(CertificateError),
    /// The peer is a valid device but not the one the caller pinned.
    UnexpectedPeer {
        /// The device named by the peer's certificate (unproven: refused
        /// before the handshake signature).
        actual: DeviceId,
    },
}

/// The certificate verifier for one handshake, either side.
#[derive(Debug)]
pub(crate) struct HandshakeAuth {
    /// With `Some`, only this device is accepted (client side pinning).
    expected: Option<DeviceId>,
    outcome: Mutex<Outcome>,
}

impl HandshakeAuth {
    pub(crate) fn new(expected: Option<DeviceId>) -> Self {
        HandshakeAuth {
            expected,
            outcome: Mutex::new(Outcome::Pending),
        }
    }

    /// The device this handshake is pinned to, if any.
    pub(crate) fn expected(&self) -> Option<DeviceId> {
        self.expected
    }

    /// What the verifier concluded so far.
    pub(crate) fn outcome(&self) -> Outcome {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Outcome> {
        // The guarded value is a plain enum: a panic elsewhere cannot leave
        // it half-written, so a poisoned lock is still meaningful.
        self.outcome
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn refuse(&self, error: CertificateError) -> rustls::Error {
        let alert = match error {
            CertificateError::BadSignature => rustls::CertificateError::BadSignature,
            CertificateError::Malformed { .. } => rustls::CertificateError::BadEncoding,
            _ => rustls::CertificateError::Other(rustls::OtherError(std::sync::Arc::new(
                error.clone(),
            ))),
        };
        *self.lock() = Outcome::Refused(error);
        rustls::Error::InvalidCertificate(alert)
    }

    /// The checks on the certificate alone, before the handshake signature.
    fn check_certificate(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(self.refuse(CertificateError::UnexpectedChain {
                count: intermediates.len(),
            }));
        }
        let id = cert::device_id_of_certificate(end_entity).map_err(|e| self.refuse(e))?;
        if let Some(expected) = self.expected
            && expected != id
        {
            // Refused before the signature is even checked: the peer is not
            // the one we want, whoever it is. In TLS 1.3 this also means our
            // own certificate is never sent to it.
            *self.lock() = Outcome::UnexpectedPeer { actual: id };
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(())
    }

    fn check_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let key =
            cert::verify_tls13_signature(message, cert, u16::from(dss.scheme), dss.signature())
                .map_err(|e| self.refuse(e))?;
        let id = DeviceId::from_public_key(&key);
        if let Some(expected) = self.expected
            && expected != id
        {
            // `check_certificate` already refused this; kept so that the
            // signature check alone can never admit a different device.
            *self.lock() = Outcome::UnexpectedPeer { actual: id };
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        *self.lock() = Outcome::Verified(id);
        Ok(HandshakeSignatureValid::assertion())
    }

    fn refuse_tls12(&self) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(self.refuse(CertificateError::Tls12Signature))
    }
}

/// Only ed25519 is offered: a peer with any other key fails the handshake on
/// its own side ("no signature scheme in common") instead of signing.
fn schemes() -> Vec<SignatureScheme> {
    vec![SignatureScheme::ED25519]
}

impl ServerCertVerifier for HandshakeAuth {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The server name is a fixed placeholder and dates say nothing about
        // who holds the key: the device id is the identity.
        self.check_certificate(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

impl ClientCertVerifier for HandshakeAuth {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check_certificate(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshsync_store::identity::DeviceIdentity;

    fn cert_of(seed: u8) -> (DeviceId, CertificateDer<'static>) {
        let device = DeviceIdentity::from_seed(&[seed; 32]).unwrap();
        (
            device.device_id(),
            CertificateDer::from(device.certificate_der().to_vec()),
        )
    }

    fn server_name() -> ServerName<'static> {
        ServerName::try_from(crate::SERVER_NAME).unwrap()
    }

    /// A `CertificateVerify` body as rustls hands it to verifiers. rustls
    /// offers no constructor; its (hidden, unstable) codec is fine for tests.
    fn signed(scheme: u16, signature: &[u8]) -> DigitallySignedStruct {
        use rustls::internal::msgs::codec::{Codec, Reader};
        let mut bytes = scheme.to_be_bytes().to_vec();
        bytes.extend_from_slice(&u16::try_from(signature.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(signature);
        DigitallySignedStruct::read(&mut Reader::init(&bytes)).unwrap()
    }

    fn ed25519_sign(seed: u8, message: &[u8]) -> Vec<u8> {
        use ed25519_dalek::Signer;
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
            .sign(message)
            .to_bytes()
            .to_vec()
    }

    #[test]
    fn a_valid_tls13_signature_verifies_the_device_on_both_sides() {
        let (id, cert) = cert_of(4);
        let message = b"transcript";
        let dss = signed(cert::ED25519_SCHEME, &ed25519_sign(4, message));

        let server_side = HandshakeAuth::new(Some(id));
        assert!(
            ServerCertVerifier::verify_tls13_signature(&server_side, message, &cert, &dss).is_ok()
        );
        assert_eq!(server_side.outcome(), Outcome::Verified(id));

        let client_side = HandshakeAuth::new(None);
        assert!(
            ClientCertVerifier::verify_tls13_signature(&client_side, message, &cert, &dss).is_ok()
        );
        assert_eq!(client_side.outcome(), Outcome::Verified(id));
    }

    #[test]
    fn tls12_signatures_are_refused_on_both_sides_even_when_valid() {
        let (_, cert) = cert_of(4);
        let message = b"transcript";
        let dss = signed(cert::ED25519_SCHEME, &ed25519_sign(4, message));

        let auth = HandshakeAuth::new(None);
        assert!(ServerCertVerifier::verify_tls12_signature(&auth, message, &cert, &dss).is_err());
        assert_eq!(
            auth.outcome(),
            Outcome::Refused(CertificateError::Tls12Signature)
        );
        let auth = HandshakeAuth::new(None);
        assert!(ClientCertVerifier::verify_tls12_signature(&auth, message, &cert, &dss).is_err());
        assert_eq!(
            auth.outcome(),
            Outcome::Refused(CertificateError::Tls12Signature)
        );
    }

    #[test]
    fn other_schemes_and_other_signers_are_refused() {
        let (_, cert) = cert_of(4);
        let message = b"transcript";
        let auth = HandshakeAuth::new(None);
        // ecdsa_secp256r1_sha256, even with bytes that would verify as ed25519.
        let dss = signed(0x0403, &ed25519_sign(4, message));
        assert!(ServerCertVerifier::verify_tls13_signature(&auth, message, &cert, &dss).is_err());
        assert_eq!(
            auth.outcome(),
            Outcome::Refused(CertificateError::UnsupportedSignatureScheme { scheme: 0x0403 })
        );
        let auth = HandshakeAuth::new(None);
        let dss = signed(cert::ED25519_SCHEME, &ed25519_sign(5, message));
        assert!(ClientCertVerifier::verify_tls13_signature(&auth, message, &cert, &dss).is_err());
        assert_eq!(
            auth.outcome(),
            Outcome::Refused(CertificateError::BadSignature)
        );
    }

    #[test]
    fn pinned_verifier_refuses_another_device_before_the_signature() {
        let (wanted, _) = cert_of(1);
        let (actual, cert) = cert_of(2);
        let auth = HandshakeAuth::new(Some(wanted));
        let result = auth.verify_server_cert(&cert, &[], &server_name(), &[], UnixTime::now());
        assert!(result.is_err());
        assert_eq!(auth.outcome(), Outcome::UnexpectedPeer { actual });
    }

    #[test]
    fn certificate_chains_and_foreign_keys_are_refused_with_a_reason() {
        let (_, cert) = cert_of(1);
        let auth = HandshakeAuth::new(None);
        assert!(
            auth.verify_client_cert(&cert, std::slice::from_ref(&cert), UnixTime::now())
                .is_err()
        );
        assert_eq!(
            auth.outcome(),
            Outcome::Refused(CertificateError::UnexpectedChain { count: 1 })
        );

        let ecdsa = rcgen::generate_simple_self_signed(vec!["meshsync".into()]).unwrap();
        let auth = HandshakeAuth::new(None);
        let ecdsa = CertificateDer::from(ecdsa.cert.der().to_vec());
        assert!(
            auth.verify_client_cert(&ecdsa, &[], UnixTime::now())
                .is_err()
        );
        assert!(matches!(
            auth.outcome(),
            Outcome::Refused(CertificateError::UnsupportedKeyAlgorithm { .. })
        ));
    }

    #[test]
    fn a_device_certificate_passes_the_certificate_stage_without_being_verified() {
        let (id, cert) = cert_of(4);
        let auth = HandshakeAuth::new(Some(id));
        assert!(auth.verify_client_cert(&cert, &[], UnixTime::now()).is_ok());
        // Only the handshake signature makes the peer `Verified`.
        assert_eq!(auth.outcome(), Outcome::Pending);
    }
}
