//! [`Transport`]: one QUIC endpoint (one UDP socket) that both connects to
//! peers and accepts them, and [`PeerConnection`], an authenticated
//! connection with its control and chunk streams.
//!
//! Every handshake gets its own rustls configuration carrying a fresh
//! [`HandshakeAuth`] verifier, so the peer's [`DeviceId`] (or the reason it
//! was refused) is read from the verifier that checked that very handshake.
//! Incoming handshakes run concurrently in their own tasks, so a slow or
//! hostile client cannot hold up [`Transport::accept`] for the others.
//!
//! The same machinery serves other services than device sync: a tracker binds
//! with [`Transport::bind_service`] and its own ALPN, and a device reaches it
//! with [`Transport::connect_service`] *from its own endpoint*, so the
//! tracker sees the public address of the very UDP socket peers will dial
//! (what makes its reflexive address and hole punching mean anything). Both
//! sides still authenticate with ed25519 device certificates: the service
//! learns which device it talks to (a tracker must, to pair punches and
//! relays between devices), and the device learns the service's key. A
//! device does not pin its tracker by default: a tracker is untrusted anyway
//! — it only introduces addresses, and whoever it introduces must still
//! authenticate as a pinned device and prove it holds the folder's key.
//!
//! Application close codes 0–15 are the transport's own (0: shut down,
//! 1: authentication failed, 2: streams used out of order); the protocol
//! layer numbers its codes above them.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use meshsync_core::ids::DeviceId;
use meshsync_store::identity::DeviceIdentity;
use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, RecvStream, SendStream, TransportConfig, TransportErrorCode, VarInt};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{debug, warn};

use crate::cert;
use crate::verify::{HandshakeAuth, Outcome};
use crate::{ALPN, CHANNEL_BINDING_LABEL, NetError, SERVER_NAME, TransportOptions};

const CLOSE_SHUTDOWN: u32 = 0;
const CLOSE_UNAUTHENTICATED: u32 = 1;
const CLOSE_STREAM_ORDER: u32 = 2;

/// The TLS alert `certificate_required` (RFC 8446 §6.2), which a server
/// sends when a client presents no certificate.
const ALERT_CERTIFICATE_REQUIRED: u8 = 116;

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// We connected (the QUIC client). Opens the control stream.
    Initiator,
    /// The peer connected to us (the QUIC server). Accepts the control
    /// stream.
    Responder,
}

/// The actual sizes of a transport's UDP socket buffers, as the operating
/// system reports them (Linux reports twice the usable size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketBufferSizes {
    /// `SO_RCVBUF`.
    pub receive: usize,
    /// `SO_SNDBUF`.
    pub send: usize,
}

/// A QUIC endpoint for this device: connects to peers and accepts them,
/// authenticating each by its [`DeviceId`].
///
/// Dropping it stops accepting; established [`PeerConnection`]s live on until
/// they are dropped or closed. [`Transport::close`] closes everything.
pub struct Transport {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    tls: Arc<TlsConfigs>,
    socket_buffers: SocketBufferSizes,
    accepted: Mutex<mpsc::Receiver<Accepted>>,
    _acceptor: AbortOnDrop,
}

impl Transport {
    /// Binds a UDP socket on `addr` (port 0: any free port) and starts
    /// accepting connections from peers presenting a device certificate.
    ///
    /// Must be called inside a Tokio runtime (it spawns the task that drives
    /// incoming handshakes).
    pub fn bind(
        addr: SocketAddr,
        identity: &DeviceIdentity,
        options: TransportOptions,
    ) -> Result<Transport, NetError> {
        Self::bind_service(addr, identity, options, ALPN)
    }

