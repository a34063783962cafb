//! meshsync's network shell: the QUIC transport between devices.
//!
//! A [`Transport`] is one quinn endpoint on one UDP socket that both connects
//! to peers ([`Transport::connect`]) and accepts them ([`Transport::accept`]).
//! Every connection is a [`PeerConnection`]: the peer's [`DeviceId`], our
//! [`Role`], the TLS channel binding, and helpers for the control stream and
//! chunk streams.
//!
//! # What it guarantees
//!
//! - **The peer is authenticated by its [`DeviceId`].** Both sides present a
//!   self-signed certificate over their ed25519 device key (mutual TLS); our
//!   verifiers take the key from the certificate's `subjectPublicKeyInfo`,
//!   check the TLS 1.3 handshake signature with it themselves
//!   ([`cert`]), and the peer's id is BLAKE3 of exactly the key that proved
//!   possession. No certificate authority, names or dates are involved.
//!   [`Transport::connect`] can pin the id it expects: another device is
//!   refused during the handshake, before our certificate is sent to it.
//! - **TLS 1.3 only**, with the ring provider chosen explicitly, ALPN
//!   [`ALPN`], and no session resumption or 0-RTT (each handshake runs the
//!   verifiers in full).
//! - **Channel binding**: [`PeerConnection::channel_binding`] is TLS exporter
//!   output ([`CHANNEL_BINDING_LABEL`]), equal on both ends and unique to the
//!   connection, for the access-key proof the protocol layer runs next.
//! - Settings measured for one connection filling a fast link:
//!   [`TransportOptions`] (4 MiB socket buffers set through socket2, Cubic,
//!   keep-alive, 512 bidirectional streams, 2 MiB stream and 32 MiB
//!   connection windows).
//!
//! It also carries connections to a tracker ([`Transport::bind_service`],
//! [`Transport::connect_service`], [`TRACKER_ALPN`]) from the device's own
//! socket, so the tracker sees the address peers will reach it at.
//!
//! [`ratelimit`] holds the sans-IO token buckets and source keys that bound
//! what one address may cost (the tracker's request limits, the daemon's
//! bandwidth limits and bounds on strangers).
//!
//! What it does not do: decide whether a device may sync a folder (the
//! access-key proof and allowlists belong to the protocol layer), discovery,
//! or NAT traversal.
//!
//! # What it must never do
//!
//! - hand out a connection whose peer was not authenticated, or accept a key
//!   other than ed25519 or a certificate that does not parse exactly;
//! - fall back to TLS 1.2 (or accept a TLS 1.2 signature);
//! - touch anything but loopback (127.0.0.1, ::1) in tests.
//!
//! # Throughput
//!
//! `cargo run --release -p meshsync-net --example throughput` sends 1 GiB
//! over one stream on loopback and prints the rate. On the 2-core KVM
//! development machine: 4.6–6.5 Gbit/s, the same as bare quinn (default
//! configuration, 4 MiB socket buffers) run alternately with it (4.4–6.6;
//! the machine gave 8.8–9.0 for bare quinn when CRATES.md was written, so
//! compare runs only side by side).

pub mod cert;
mod error;
mod options;
pub mod ratelimit;
mod transport;
mod verify;

pub use cert::CertificateError;
pub use error::NetError;
pub use options::{CongestionControl, DEFAULT_SOCKET_BUFFER_BYTES, TransportOptions};
pub use transport::{PeerConnection, Role, SocketBufferSizes, Transport};

#[doc(no_inline)]
pub use meshsync_core::ids::DeviceId;

/// The ALPN protocol id of meshsync's QUIC connections. A peer that does not
/// offer it is refused.
pub const ALPN: &[u8] = b"meshsync/1";

/// The ALPN protocol id of connections to a tracker
/// ([`Transport::connect_service`]).
pub const TRACKER_ALPN: &[u8] = b"meshsync-tracker/1";

/// The TLS server name every client sends. A placeholder: servers are
/// authenticated by [`DeviceId`], never by name.
pub const SERVER_NAME: &str = "meshsync";

/// The TLS exporter label of [`PeerConnection::channel_binding`] (RFC 8446
/// §7.5; the context is empty, the output 32 bytes).
pub const CHANNEL_BINDING_LABEL: &[u8] = b"EXPORTER-meshsync-access-v1";
