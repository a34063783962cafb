//! [`TransportOptions`]: the QUIC and socket settings, with defaults measured
//! for one connection filling a fast LAN (CRATES.md's quinn figures, and
//! `examples/throughput.rs`: one stream on loopback).

use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, TransportConfig, VarInt};

use crate::NetError;

/// 4 MiB. quinn does not set socket buffer sizes itself. CRATES.md: one
/// stream on loopback, 8.3–8.7 Gbit/s with the OS default, 8.8–9.0 with
/// 4 MiB. Measured again with this transport (`examples/throughput.rs`):
/// with the default 208 KiB, every GiB lost 8,000–15,000 packets and saw
/// 160–200 congestion events; with 4 MiB, none.
pub const DEFAULT_SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Loss detection goes by time, not by packet counts: a packet is lost
/// once a later one was acknowledged and [`LOSS_TIME_THRESHOLD`] round
/// trips have passed since it was sent. RFC 9002's defaults (3 packets,
/// 9/8 RTT) take reordering for loss, and quinn never undoes the window cut
/// a false loss made. Linux TCP's RACK also decides by time, with a
/// reordering window it adapts; quinn has none, so the window is fixed.
///
/// Measured through the lossy link of `crates/meshsync/tests/lossy_link`
/// (80 ms RTT, each datagram delayed 40 ± 10 ms each way on its own, so
/// reordered; nothing lost), two debug daemons on the loaded 2-core
/// machine: 3 MB took 42 s with the RFC's values (1.3 s with the same
/// jitter in order), 28 s at (3 packets, 1.5 RTT), 19 s at (1000, 1.25),
/// 6 s at (1000, 1.5). 7 MB did not finish in 50 s with the RFC's values;
/// at (1000, 1.5) it took 1.7 to 18 s over 14 runs (median 6 s; the slow
/// runs are likely one false loss early, after which CUBIC grows slowly at
/// 80 ms), and no better at 2 RTT. With 2 % loss in order (nothing to mistake) the
/// RFC's values and these both took 21-24 s for 3 MB, and one stream on
/// loopback (`examples/throughput.rs`, 512 MiB, 4 MiB and 208 KiB socket
/// buffers) ran as fast as before within the noise. The cost: a real loss
/// is noticed up to half an RTT later.
///
/// So many later packets acknowledged make a packet lost: in effect never
/// before the time threshold.
const LOSS_PACKET_THRESHOLD: u32 = 1000;

/// How long after it was sent (in round trips) a packet whose successor
/// was acknowledged counts as lost; see [`LOSS_PACKET_THRESHOLD`].
const LOSS_TIME_THRESHOLD: f32 = 1.5;

/// Settings of a [`Transport`](crate::Transport). `Default` gives the
/// measured values; change single fields with struct update syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportOptions {
    /// Requested size of the UDP socket's receive and send buffers, in bytes
    /// (`SO_RCVBUF`, `SO_SNDBUF`); 0 leaves the operating system's default.
    /// Linux caps the request at `net.core.rmem_max` / `wmem_max`.
    /// Default: 4 MiB ([`DEFAULT_SOCKET_BUFFER_BYTES`]).
    pub socket_buffer_bytes: usize,

    /// How often to send a keep-alive when the connection is otherwise quiet,
    /// so NAT mappings and the idle timer stay fresh; `None` sends none.
    /// Must be shorter than [`idle_timeout`](Self::idle_timeout).
    /// Default: 10 s.
    pub keep_alive_interval: Option<Duration>,

    /// A connection with no packets from the peer for this long is closed
    /// (the smaller of both sides' values applies). Default: 30 s
    /// (RFC 9308 §3.2).
    pub idle_timeout: Duration,

    /// How many bidirectional streams the peer may have open at once: the
    /// control stream plus pipelined chunk requests. Default: 512.
    pub max_concurrent_bidi_streams: u32,

    /// Bytes one stream may have in flight towards us (flow-control window).
    /// Default: 2 MiB, enough for 10 Gbit/s at 1.6 ms round trip. Measured
    /// on loopback (one stream, 1 GiB): 1.25–2 MiB ran about 10 % faster and
    /// used less CPU per byte than 8 MiB; CRATES.md found 64–256 MiB slower
    /// still. Bigger windows only help one stream over a long fat link; chunk
    /// transfers use many streams at once.
    pub stream_receive_window: u64,

    /// Bytes all streams of one connection may have in flight towards us:
    /// what one peer can make us buffer. Default: 32 MiB (16 chunk streams
    /// at a full window).
    pub receive_window: u64,

    /// Bytes of unacknowledged data we buffer for sending on one connection.
    /// Default: 16 MiB.
    pub send_window: u64,

    /// The congestion controller. Default: [`CongestionControl::Cubic`].
    pub congestion_control: CongestionControl,

    /// How many incoming handshakes may be in progress (or finished but not
    /// yet taken by [`Transport::accept`](crate::Transport::accept)) at once;
    /// further connection attempts are refused until one completes.
    /// Default: 64.
    pub max_pending_handshakes: usize,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            socket_buffer_bytes: DEFAULT_SOCKET_BUFFER_BYTES,
            keep_alive_interval: Some(Duration::from_secs(10)),
            idle_timeout: Duration::from_secs(30),
            max_concurrent_bidi_streams: 512,
            stream_receive_window: 2 << 20,
            receive_window: 32 << 20,
            send_window: 16 << 20,
            congestion_control: CongestionControl::Cubic,
            max_pending_handshakes: 64,
        }
    }
}