    /// Binds like [`bind`](Self::bind), for a service that speaks `alpn`
    /// instead of device sync (a tracker: [`TRACKER_ALPN`](crate::TRACKER_ALPN)).
    /// Clients must present a device certificate and offer `alpn`; the
    /// [`PeerConnection`]s it accepts carry the client's [`DeviceId`].
    pub fn bind_service(
        addr: SocketAddr,
        identity: &DeviceIdentity,
        options: TransportOptions,
        alpn: &'static [u8],
    ) -> Result<Transport, NetError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(NetError::Bind {
                addr,
                source: std::io::Error::other("Transport::bind must run inside a Tokio runtime"),
            });
        }
        let transport = options.quinn_transport()?;
        let tls = Arc::new(TlsConfigs::new(identity, transport, alpn)?);
        let (socket, socket_buffers) = bind_socket(addr, options.socket_buffer_bytes)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(tls.server_template.clone()),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| NetError::Bind { addr, source })?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| NetError::Bind { addr, source })?;

        let (sender, accepted) = mpsc::channel(options.max_pending_handshakes);
        let permits = Arc::new(Semaphore::new(options.max_pending_handshakes));
        let acceptor = tokio::spawn(run_acceptor(endpoint.clone(), tls.clone(), sender, permits));
        debug!(
            addr = %local_addr,
            device = %identity.device_id(),
            ?socket_buffers,
            "transport bound"
        );
        Ok(Transport {
            endpoint,
            local_addr,
            tls,
            socket_buffers,
            accepted: Mutex::new(accepted),
            _acceptor: AbortOnDrop(acceptor),
        })
    }

    /// The address the socket is bound to (with the real port if 0 was
    /// asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The UDP socket buffer sizes the operating system granted.
    pub fn socket_buffer_sizes(&self) -> SocketBufferSizes {
        self.socket_buffers
    }

    /// Connects to the peer at `addr`. With `Some(expected)`, the handshake
    /// is aborted unless the peer proves to be that device — before this
    /// device's certificate is sent to it.
    ///
    /// In TLS 1.3 the client finishes its handshake before the server has
    /// judged the client's certificate: a server that refuses this device
    /// shows as the connection closing right after `connect` returns, not as
    /// an error here.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected: Option<DeviceId>,
    ) -> Result<PeerConnection, NetError> {
        self.connect_service(addr, self.tls.alpn, expected).await
    }

    /// Connects to a service speaking `alpn` (a tracker) from this
    /// transport's own UDP socket, authenticating it by its ed25519
    /// certificate like a device; `expected` pins its id, `None` accepts any
    /// (see the module docs for why a tracker need not be pinned). This
    /// device's certificate is presented to it.
    ///
    /// The returned connection is the plain QUIC connection with the
    /// service's id in [`PeerConnection::peer`]; its control-stream helpers
    /// are for device sync and need not be used.
    pub async fn connect_service(
        &self,
        addr: SocketAddr,
        alpn: &'static [u8],
        expected: Option<DeviceId>,
    ) -> Result<PeerConnection, NetError> {
        let auth = Arc::new(HandshakeAuth::new(expected));
        let config = self.tls.client_config(auth.clone(), alpn)?;
        let connecting = self
            .endpoint
            .connect_with(config, addr, SERVER_NAME)
            .map_err(|source| NetError::Connect {
                remote: addr,
                source,
            })?;
        let connection = connecting
            .await
            .map_err(|source| handshake_error(addr, &auth, Role::Initiator, source))?;
        let peer = establish(connection, Role::Initiator, &auth, alpn)?;
        debug!(remote = %addr, peer = %peer.peer, "connected");
        Ok(peer)
    }

    /// The next incoming connection: `Some(Ok)` for an authenticated peer,
    /// `Some(Err)` for a handshake that failed (worth logging, not fatal),
    /// `None` once the transport is closed.
    ///
    /// Handshakes run concurrently in the background; this returns them in
    /// the order they finish. Cancel-safe.
    pub async fn accept(&self) -> Option<Result<PeerConnection, NetError>> {
        let mut accepted = self.accepted.lock().await;
        accepted.recv().await.map(|accepted| accepted.result)
    }

    /// Closes every connection and the endpoint, and waits until the peers
    /// have been told (or the close timed out). Afterwards `accept` returns
    /// `None` and `connect` fails.
    pub async fn close(&self) {
        self.endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutting down");
        self.endpoint.wait_idle().await;
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("local_addr", &self.local_addr)
            .field("socket_buffers", &self.socket_buffers)
            .finish_non_exhaustive()
    }
}

