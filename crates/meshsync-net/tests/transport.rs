//! The transport end to end, on loopback only (127.0.0.1 and ::1): mutual
//! authentication by device id, pinning, channel binding, refusal of peers
//! without an ed25519 device certificate (built here as raw quinn/rustls
//! peers), streams and a large transfer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshsync_net::{
    ALPN, CertificateError, DeviceId, NetError, PeerConnection, Role, SERVER_NAME, Transport,
    TransportOptions,
};
use meshsync_store::identity::DeviceIdentity;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{DigitallySignedStruct, SignatureScheme};

const TIMEOUT: Duration = Duration::from_secs(20);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn device(seed: u8) -> DeviceIdentity {
    DeviceIdentity::from_seed(&[seed; 32]).unwrap()
}

fn bind(identity: &DeviceIdentity) -> Transport {
    Transport::bind(loopback(), identity, TransportOptions::default()).unwrap()
}

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .expect("timed out")
}

/// `from` connects to `to`; returns (initiator's end, responder's end).
async fn connect(
    from: &Transport,
    to: &Transport,
    expected: Option<DeviceId>,
) -> (PeerConnection, PeerConnection) {
    let addr = to.local_addr();
    let (initiator, responder) =
        within(async { tokio::join!(from.connect(addr, expected), to.accept()) }).await;
    (initiator.unwrap(), responder.unwrap().unwrap())
}

#[tokio::test]
async fn connects_both_ways_and_authenticates_device_ids() {
    let (a_id, b_id) = (device(1), device(2));
    let (a, b) = (bind(&a_id), bind(&b_id));

    let (a_to_b, b_from_a) = connect(&a, &b, Some(b_id.device_id())).await;
    assert_eq!(a_to_b.peer, b_id.device_id());
    assert_eq!(a_to_b.role, Role::Initiator);
    assert_eq!(b_from_a.peer, a_id.device_id());
    assert_eq!(b_from_a.role, Role::Responder);

    let (b_to_a, a_from_b) = connect(&b, &a, None).await;
    assert_eq!(b_to_a.peer, a_id.device_id());
    assert_eq!(b_to_a.role, Role::Initiator);
    assert_eq!(a_from_b.peer, b_id.device_id());
    assert_eq!(a_from_b.role, Role::Responder);

    // One socket serves both roles.
    assert_eq!(a_to_b.connection.remote_address(), b.local_addr());
    assert_eq!(b_to_a.connection.remote_address(), a.local_addr());
    within(async { tokio::join!(a.close(), b.close()) }).await;
}

#[tokio::test]
async fn works_over_ipv6_loopback() {
    let (a_id, b_id) = (device(1), device(2));
    let any6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
    let a = Transport::bind(any6, &a_id, TransportOptions::default()).unwrap();
    let b = Transport::bind(any6, &b_id, TransportOptions::default()).unwrap();
    let (a_to_b, b_from_a) = connect(&a, &b, Some(b_id.device_id())).await;
    assert_eq!(a_to_b.peer, b_id.device_id());
    assert_eq!(b_from_a.peer, a_id.device_id());
}

