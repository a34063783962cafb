//! [`NetError`]: why a transport operation failed, one variant per cause, each
//! naming the address or device it concerns.

use std::io;
use std::net::SocketAddr;

use meshsync_core::ids::DeviceId;

use crate::cert::CertificateError;

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// A [`TransportOptions`](crate::TransportOptions) value is out of range.
    #[error("invalid transport options: {reason}")]
    InvalidOptions {
        /// Which value, and why.
        reason: &'static str,
    },

    /// The UDP socket could not be created, configured or bound.
    #[error("cannot bind the UDP socket {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },

    /// The TLS configuration could not be built from this device's identity.
    #[error("cannot build the TLS configuration: {source}")]
    TlsConfig {
        /// rustls' or quinn's reason.
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The connection attempt could not start (closed endpoint, bad address).
    #[error("cannot connect to {remote}: {source}")]
    Connect {
        /// The address being connected to.
        remote: SocketAddr,
        /// quinn's reason.
        source: quinn::ConnectError,
    },

    /// The handshake failed for a reason other than the peer's certificate:
    /// the peer refused ours, timed out, or spoke another protocol.
    #[error("handshake with {remote} failed: {source}")]
    Handshake {
        /// The peer's address.
        remote: SocketAddr,
        /// quinn's reason (for a TLS alert, its code and text).
        source: quinn::ConnectionError,
    },

    /// This side refused the peer's certificate or handshake signature.
    #[error("refused the certificate of {remote}: {source}")]
    PeerCertificate {
        /// The peer's address.
        remote: SocketAddr,
        /// What was wrong with it.
        source: CertificateError,
    },

    /// A connecting client presented no certificate; every peer must.
    #[error("{remote} presented no device certificate")]
    MissingClientCertificate {
        /// The client's address.
        remote: SocketAddr,
    },

    /// The peer is a valid device, but not the one the connection was pinned
    /// to.
    #[error("{remote} is device {actual}, not the expected {expected}")]
    UnexpectedPeer {
        /// The peer's address.
        remote: SocketAddr,
        /// The device asked for.
        expected: DeviceId,
        /// The device named by the certificate the peer presented. Not
        /// proven: the handshake is aborted before the peer signs.
        actual: DeviceId,
    },

    /// The handshake finished without the verifier having authenticated the
    /// peer, or without the meshsync ALPN. Never expected: a guard against a
    /// TLS stack that skips the verifier (resumption, for instance).
    #[error("the connection with {remote} completed without authentication: {reason}")]
    Unauthenticated {
        /// The peer's address.
        remote: SocketAddr,
        /// What was missing.
        reason: &'static str,
    },

    /// The connection's TLS exporter refused to derive the channel binding
    /// (it only does so for absurd output lengths: never expected).
    #[error("cannot derive the channel binding with {remote}")]
    ChannelBinding {
        /// The peer's address.
        remote: SocketAddr,
    },

    /// An established connection failed or was closed while opening or
    /// accepting a stream.
    #[error("connection with {peer} failed: {source}")]
    Connection {
        /// The peer.
        peer: DeviceId,
        /// quinn's reason.
        source: quinn::ConnectionError,
    },

    /// Streams were used out of order: the control stream is the Initiator's
    /// first bidirectional stream, opened and accepted before any chunk
    /// stream, exactly once.
    #[error("stream order with {peer}: {reason}")]
    StreamOrder {
        /// The peer.
        peer: DeviceId,
        /// Which rule was broken.
        reason: &'static str,
    },
}