/// An authenticated connection to a peer device.
///
/// The control stream is the Initiator's first bidirectional stream
/// ([`open_control_stream`](Self::open_control_stream) /
/// [`accept_control_stream`](Self::accept_control_stream)); chunk streams
/// are bidirectional streams either side opens after it. A QUIC stream
/// becomes visible to the peer only once something is written on it.
#[derive(Clone)]
pub struct PeerConnection {
    /// The QUIC connection.
    pub connection: quinn::Connection,
    /// The peer's device id: BLAKE3 of the ed25519 key that signed its side
    /// of this handshake.
    pub peer: DeviceId,
    /// Whether we connected or the peer did.
    pub role: Role,
    /// TLS exporter keying material (RFC 5705/8446 §7.5) with label
    /// [`CHANNEL_BINDING_LABEL`] and an empty context: the same 32 bytes on
    /// both ends, different for every connection. The access proof (a MAC
    /// with the folder's access key over it) binds to this connection, so it
    /// cannot be replayed on another. Not secret from the two peers, but
    /// never shown in `Debug`.
    pub channel_binding: [u8; 32],
    control: Arc<AtomicU8>,
}

const CONTROL_NONE: u8 = 0;
const CONTROL_PENDING: u8 = 1;
const CONTROL_READY: u8 = 2;

impl PeerConnection {
    /// Opens the control stream (Initiator only, once, before any chunk
    /// stream).
    pub async fn open_control_stream(&self) -> Result<(SendStream, RecvStream), NetError> {
        if self.role != Role::Initiator {
            return Err(self.order_error("only the Initiator opens the control stream"));
        }
        let claim = ControlClaim::take(self)?;
        let (send, recv) = self
            .connection
            .open_bi()
            .await
            .map_err(|source| self.connection_error(source))?;
        if send.id().index() != 0 {
            self.connection.close(
                VarInt::from_u32(CLOSE_STREAM_ORDER),
                b"control stream not first",
            );
            return Err(
                self.order_error("a stream was opened on the connection before the control stream")
            );
        }
        claim.complete();
        Ok((send, recv))
    }

    /// Accepts the control stream (Responder only, once, before any chunk
    /// stream). Returns when the Initiator has written on it.
    pub async fn accept_control_stream(&self) -> Result<(SendStream, RecvStream), NetError> {
        if self.role != Role::Responder {
            return Err(self.order_error("only the Responder accepts the control stream"));
        }
        let claim = ControlClaim::take(self)?;
        let (send, recv) = self
            .connection
            .accept_bi()
            .await
            .map_err(|source| self.connection_error(source))?;
        if recv.id().index() != 0 {
            // Unreachable with a well-behaved quinn: streams are accepted in
            // order, and stream 0 is the Initiator's first.
            self.connection.close(
                VarInt::from_u32(CLOSE_STREAM_ORDER),
                b"control stream not first",
            );
            return Err(self.order_error("the first accepted stream is not stream 0"));
        }
        claim.complete();
        Ok((send, recv))
    }

    /// Opens a chunk stream. The Initiator must have opened the control
    /// stream first.
    pub async fn open_chunk_stream(&self) -> Result<(SendStream, RecvStream), NetError> {
        if self.role == Role::Initiator && self.control.load(Ordering::Acquire) != CONTROL_READY {
            return Err(self.order_error("open the control stream before chunk streams"));
        }
        self.connection
            .open_bi()
            .await
            .map_err(|source| self.connection_error(source))
    }

