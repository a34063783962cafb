//! A relay tunnel: a local UDP socket that stands in for a peer reached
//! through a tracker's relay.
//!
//! The daemon's QUIC endpoint only speaks UDP, and a relay session is a QUIC
//! stream on the tracker connection. The tunnel joins them: it binds a UDP
//! socket next to the daemon's own (on loopback, or the daemon's own address
//! when it listens on a specific one), sends every datagram the daemon's
//! endpoint sends to it down the relay stream, and hands every datagram that
//! comes up the stream to the daemon's endpoint *from the tunnel's address*.
//! To the endpoint, the tunnel's address simply is the peer: a dial to it
//! reaches the peer, and the peer's dial arrives from it. The discovery code
//! offers that address to the address book as a relayed path, so both the
//! dialling and the accepting side show `relayed`.
//!
//! Nothing is decrypted or parsed here beyond the datagram lengths: the
//! packets are the two devices' own QUIC packets, TLS end to end, and the
//! peer is pinned by device id when dialled. Datagrams from any address but
//! the daemon's endpoint are dropped (another local process cannot inject
//! through the tunnel). A tunnel ends when the relay stream ends or nothing
//! has passed either way for [`IDLE_TIMEOUT`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meshsync_proto::tracker::{DatagramDecoder, MAX_RELAY_DATAGRAM, encode_datagram};
use quinn::{RecvStream, SendStream, VarInt};
use tokio::net::UdpSocket;

/// A tunnel with no datagram either way for this long closes (longer than
/// the QUIC idle timeout, so a live connection's keep-alives hold it open).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Datagrams read from the socket before one write to the stream.
const BATCH: usize = 32;

/// An open tunnel.
pub struct Tunnel {
    /// The address that stands in for the peer.
    pub addr: SocketAddr,
    socket: UdpSocket,
    endpoint: SocketAddr,
}

/// Where the daemon's endpoint at `local` can be reached from this host,
/// and the address a tunnel binds next to it.
fn addresses(local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let ip = match local.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    (SocketAddr::new(ip, local.port()), SocketAddr::new(ip, 0))
}

impl Tunnel {
    /// Binds a tunnel for the daemon endpoint bound at `endpoint_local`.
    pub async fn bind(endpoint_local: SocketAddr) -> std::io::Result<Tunnel> {
        let (endpoint, bind) = addresses(endpoint_local);
        let socket = UdpSocket::bind(bind).await?;
        Ok(Tunnel {
            addr: socket.local_addr()?,
            socket,
            endpoint,
        })
    }

    /// Carries datagrams between the socket and the relay stream until
    /// either ends or the tunnel idles out. Returns the bytes carried (to
    /// the relay, from the relay).
    pub async fn run(self, mut send: SendStream, mut recv: RecvStream) -> (u64, u64) {
        let socket = Arc::new(self.socket);
        let last = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let touch = |last: &AtomicU64| {
            last.store(start.elapsed().as_secs(), Ordering::Relaxed);
        };
        let up = {
            let (socket, last) = (Arc::clone(&socket), Arc::clone(&last));
            let endpoint = self.endpoint;
            async move {
                let mut carried = 0u64;
                let mut buf = vec![0u8; MAX_RELAY_DATAGRAM + 1];
                let mut frames = Vec::with_capacity(BATCH * (MAX_RELAY_DATAGRAM + 2));
                loop {
                    let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                        return carried;
                    };
                    frames.clear();
                    // Only the daemon's own endpoint may use the tunnel.
                    if from == endpoint {
                        let _ = encode_datagram(&mut frames, &buf[..n]);
                    }
                    for _ in 1..BATCH {
                        match socket.try_recv_from(&mut buf) {
                            Ok((n, from)) if from == endpoint => {
                                let _ = encode_datagram(&mut frames, &buf[..n]);
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                    if frames.is_empty() {
                        continue;
                    }
                    touch(&last);
                    if send.write_all(&frames).await.is_err() {
                        return carried;
                    }
                    carried += frames.len() as u64;
                }
            }
        };
        let down = {
            let (socket, last) = (Arc::clone(&socket), Arc::clone(&last));
            let endpoint = self.endpoint;
            async move {
                let mut carried = 0u64;
                let mut decoder = DatagramDecoder::new();
                loop {
                    let chunk = match recv.read_chunk(64 * 1024, true).await {
                        Ok(Some(chunk)) => chunk,
                        Ok(None) | Err(_) => return carried,
                    };
                    touch(&last);
                    carried += chunk.bytes.len() as u64;
                    decoder.push(&chunk.bytes);
                    loop {
                        match decoder.next_datagram() {
                            Ok(Some(datagram)) => {
                                let _ = socket.send_to(datagram, endpoint).await;
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::info!("relay tunnel: {e}; closed");
                                let _ = recv.stop(VarInt::from_u32(1));
                                return carried;
                            }
                        }
                    }
                }
            }
        };
        let idle = async {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let quiet = start
                    .elapsed()
                    .as_secs()
                    .saturating_sub(last.load(Ordering::Relaxed));
                if quiet >= IDLE_TIMEOUT.as_secs() {
                    return;
                }
            }
        };
        let mut up = std::pin::pin!(up);
        let mut down = std::pin::pin!(down);
        let mut totals = (0, 0);
        tokio::select! {
            n = &mut up => totals.0 = n,
            n = &mut down => totals.1 = n,
            () = idle => {}
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnel_sits_next_to_the_endpoint() {
        let (endpoint, bind) = addresses("0.0.0.0:22000".parse().unwrap());
        assert_eq!(endpoint, "127.0.0.1:22000".parse().unwrap());
        assert_eq!(bind, "127.0.0.1:0".parse().unwrap());
        let (endpoint, bind) = addresses("[::]:22000".parse().unwrap());
        assert_eq!(endpoint, "[::1]:22000".parse().unwrap());
        assert_eq!(bind, "[::1]:0".parse().unwrap());
        let (endpoint, bind) = addresses("10.1.0.2:22000".parse().unwrap());
        assert_eq!(endpoint, "10.1.0.2:22000".parse().unwrap());
        assert_eq!(bind, "10.1.0.2:0".parse().unwrap());
    }
}