#[tokio::test]
async fn socket_buffers_are_enlarged() {
    let a = bind(&device(1));
    let sizes = a.socket_buffer_sizes();
    // Linux reports double the granted size, capped by rmem_max/wmem_max.
    let cap = |path: &str| -> usize {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let wanted = meshsync_net::DEFAULT_SOCKET_BUFFER_BYTES;
    assert!(
        sizes.receive >= wanted.min(cap("/proc/sys/net/core/rmem_max")),
        "{sizes:?}"
    );
    assert!(
        sizes.send >= wanted.min(cap("/proc/sys/net/core/wmem_max")),
        "{sizes:?}"
    );
}

#[tokio::test]
async fn pinning_to_another_device_fails_with_a_typed_error() {
    let (a_id, b_id, c_id) = (device(1), device(2), device(3));
    let (a, b) = (bind(&a_id), bind(&b_id));
    let addr = b.local_addr();
    let (result, accepted) =
        within(async { tokio::join!(a.connect(addr, Some(c_id.device_id())), b.accept()) }).await;
    match result {
        Err(NetError::UnexpectedPeer {
            remote,
            expected,
            actual,
        }) => {
            assert_eq!(remote, addr);
            assert_eq!(expected, c_id.device_id());
            assert_eq!(actual, b_id.device_id());
        }
        other => panic!("expected UnexpectedPeer, got {other:?}"),
    }
    // B never gets a connection from it: A aborted before sending its
    // certificate.
    assert!(
        matches!(accepted, Some(Err(NetError::Handshake { .. }))),
        "{accepted:?}"
    );
}

#[tokio::test]
async fn channel_binding_matches_on_both_ends_and_differs_per_connection() {
    let (a, b) = (bind(&device(1)), bind(&device(2)));
    let (first_a, first_b) = connect(&a, &b, None).await;
    let (second_a, second_b) = connect(&a, &b, None).await;
    let (third_b, third_a) = connect(&b, &a, None).await;
    assert_eq!(first_a.channel_binding, first_b.channel_binding);
    assert_eq!(second_a.channel_binding, second_b.channel_binding);
    assert_eq!(third_a.channel_binding, third_b.channel_binding);
    assert_ne!(first_a.channel_binding, second_a.channel_binding);
    assert_ne!(first_a.channel_binding, third_a.channel_binding);
    assert_ne!(second_a.channel_binding, third_a.channel_binding);
    assert_ne!(first_a.channel_binding, [0; 32]);
    // It is the documented exporter, not some other secret.
    let mut exported = [0u8; 32];
    first_b
        .connection
        .export_keying_material(&mut exported, meshsync_net::CHANNEL_BINDING_LABEL, b"")
        .unwrap();
    assert_eq!(exported, first_a.channel_binding);
    assert!(!format!("{first_a:?}").contains("channel_binding"));
}

#[tokio::test]
async fn control_and_chunk_streams_carry_data_both_ways() {
    let (a, b) = (bind(&device(1)), bind(&device(2)));
    let (initiator, responder) = connect(&a, &b, None).await;

    // Out of order: refused before anything reaches the wire.
    assert!(matches!(
        initiator.open_chunk_stream().await,
        Err(NetError::StreamOrder { .. })
    ));
    assert!(matches!(
        responder.open_control_stream().await,
        Err(NetError::StreamOrder { .. })
    ));
    assert!(matches!(
        responder.accept_chunk_stream().await,
        Err(NetError::StreamOrder { .. })
    ));

    within(async {
        let (mut control_send, mut control_recv) = initiator.open_control_stream().await.unwrap();
        assert!(matches!(
            initiator.open_control_stream().await,
            Err(NetError::StreamOrder { .. })
        ));
        control_send.write_all(b"hello").await.unwrap();
        let (mut peer_send, mut peer_recv) = responder.accept_control_stream().await.unwrap();
        let mut hello = [0u8; 5];
        peer_recv.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello");
        peer_send.write_all(b"welcome").await.unwrap();
        let mut welcome = [0u8; 7];
        control_recv.read_exact(&mut welcome).await.unwrap();
        assert_eq!(&welcome, b"welcome");

        // Chunk streams, opened by either side.
        let (mut send, mut recv) = initiator.open_chunk_stream().await.unwrap();
        send.write_all(b"chunk request 1").await.unwrap();
        send.finish().unwrap();
        let (mut reply, mut request) = responder.accept_chunk_stream().await.unwrap();
        assert_eq!(request.read_to_end(100).await.unwrap(), b"chunk request 1");
        reply.write_all(b"chunk 1").await.unwrap();
        reply.finish().unwrap();
        assert_eq!(recv.read_to_end(100).await.unwrap(), b"chunk 1");

        let (mut send, _recv) = responder.open_chunk_stream().await.unwrap();
        send.write_all(b"from the responder").await.unwrap();
        send.finish().unwrap();
        let (_send, mut recv) = initiator.accept_chunk_stream().await.unwrap();
        assert_eq!(recv.read_to_end(100).await.unwrap(), b"from the responder");
    })
    .await;
}

#[tokio::test]
async fn large_transfer_over_one_stream() {
    const SIZE: usize = 64 << 20;
    let (a, b) = (bind(&device(1)), bind(&device(2)));
    let (initiator, responder) = connect(&a, &b, None).await;
    let data: Vec<u8> = (0..SIZE)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let sent_hash = blake3::hash(&data);

    let sender = async {
        let (mut send, _recv) = initiator.open_control_stream().await.unwrap();
        for piece in data.chunks(1 << 20) {
            send.write_all(piece).await.unwrap();
        }
        send.finish().unwrap();
        send.stopped().await.unwrap();
    };
    let receiver = async {
        let (_send, mut recv) = responder.accept_control_stream().await.unwrap();
        let mut hasher = blake3::Hasher::new();
        let mut received = 0usize;
        while let Some(chunk) = recv.read_chunk(usize::MAX, true).await.unwrap() {
            received += chunk.bytes.len();
            hasher.update(&chunk.bytes);
        }
        (received, hasher.finalize())
    };
    let ((), (received, received_hash)) = within(async { tokio::join!(sender, receiver) }).await;
    assert_eq!(received, SIZE);
    assert_eq!(received_hash, sent_hash);
}

#[tokio::test]
async fn close_ends_accept_and_connect() {
    let (a, b) = (bind(&device(1)), bind(&device(2)));
    within(b.close()).await;
    assert!(within(b.accept()).await.is_none());
    assert!(matches!(
        b.connect(a.local_addr(), None).await,
        Err(NetError::Connect { .. })
    ));
}

// ---- Peers that are not meshsync devices, built from raw quinn + rustls. ----

fn ring() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate with an arbitrary signing key: `key_pkcs8` need not be the
/// certificate's key (that is the point of some tests).
fn certified(certificate_der: &[u8], key_pkcs8: &[u8]) -> Arc<CertifiedKey> {
    let key = ring()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key_pkcs8.to_vec(),
        )))
        .unwrap();
    Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(certificate_der.to_vec())],
        key,
    ))
}