    /// Accepts the next chunk stream the peer opened. The Responder must
    /// have accepted the control stream first.
    pub async fn accept_chunk_stream(&self) -> Result<(SendStream, RecvStream), NetError> {
        if self.role == Role::Responder && self.control.load(Ordering::Acquire) != CONTROL_READY {
            return Err(self.order_error("accept the control stream before chunk streams"));
        }
        self.connection
            .accept_bi()
            .await
            .map_err(|source| self.connection_error(source))
    }

    fn order_error(&self, reason: &'static str) -> NetError {
        NetError::StreamOrder {
            peer: self.peer,
            reason,
        }
    }

    fn connection_error(&self, source: ConnectionError) -> NetError {
        NetError::Connection {
            peer: self.peer,
            source,
        }
    }
}

impl fmt::Debug for PeerConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerConnection")
            .field("peer", &self.peer)
            .field("role", &self.role)
            .field("remote", &self.connection.remote_address())
            .finish_non_exhaustive()
    }
}

/// The right to open (or accept) the control stream, held while doing so.
/// Dropped without [`complete`](Self::complete) (an error, a cancelled
/// future), it gives the right back.
struct ControlClaim<'a>(Option<&'a AtomicU8>);

impl<'a> ControlClaim<'a> {
    fn take(connection: &'a PeerConnection) -> Result<Self, NetError> {
        connection
            .control
            .compare_exchange(
                CONTROL_NONE,
                CONTROL_PENDING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map_err(|_| connection.order_error("the control stream is taken already"))?;
        Ok(ControlClaim(Some(&connection.control)))
    }

    fn complete(mut self) {
        if let Some(state) = self.0.take() {
            state.store(CONTROL_READY, Ordering::Release);
        }
    }
}

impl Drop for ControlClaim<'_> {
    fn drop(&mut self) {
        if let Some(state) = self.0.take() {
            state.store(CONTROL_NONE, Ordering::Release);
        }
    }
}

/// The connection, checked: the verifier authenticated the peer (and, when
/// pinned, as the expected device), the certificate TLS kept is the one that
/// was verified, ALPN is meshsync's; then the channel binding is derived.
fn establish(
    connection: quinn::Connection,
    role: Role,
    auth: &HandshakeAuth,
    alpn: &[u8],
) -> Result<PeerConnection, NetError> {
    let remote = connection.remote_address();
    let refuse = |error: NetError| {
        connection.close(
            VarInt::from_u32(CLOSE_UNAUTHENTICATED),
            b"authentication failed",
        );
        error
    };
    let unauthenticated = |reason| NetError::Unauthenticated { remote, reason };

    let Outcome::Verified(peer) = auth.outcome() else {
        return Err(refuse(unauthenticated(
            "the handshake signature was never verified",
        )));
    };
    if let Some(expected) = auth.expected()
        && expected != peer
    {
        return Err(refuse(NetError::UnexpectedPeer {
            remote,
            expected,
            actual: peer,
        }));
    }
    let kept_certificate_id = connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| {
            chain
                .first()
                .and_then(|cert| cert::device_id_of_certificate(cert).ok())
        });
    if kept_certificate_id != Some(peer) {
        return Err(refuse(unauthenticated(
            "the peer's certificate is not the one whose signature was verified",
        )));
    }
    let alpn_ok = connection
        .handshake_data()
        .and_then(|data| data.downcast::<HandshakeData>().ok())
        .is_some_and(|data| data.protocol.as_deref() == Some(alpn));
    if !alpn_ok {
        return Err(refuse(unauthenticated(
            "the expected ALPN was not negotiated",
        )));
    }

    let mut channel_binding = [0u8; 32];
    connection
        .export_keying_material(&mut channel_binding, CHANNEL_BINDING_LABEL, b"")
        .map_err(|_| refuse(NetError::ChannelBinding { remote }))?;
    Ok(PeerConnection {
        connection,
        peer,
        role,
        channel_binding,
        control: Arc::new(AtomicU8::new(CONTROL_NONE)),
    })
}