/// Which congestion controller a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CongestionControl {
    /// CUBIC (RFC 9438), quinn's default. Measured best on LAN and loopback.
    #[default]
    Cubic,
    /// BBR (quinn's is experimental). Measured slower and lossy on loopback;
    /// meant for long fat links, where it should be measured first.
    Bbr,
}

impl TransportOptions {
    /// quinn's transport configuration for these options, shared by both
    /// roles.
    pub(crate) fn quinn_transport(&self) -> Result<Arc<TransportConfig>, NetError> {
        let invalid = |reason| NetError::InvalidOptions { reason };
        if self.idle_timeout.is_zero() {
            return Err(invalid("idle_timeout must be positive"));
        }
        if let Some(interval) = self.keep_alive_interval
            && (interval.is_zero() || interval >= self.idle_timeout)
        {
            return Err(invalid(
                "keep_alive_interval must be positive and shorter than idle_timeout",
            ));
        }
        if self.max_concurrent_bidi_streams == 0 {
            return Err(invalid(
                "max_concurrent_bidi_streams must allow at least the control stream",
            ));
        }
        if self.max_pending_handshakes == 0 {
            return Err(invalid("max_pending_handshakes must be positive"));
        }
        let idle = IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| invalid("idle_timeout is too long"))?;
        let stream_window = VarInt::from_u64(self.stream_receive_window)
            .map_err(|_| invalid("stream_receive_window is too large"))?;
        let window = VarInt::from_u64(self.receive_window)
            .map_err(|_| invalid("receive_window is too large"))?;

        let mut config = TransportConfig::default();
        config
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_concurrent_bidi_streams))
            // The protocol uses bidirectional streams only.
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .datagram_receive_buffer_size(None)
            .stream_receive_window(stream_window)
            .receive_window(window)
            .send_window(self.send_window)
            .keep_alive_interval(self.keep_alive_interval)
            .max_idle_timeout(Some(idle))
            .packet_threshold(LOSS_PACKET_THRESHOLD)
            .time_threshold(LOSS_TIME_THRESHOLD);
        match self.congestion_control {
            CongestionControl::Cubic => {
                config.congestion_controller_factory(Arc::new(
                    quinn::congestion::CubicConfig::default(),
                ));
            }
            CongestionControl::Bbr => {
                config.congestion_controller_factory(Arc::new(
                    quinn::congestion::BbrConfig::default(),
                ));
            }
        }
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(TransportOptions::default().quinn_transport().is_ok());
    }

    #[test]
    fn keep_alive_must_be_shorter_than_the_idle_timeout() {
        let options = TransportOptions {
            keep_alive_interval: Some(Duration::from_secs(30)),
            ..TransportOptions::default()
        };
        assert!(matches!(
            options.quinn_transport(),
            Err(NetError::InvalidOptions { .. })
        ));
        let options = TransportOptions {
            keep_alive_interval: None,
            ..TransportOptions::default()
        };
        assert!(options.quinn_transport().is_ok());
    }

    #[test]
    fn out_of_range_values_are_refused() {
        for options in [
            TransportOptions {
                idle_timeout: Duration::ZERO,
                ..TransportOptions::default()
            },
            TransportOptions {
                receive_window: u64::MAX,
                ..TransportOptions::default()
            },
            TransportOptions {
                max_concurrent_bidi_streams: 0,
                ..TransportOptions::default()
            },
            TransportOptions {
                max_pending_handshakes: 0,
                ..TransportOptions::default()
            },
        ] {
            assert!(
                matches!(
                    options.quinn_transport(),
                    Err(NetError::InvalidOptions { .. })
                ),
                "{options:?}"
            );
        }
    }
}