/// A self-signed ECDSA certificate and its key (PKCS#8).
fn ecdsa(alg: &'static rcgen::SignatureAlgorithm) -> (Vec<u8>, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.der().to_vec(), key.serialize_der())
}

/// Trusts any server: the rogue client is not what is under test.
#[derive(Debug)]
struct TrustAnything;

impl ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ring().signature_verification_algorithms.supported_schemes()
    }
}

/// A QUIC client with `certificate` (or none) connecting to `server`.
/// Returns its connection's fate: a TLS 1.3 client finishes its handshake
/// before the server has judged its certificate, so the refusal shows as
/// the connection closing afterwards.
async fn rogue_client(server: SocketAddr, certificate: Option<Arc<CertifiedKey>>) {
    let builder = rustls::ClientConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TrustAnything));
    let mut tls = match certificate {
        Some(certificate) => {
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certificate)))
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let endpoint = quinn::Endpoint::client(loopback()).unwrap();
    if let Ok(connection) = endpoint
        .connect_with(config, server, SERVER_NAME)
        .unwrap()
        .await
    {
        // Refused: the server closes it.
        let reason = connection.closed().await;
        assert!(
            !matches!(reason, quinn::ConnectionError::LocallyClosed),
            "{reason:?}"
        );
    }
}

/// A QUIC server presenting `certificate`, accepting any client.
fn rogue_server(certificate: Arc<CertifiedKey>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let mut tls = rustls::ServerConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certificate)));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let config =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
    let endpoint = quinn::Endpoint::server(config, loopback()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let _ = incoming.await;
        }
    });
    (addr, task)
}

async fn accept_from_rogue(server: &Transport, certificate: Option<Arc<CertifiedKey>>) -> NetError {
    let addr = server.local_addr();
    let ((), accepted) =
        within(async { tokio::join!(rogue_client(addr, certificate), server.accept()) }).await;
    match accepted {
        Some(Err(error)) => error,
        other => panic!("a rogue client was not refused: {other:?}"),
    }
}