/// The typed reason a handshake failed: what our verifier recorded if it
/// refused the peer, else quinn's error.
fn handshake_error(
    remote: SocketAddr,
    auth: &HandshakeAuth,
    role: Role,
    source: ConnectionError,
) -> NetError {
    match auth.outcome() {
        Outcome::Refused(source) => NetError::PeerCertificate { remote, source },
        Outcome::UnexpectedPeer { actual } => NetError::UnexpectedPeer {
            remote,
            expected: auth.expected().unwrap_or(actual),
            actual,
        },
        Outcome::Pending | Outcome::Verified(_) => match &source {
            ConnectionError::TransportError(error)
                if role == Role::Responder
                    && error.code == TransportErrorCode::crypto(ALERT_CERTIFICATE_REQUIRED) =>
            {
                NetError::MissingClientCertificate { remote }
            }
            _ => NetError::Handshake { remote, source },
        },
    }
}

/// A finished incoming handshake, holding its place among the
/// `max_pending_handshakes` until `accept` takes it.
struct Accepted {
    result: Result<PeerConnection, NetError>,
    _permit: OwnedSemaphorePermit,
}

async fn run_acceptor(
    endpoint: quinn::Endpoint,
    tls: Arc<TlsConfigs>,
    sender: mpsc::Sender<Accepted>,
    permits: Arc<Semaphore>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(remote = %incoming.remote_address(), "too many pending handshakes: refused");
            incoming.refuse();
            continue;
        };
        let tls = tls.clone();
        let sender = sender.clone();
        tokio::spawn(async move {
            let result = accept_incoming(&tls, incoming).await;
            match &result {
                Ok(peer) => {
                    debug!(remote = %peer.connection.remote_address(), peer = %peer.peer, "accepted")
                }
                Err(error) => debug!(%error, "incoming handshake failed"),
            }
            // The channel has a slot per permit, so this never waits; it
            // fails only when the transport is gone, dropping the connection.
            let _ = sender
                .send(Accepted {
                    result,
                    _permit: permit,
                })
                .await;
        });
    }
}

async fn accept_incoming(
    tls: &TlsConfigs,
    incoming: quinn::Incoming,
) -> Result<PeerConnection, NetError> {
    let remote = incoming.remote_address();
    let auth = Arc::new(HandshakeAuth::new(None));
    let config = match tls.server_config(auth.clone()) {
        Ok(config) => config,
        Err(error) => {
            incoming.refuse();
            return Err(error);
        }
    };
    let connecting = incoming
        .accept_with(config)
        .map_err(|source| handshake_error(remote, &auth, Role::Responder, source))?;
    let connection = connecting
        .await
        .map_err(|source| handshake_error(remote, &auth, Role::Responder, source))?;
    establish(connection, Role::Responder, &auth, tls.alpn)
}

/// What every handshake's configuration is built from.
struct TlsConfigs {
    /// rustls' ring provider, chosen explicitly: with both ring and aws-lc-rs
    /// compiled in, rustls cannot pick one at run time (CRATES.md pitfall 1).
    provider: Arc<CryptoProvider>,
    /// This device's certificate and ed25519 signing key.
    certified: Arc<CertifiedKey>,
    transport: Arc<TransportConfig>,
    /// The endpoint's server configuration; each incoming handshake uses a
    /// copy (sharing its token key) with its own TLS verifier.
    server_template: quinn::ServerConfig,
    /// The ALPN the endpoint accepts (and offers by default).
    alpn: &'static [u8],
}

