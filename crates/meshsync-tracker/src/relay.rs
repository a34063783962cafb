//! The relay: pairs two devices' relay streams and forwards their bytes.
//!
//! A session is created by [`Relay::offer`] when one device asks for it (the
//! server has checked that both devices are connected and share a lookup
//! key); its random [`RelayToken`] goes to exactly those two devices. Each
//! opens a bidirectional stream on its tracker connection and sends
//! `RelayJoin{token}` ([`Relay::join`]); a join from any other device, a
//! second join from the same device or an unknown token is refused. Once
//! both have joined, each stream's bytes are copied to the other as they
//! come, unread except for the datagram lengths
//! ([`DatagramChecker`]): what flows is the devices' own QUIC packets, so TLS
//! runs end to end and the relay sees only sizes and timing.
//!
//! Bounds: at most [`RelayOptions::max_sessions`] sessions (pending or
//! active) and [`RelayOptions::max_sessions_per_device`] per device; a
//! session whose second device does not join within
//! [`RelayOptions::pair_timeout`] is dropped and its stream reset (its bytes
//! were never read: they sat in the stream's flow-control window, which
//! bounds them); a datagram longer than
//! [`MAX_RELAY_DATAGRAM`](meshsync_proto::tracker::MAX_RELAY_DATAGRAM) ends
//! the session; bytes are paced by a per-session token bucket (both
//! directions together) and one for the whole relay, by waiting — the
//! devices' congestion control sees a slower path, nothing is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshsync_core::ids::DeviceId;
use meshsync_proto::tracker::{
    DatagramChecker, RefuseReason, RelayToken, ServerMessage, TrackerCodecError, encode_server,
};
use quinn::{RecvStream, SendStream, VarInt};
use tracing::{debug, info};

use meshsync_net::ratelimit::TokenBucket;

/// Stream error code: the other device left (or the session ended).
pub const RELAY_CLOSED: u32 = 0;
/// Stream error code: a datagram over the size limit.
pub const RELAY_TOO_LARGE: u32 = 1;
/// Stream error code: the other device never joined.
pub const RELAY_UNPAIRED: u32 = 2;
/// Stream error code: the join was refused.
pub const RELAY_REFUSED: u32 = 3;

/// Settings of the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayOptions {
    /// Bytes per second one session may forward (both directions
    /// together); 0: unlimited.
    pub session_rate: u64,
    /// Bytes per second the relay forwards in total; 0: unlimited.
    pub total_rate: u64,
    /// Sessions (pending or active) at once.
    pub max_sessions: usize,
    /// Sessions one device may be in at once.
    pub max_sessions_per_device: usize,
    /// How long the first device of a session waits for the second.
    pub pair_timeout: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            session_rate: 4 << 20,
            total_rate: 64 << 20,
            max_sessions: 1024,
            max_sessions_per_device: 8,
            pair_timeout: Duration::from_secs(15),
        }
    }
}

/// Counters of the relay.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Sessions paired.
    pub paired: AtomicU64,
    /// Bytes forwarded (both directions).
    pub bytes: AtomicU64,
    /// Joins refused (unknown token, wrong device, twice).
    pub refused_joins: AtomicU64,
    /// Sessions dropped because the second device never joined.
    pub unpaired: AtomicU64,
    /// Sessions ended because of an oversized datagram.
    pub oversized: AtomicU64,
}

struct Waiting {
    device: DeviceId,
    send: SendStream,
    recv: RecvStream,
}

enum Phase {
    Pending {
        created: Instant,
        waiting: Option<Waiting>,
    },
    Active,
}

struct Session {
    devices: [DeviceId; 2],
    phase: Phase,
}

/// Relay sessions and their budgets.
pub struct Relay {
    options: RelayOptions,
    sessions: Mutex<HashMap<RelayToken, Session>>,
    total: Arc<Mutex<TokenBucket>>,
    /// Counters.
    pub stats: Arc<RelayStats>,
}

impl Relay {
    /// A relay with no sessions.
    pub fn new(options: RelayOptions) -> Arc<Self> {
        let total = TokenBucket::new(
            Instant::now(),
            options.total_rate as f64,
            burst_of(options.total_rate),
        );
        Arc::new(Relay {
            options,
            sessions: Mutex::new(HashMap::new()),
            total: Arc::new(Mutex::new(total)),
            stats: Arc::default(),
        })
    }

    /// Opens a session between `a` and `b` under `token`, if there is room.
    pub fn offer(
        &self,
        now: Instant,
        a: DeviceId,
        b: DeviceId,
        token: RelayToken,
    ) -> Result<(), RefuseReason> {
        let mut sessions = self.sessions.lock().expect("poisoned");
        if sessions.len() >= self.options.max_sessions {
            return Err(RefuseReason::RelayBusy);
        }
        let of = |d: DeviceId| sessions.values().filter(|s| s.devices.contains(&d)).count();
        if of(a) >= self.options.max_sessions_per_device
            || of(b) >= self.options.max_sessions_per_device
        {
            return Err(RefuseReason::RelayBusy);
        }
        sessions.insert(
            token,
            Session {
                devices: [a, b],
                phase: Phase::Pending {
                    created: now,
                    waiting: None,
                },
            },
        );
        Ok(())
    }