async fn connect_to_rogue(certificate: Arc<CertifiedKey>, expected: Option<DeviceId>) -> NetError {
    let client = bind(&device(1));
    let (addr, task) = rogue_server(certificate);
    let result = within(client.connect(addr, expected)).await;
    task.abort();
    match result {
        Err(error) => error,
        Ok(peer) => panic!("connected to a rogue server as {}", peer.peer),
    }
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let server = bind(&device(2));
    let error = accept_from_rogue(&server, None).await;
    assert!(
        matches!(error, NetError::MissingClientCertificate { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn ecdsa_peers_are_refused_both_ways() {
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
    ] {
        let (cert, key) = ecdsa(alg);
        // As a client it has no ed25519 key to sign with, so it cannot
        // answer the certificate request at all.
        let server = bind(&device(2));
        let error = accept_from_rogue(&server, Some(certified(&cert, &key))).await;
        assert!(
            matches!(error, NetError::MissingClientCertificate { .. }),
            "{error:?}"
        );
        // As a server it cannot sign the only scheme we offer (ed25519).
        let error = connect_to_rogue(certified(&cert, &key), None).await;
        assert!(matches!(error, NetError::Handshake { .. }), "{error:?}");
    }
}

#[tokio::test]
async fn an_ecdsa_certificate_signed_with_an_ed25519_key_is_refused_by_its_key_algorithm() {
    // The signature would verify under an ed25519 key, but the certificate
    // names an ECDSA one: our verifier reads the certificate and refuses.
    let (cert, _) = ecdsa(&rcgen::PKCS_ECDSA_P256_SHA256);
    let signer = device(9);
    let rogue = || certified(&cert, signer.private_key_pkcs8_der());
    let expected_error = CertificateError::UnsupportedKeyAlgorithm {
        algorithm: "1.2.840.10045.2.1".into(),
    };

    let server = bind(&device(2));
    match accept_from_rogue(&server, Some(rogue())).await {
        NetError::PeerCertificate { source, .. } => assert_eq!(source, expected_error),
        other => panic!("{other:?}"),
    }
    match connect_to_rogue(rogue(), None).await {
        NetError::PeerCertificate { source, .. } => assert_eq!(source, expected_error),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_stolen_device_certificate_without_its_key_is_refused() {
    // The impostor presents the victim's certificate (public) but can only
    // sign with its own key.
    let (victim, impostor) = (device(5), device(6));
    let stolen = || certified(victim.certificate_der(), impostor.private_key_pkcs8_der());

    let server = bind(&device(2));
    match accept_from_rogue(&server, Some(stolen())).await {
        NetError::PeerCertificate { source, .. } => {
            assert_eq!(source, CertificateError::BadSignature)
        }
        other => panic!("{other:?}"),
    }
    match connect_to_rogue(stolen(), Some(victim.device_id())).await {
        NetError::PeerCertificate { source, .. } => {
            assert_eq!(source, CertificateError::BadSignature)
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_real_device_behind_a_raw_quinn_server_is_accepted() {
    // The control for the rogue tests: the same raw server with a genuine
    // device certificate and key passes, so the refusals above are about
    // the certificates, not the harness.
    let genuine = device(7);
    let error_or_peer = {
        let client = bind(&device(1));
        let (addr, task) = rogue_server(certified(
            genuine.certificate_der(),
            genuine.private_key_pkcs8_der(),
        ));
        let result = within(client.connect(addr, Some(genuine.device_id()))).await;
        task.abort();
        result
    };
    assert_eq!(error_or_peer.unwrap().peer, genuine.device_id());
}

#[tokio::test]
async fn a_service_is_reached_from_the_device_socket_with_its_own_alpn() {
    use meshsync_net::TRACKER_ALPN;
    let (device_id, service_id) = (device(1), device(9));
    let a = bind(&device_id);
    let service = Transport::bind_service(
        loopback(),
        &service_id,
        TransportOptions::default(),
        TRACKER_ALPN,
    )
    .unwrap();

    let (client, server) = within(async {
        tokio::join!(
            a.connect_service(service.local_addr(), TRACKER_ALPN, None),
            service.accept()
        )
    })
    .await;
    let (client, server) = (client.unwrap(), server.unwrap().unwrap());
    assert_eq!(client.peer, service_id.device_id());
    assert_eq!(
        server.peer,
        device_id.device_id(),
        "the client is authenticated"
    );
    // The service sees the device's own socket: its reflexive address.
    assert_eq!(server.connection.remote_address(), a.local_addr());

    // A device dial (meshsync ALPN) to the service fails, and so does a
    // service dial to a device.
    let b = bind(&device(2));
    let wrong = within(a.connect(service.local_addr(), None)).await;
    assert!(
        wrong.is_err(),
        "a device connection to a tracker: {wrong:?}"
    );
    let wrong = within(a.connect_service(b.local_addr(), TRACKER_ALPN, None)).await;
    assert!(
        wrong.is_err(),
        "a tracker connection to a device: {wrong:?}"
    );
    within(async { tokio::join!(a.close(), b.close(), service.close()) }).await;
}