impl TlsConfigs {
    fn new(
        identity: &DeviceIdentity,
        transport: Arc<TransportConfig>,
        alpn: &'static [u8],
    ) -> Result<Self, NetError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certificate = CertificateDer::from(identity.certificate_der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            identity.private_key_pkcs8_der().to_vec(),
        ));
        let certified = Arc::new(
            CertifiedKey::from_der(vec![certificate], key, &provider).map_err(tls_config_error)?,
        );
        // Never used for a handshake (every `Incoming` gets its own copy with
        // its own verifier); a real configuration all the same, so a mistake
        // cannot weaken anything.
        let template_crypto = quic_server(
            &provider,
            &certified,
            Arc::new(HandshakeAuth::new(None)),
            alpn,
        )?;
        let mut server_template = quinn::ServerConfig::with_crypto(Arc::new(template_crypto));
        server_template.transport_config(transport.clone());
        Ok(TlsConfigs {
            provider,
            certified,
            transport,
            server_template,
            alpn,
        })
    }

    fn client_config(
        &self,
        auth: Arc<HandshakeAuth>,
        alpn: &[u8],
    ) -> Result<quinn::ClientConfig, NetError> {
        let mut tls = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_config_error)?
            .dangerous()
            .with_custom_certificate_verifier(auth)
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(self.certified.clone())));
        tls.alpn_protocols = vec![alpn.to_vec()];
        // Every handshake must run the verifier: no resumption, no 0-RTT.
        tls.resumption = rustls::client::Resumption::disabled();
        tls.enable_early_data = false;
        let quic = QuicClientConfig::try_from(tls).map_err(tls_config_error)?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(self.transport.clone());
        Ok(config)
    }

    fn server_config(
        &self,
        auth: Arc<HandshakeAuth>,
    ) -> Result<Arc<quinn::ServerConfig>, NetError> {
        let mut config = self.server_template.clone();
        config.crypto = Arc::new(quic_server(
            &self.provider,
            &self.certified,
            auth,
            self.alpn,
        )?);
        Ok(Arc::new(config))
    }
}

/// The server side of one handshake: TLS 1.3 only, the endpoint's ALPN, a
/// mandatory client certificate checked by `auth`.
fn quic_server(
    provider: &Arc<CryptoProvider>,
    certified: &Arc<CertifiedKey>,
    auth: Arc<HandshakeAuth>,
    alpn: &[u8],
) -> Result<QuicServerConfig, NetError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_config_error)?
        .with_client_cert_verifier(auth)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified.clone())));
    tls.alpn_protocols = vec![alpn.to_vec()];
    // Every handshake must run the verifier: no tickets, no 0-RTT.
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    tls.max_early_data_size = 0;
    QuicServerConfig::try_from(tls).map_err(tls_config_error)
}

fn tls_config_error(error: impl std::error::Error + Send + Sync + 'static) -> NetError {
    NetError::TlsConfig {
        source: Box::new(error),
    }
}

/// Binds the UDP socket with socket2, so its buffer sizes can be set
/// (quinn leaves them at the operating system's default).
fn bind_socket(
    addr: SocketAddr,
    buffer_bytes: usize,
) -> Result<(std::net::UdpSocket, SocketBufferSizes), NetError> {
    let error = |source| NetError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(error)?;
    if buffer_bytes > 0 {
        socket.set_recv_buffer_size(buffer_bytes).map_err(error)?;
        socket.set_send_buffer_size(buffer_bytes).map_err(error)?;
    }
    socket.bind(&addr.into()).map_err(error)?;
    socket.set_nonblocking(true).map_err(error)?;
    let sizes = SocketBufferSizes {
        receive: socket.recv_buffer_size().map_err(error)?,
        send: socket.send_buffer_size().map_err(error)?,
    };
    if buffer_bytes > 0 && (sizes.receive < buffer_bytes || sizes.send < buffer_bytes) {
        warn!(
            requested = buffer_bytes,
            ?sizes,
            "UDP socket buffers smaller than requested; raise net.core.rmem_max and net.core.wmem_max for full speed"
        );
    }
    Ok((socket.into(), sizes))
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