    /// `device` opened a relay stream for `token`: waits for the other
    /// device, or pairs with it and forwards until either side ends.
    pub async fn join(
        self: &Arc<Self>,
        device: DeviceId,
        token: RelayToken,
        send: SendStream,
        recv: RecvStream,
    ) {
        let paired: Option<Waiting> = {
            let mut sessions = self.sessions.lock().expect("poisoned");
            match sessions.get_mut(&token) {
                Some(session) if session.devices.contains(&device) => match &mut session.phase {
                    Phase::Pending { waiting, .. } => match waiting.take() {
                        None => {
                            *waiting = Some(Waiting { device, send, recv });
                            debug!(%device, ?token, "relay: first device joined");
                            return;
                        }
                        Some(first) if first.device != device => {
                            session.phase = Phase::Active;
                            Some(first)
                        }
                        Some(first) => {
                            *waiting = Some(first);
                            None
                        }
                    },
                    Phase::Active => None,
                },
                _ => None,
            }
        };
        let Some(other) = paired else {
            return self.refuse_join(device, token, send).await;
        };
        self.stats.paired.fetch_add(1, Ordering::Relaxed);
        info!(a = %other.device, b = %device, "relay: session paired");
        let session = Arc::new(Mutex::new(TokenBucket::new(
            Instant::now(),
            self.options.session_rate as f64,
            burst_of(self.options.session_rate),
        )));
        let mut a = (other.send, other.recv);
        let mut b = (send, recv);
        let ended = {
            let ab = pump(&mut a.1, &mut b.0, &session, &self.total, &self.stats);
            let ba = pump(&mut b.1, &mut a.0, &session, &self.total, &self.stats);
            tokio::select! {
                r = ab => r.map_err(|e| (other.device, e)),
                r = ba => r.map_err(|e| (device, e)),
            }
        };
        let code = match ended {
            Ok(()) => RELAY_CLOSED,
            Err((from, PumpError::Codec(e))) => {
                self.stats.oversized.fetch_add(1, Ordering::Relaxed);
                info!(device = %from, "relay: {e}; session closed");
                RELAY_TOO_LARGE
            }
            Err((from, PumpError::Stream)) => {
                debug!(device = %from, "relay: stream ended");
                RELAY_CLOSED
            }
        };
        for send in [&mut a.0, &mut b.0] {
            if code == RELAY_CLOSED {
                let _ = send.finish();
            } else {
                let _ = send.reset(VarInt::from_u32(code));
            }
        }
        for recv in [&mut a.1, &mut b.1] {
            let _ = recv.stop(VarInt::from_u32(code));
        }
        self.sessions.lock().expect("poisoned").remove(&token);
    }

    /// A join refused: say why on the stream, then reset it.
    async fn refuse_join(&self, device: DeviceId, token: RelayToken, mut send: SendStream) {
        self.stats.refused_joins.fetch_add(1, Ordering::Relaxed);
        info!(%device, ?token, "relay: join refused (no such session for this device)");
        if let Ok(frame) = encode_server(&ServerMessage::Refused {
            request: 4,
            reason: RefuseReason::UnknownSession,
        }) {
            let _ = tokio::time::timeout(Duration::from_secs(2), send.write_all(&frame)).await;
        }
        let _ = send.finish();
    }

    /// Drops sessions whose second device did not join in time, resetting
    /// the first device's stream, and forgets sessions offered to devices
    /// that never joined at all.
    pub fn sweep(&self, now: Instant) {
        let mut sessions = self.sessions.lock().expect("poisoned");
        sessions.retain(|_, s| match &mut s.phase {
            Phase::Pending { created, waiting }
                if now.saturating_duration_since(*created) >= self.options.pair_timeout =>
            {
                if let Some(mut w) = waiting.take() {
                    self.stats.unpaired.fetch_add(1, Ordering::Relaxed);
                    info!(device = %w.device, "relay: the other device never joined; session dropped");
                    let _ = w.send.reset(VarInt::from_u32(RELAY_UNPAIRED));
                    let _ = w.recv.stop(VarInt::from_u32(RELAY_UNPAIRED));
                }
                false
            }
            _ => true,
        });
    }

    /// Sessions pending or active.
    pub fn sessions(&self) -> usize {
        self.sessions.lock().expect("poisoned").len()
    }
}

/// A token bucket's burst for `rate` bytes/s: a quarter of a second's worth,
/// at least 64 KiB (a few windows of datagrams).
fn burst_of(rate: u64) -> f64 {
    (rate as f64 / 4.0).max(64.0 * 1024.0)
}

enum PumpError {
    Codec(TrackerCodecError),
    Stream,
}

/// Copies `recv` to `send` until `recv` ends, checking datagram framing and
/// pacing by both buckets.
async fn pump(
    recv: &mut RecvStream,
    send: &mut SendStream,
    session: &Mutex<TokenBucket>,
    total: &Mutex<TokenBucket>,
    stats: &RelayStats,
) -> Result<(), PumpError> {
    let mut checker = DatagramChecker::new();
    loop {
        let chunk = match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(()),
            Err(_) => return Err(PumpError::Stream),
        };
        checker.check(&chunk.bytes).map_err(PumpError::Codec)?;
        let n = chunk.bytes.len() as f64;
        let now = Instant::now();
        let wait = {
            let s = session.lock().expect("poisoned").spend(now, n);
            let t = total.lock().expect("poisoned").spend(now, n);
            s.max(t)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        stats
            .bytes
            .fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
        send.write_chunk(chunk.bytes)
            .await
            .map_err(|_| PumpError::Stream)?;
    }
}
