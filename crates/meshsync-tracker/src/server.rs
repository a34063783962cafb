//! [`Tracker`]: the I/O shell around the [`Directory`], the
//! [`SourceLimiter`] and the [`Relay`]: one QUIC endpoint, one task per
//! client connection, one per stream.
//!
//! A client connection is a device (authenticated by its ed25519 device
//! certificate, [`meshsync_net::Transport::bind_service`]) connecting from
//! the very UDP socket it syncs on, so the address the tracker sees is the
//! one a NAT gives that socket. Its first bidirectional stream that does not
//! start with `RelayJoin` is its control stream (exactly one); streams that
//! start with `RelayJoin` are relay streams. Every request is charged to the
//! connection's source address (IPv4 address or IPv6 /64) in a token bucket;
//! over budget, it is answered `Refused{RateLimited}` and not acted on. A
//! message that does not decode closes the connection. When a connection
//! closes, the device's announcements go with it (its observed address is
//! gone too).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshsync_core::ids::DeviceId;
use meshsync_net::{NetError, PeerConnection, TRACKER_ALPN, Transport, TransportOptions};
use meshsync_proto::frame::{FrameDecoder, HEADER_LEN};
use meshsync_proto::tracker::{
    ClientMessage, MAX_ADDRS, MAX_MESSAGE_LEN, MAX_PUNCH_DELAY_MS, RefuseReason, RelayToken,
    ServerMessage, decode_client, encode_server,
};
use meshsync_store::identity::DeviceIdentity;
use quinn::{RecvStream, SendStream, VarInt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::directory::{Directory, DirectoryLimits};
use crate::relay::{Relay, RelayOptions};
use meshsync_net::ratelimit::{SourceKey, SourceLimiter};

/// Connection close code: the client broke the protocol.
pub const CLOSE_BAD_MESSAGE: u32 = 16;
/// Connection close code: too many connections or handshakes from the
/// client's source address.
pub const CLOSE_LIMIT: u32 = 17;
/// Connection close code: the same device connected again.
pub const CLOSE_REPLACED: u32 = 18;

/// How long a stream may take to send its first message.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued for one client; more are dropped (it is not reading).
const MAILBOX: usize = 256;
/// How often expired announcements and unpaired relay sessions are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Request costs, in the per-source bucket's tokens.
const COST_CONNECT: f64 = 4.0;
const COST_PUNCH: f64 = 4.0;
const COST_RELAY: f64 = 8.0;

/// Why the tracker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrackerError {
    /// The QUIC endpoint could not be set up (bind failed, bad options).
    #[error(transparent)]
    Net(#[from] NetError),
    /// The tracker's own key could not be made.
    #[error("creating the tracker's key: {0}")]
    Identity(String),
}

/// Everything a [`Tracker`] can be told.
#[derive(Debug, Clone)]
pub struct TrackerOptions {
    /// Bounds and TTL of announcements.
    pub directory: DirectoryLimits,
    /// Requests per second per source address (an announce costs one per
    /// key, a connection 4, a punch 4, a relay session 8).
    pub request_rate: f64,
    /// Requests a source may make in a burst.
    pub request_burst: f64,
    /// Source addresses tracked by the rate limiter at once.
    pub max_sources: usize,
    /// Connections at once from one source address.
    pub max_connections_per_source: usize,
    /// The relay, or `None` for none.
    pub relay: Option<RelayOptions>,
    /// QUIC settings.
    pub transport: TransportOptions,
}

impl Default for TrackerOptions {
    fn default() -> Self {
        TrackerOptions {
            directory: DirectoryLimits::default(),
            request_rate: 20.0,
            request_burst: 400.0,
            max_sources: 100_000,
            max_connections_per_source: 64,
            relay: Some(RelayOptions::default()),
            transport: TransportOptions {
                // One control stream and a few relay streams per client.
                max_concurrent_bidi_streams: 16,
                // What an unpaired relay stream can make the tracker hold.
                stream_receive_window: 1 << 20,
                receive_window: 8 << 20,
                send_window: 8 << 20,
                max_pending_handshakes: 256,
                ..TransportOptions::default()
            },
        }
    }
}

/// Counters, for logs, tests and benchmarks.
#[derive(Debug, Default)]
pub struct TrackerStats {
    /// Client connections accepted.
    pub connections: AtomicU64,
    /// Announce messages handled (each with one or more keys).
    pub announces: AtomicU64,
    /// Requests refused by the rate limiter.
    pub rate_limited: AtomicU64,
    /// Announced keys refused because a table was full.
    pub full: AtomicU64,
    /// Connections closed for a message that did not decode.
    pub bad_messages: AtomicU64,
    /// Hole punches timed.
    pub punches: AtomicU64,
}

struct Client {
    stable_id: usize,
    connection: quinn::Connection,
    mailbox: mpsc::Sender<ServerMessage>,
}

struct State {
    directory: Directory,
    limiter: SourceLimiter,
    clients: HashMap<DeviceId, Client>,
    connections_per_source: HashMap<SourceKey, usize>,
}

struct Shared {
    options: TrackerOptions,
    state: Mutex<State>,
    relay: Option<Arc<Relay>>,
    stats: TrackerStats,
}

/// A running tracker (and relay).
pub struct Tracker {
    transport: Arc<Transport>,
    id: DeviceId,
    shared: Arc<Shared>,
}

impl Tracker {
    /// Binds `listen` with a fresh key. Must run inside a Tokio runtime.
    /// Serve with [`run`](Self::run).
    pub fn bind(listen: SocketAddr, options: TrackerOptions) -> Result<Tracker, TrackerError> {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        let identity =
            DeviceIdentity::from_seed(&seed).map_err(|e| TrackerError::Identity(e.to_string()))?;
        let transport =
            Transport::bind_service(listen, &identity, options.transport.clone(), TRACKER_ALPN)?;
        let state = State {
            directory: Directory::new(options.directory.clone()),
            limiter: SourceLimiter::new(
                options.request_rate,
                options.request_burst,
                options.max_sources,
            ),
            clients: HashMap::new(),
            connections_per_source: HashMap::new(),
        };
        let relay = options.relay.clone().map(Relay::new);
        Ok(Tracker {
            transport: Arc::new(transport),
            id: identity.device_id(),
            shared: Arc::new(Shared {
                options,
                state: Mutex::new(state),
                relay,
                stats: TrackerStats::default(),
            }),
        })
    }

    /// The address the tracker listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    /// The tracker's key id (new at every start).
    pub fn id(&self) -> DeviceId {
        self.id
    }

    /// Counters.
    pub fn stats(&self) -> &TrackerStats {
        &self.shared.stats
    }

    /// The relay's counters, if it relays.
    pub fn relay_stats(&self) -> Option<&crate::relay::RelayStats> {
        self.shared.relay.as_ref().map(|r| &*r.stats)
    }

    /// Announcements held.
    pub fn announcements(&self) -> usize {
        self.shared.state.lock().expect("poisoned").directory.len()
    }

    /// Serves clients until [`close`](Self::close) is called.
    pub async fn run(&self) {
        let sweeper = tokio::spawn(sweep(Arc::downgrade(&self.shared)));
        while let Some(accepted) = self.transport.accept().await {
            match accepted {
                Ok(client) => {
                    tokio::spawn(serve_connection(Arc::clone(&self.shared), client));
                }
                Err(e) => debug!("tracker: handshake failed: {e}"),
            }
        }
        sweeper.abort();
    }

    /// Closes every connection and stops [`run`](Self::run).
    pub async fn close(&self) {
        self.transport.close().await;
    }
}

async fn sweep(shared: std::sync::Weak<Shared>) {
    loop {
        tokio::time::sleep(SWEEP_INTERVAL).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        {
            let mut state = shared.state.lock().expect("poisoned");
            state.directory.expire(now);
            state.limiter.sweep(now);
        }
        if let Some(relay) = &shared.relay {
            relay.sweep(now);
        }
    }
}

/// Admits a connection against the per-source budgets, or says why not.
fn admit(shared: &Shared, source: IpAddr) -> Result<(), &'static str> {
    let mut state = shared.state.lock().expect("poisoned");
    if state
        .limiter
        .check(Instant::now(), source, COST_CONNECT)
        .is_err()
    {
        shared.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
        return Err("rate limited");
    }
    let max = shared.options.max_connections_per_source;
    let count = state
        .connections_per_source
        .entry(SourceKey::of(source))
        .or_default();
    if *count >= max {
        return Err("too many connections from this address");
    }
    *count += 1;
    Ok(())
}

async fn serve_connection(shared: Arc<Shared>, client: PeerConnection) {
    let device = client.peer;
    let connection = client.connection;
    let source = connection.remote_address();
    if let Err(why) = admit(&shared, source.ip()) {
        info!(%source, %device, "tracker: connection refused: {why}");
        connection.close(VarInt::from_u32(CLOSE_LIMIT), why.as_bytes());
        return;
    }
    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    debug!(%source, %device, "tracker: client connected");
    let (mailbox, outbox) = mpsc::channel(MAILBOX);
    let stable_id = connection.stable_id();
    let replaced = shared.state.lock().expect("poisoned").clients.insert(
        device,
        Client {
            stable_id,
            connection: connection.clone(),
            mailbox,
        },
    );
    if let Some(old) = replaced {
        old.connection
            .close(VarInt::from_u32(CLOSE_REPLACED), b"replaced");
    }
    let outbox = Arc::new(Mutex::new(Some(outbox)));
    loop {
        let (send, recv) = match connection.accept_bi().await {
            Ok(streams) => streams,
            Err(e) => {
                debug!(%source, %device, "tracker: client gone: {e}");
                break;
            }
        };
        let (shared, connection, outbox) =
            (Arc::clone(&shared), connection.clone(), Arc::clone(&outbox));
        tokio::spawn(async move {
            serve_stream(&shared, device, &connection, send, recv, &outbox).await;
        });
    }
    let mut state = shared.state.lock().expect("poisoned");
    if state
        .clients
        .get(&device)
        .is_some_and(|c| c.stable_id == stable_id)
    {
        state.clients.remove(&device);
        state.directory.forget(device);
    }
    let key = SourceKey::of(source.ip());
    if let Some(count) = state.connections_per_source.get_mut(&key) {
        *count -= 1;
        if *count == 0 {
            state.connections_per_source.remove(&key);
        }
    }
}

/// Reads one frame payload from `recv` into `decoder`; `None` at the end of
/// the stream or on a framing error.
async fn next_payload(recv: &mut RecvStream, decoder: &mut FrameDecoder) -> Option<Vec<u8>> {
    loop {
        match decoder.next_frame() {
            Ok(Some(frame)) => return Some(frame),
            Ok(None) => {}
            Err(_) => return None,
        }
        match recv.read_chunk(MAX_MESSAGE_LEN as usize, true).await {
            Ok(Some(chunk)) => decoder.push(&chunk.bytes).ok()?,
            Ok(None) | Err(_) => return None,
        }
    }
}

fn bad_message(shared: &Shared, connection: &quinn::Connection, device: DeviceId, why: &str) {
    shared.stats.bad_messages.fetch_add(1, Ordering::Relaxed);
    info!(
        source = %connection.remote_address(),
        %device,
        "tracker: closing a client that sent a bad message: {why}"
    );
    connection.close(VarInt::from_u32(CLOSE_BAD_MESSAGE), b"bad message");
}

/// Reads the first message of a stream exactly (a relay stream's datagrams
/// may follow in the same packet and must stay in the stream), or `None`.
async fn first_payload(recv: &mut RecvStream) -> Option<Vec<u8>> {
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header).await.ok()?;
    let len = u32::from_be_bytes(header);
    if len > MAX_MESSAGE_LEN {
        return None;
    }
    let mut payload = vec![0u8; len as usize];
    recv.read_exact(&mut payload).await.ok()?;
    Some(payload)
}

async fn serve_stream(
    shared: &Arc<Shared>,
    device: DeviceId,
    connection: &quinn::Connection,
    send: SendStream,
    mut recv: RecvStream,
    outbox: &Mutex<Option<mpsc::Receiver<ServerMessage>>>,
) {
    let first = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, first_payload(&mut recv)).await;
    let first = match first {
        Ok(Some(payload)) => match decode_client(&payload) {
            Ok(m) => m,
            Err(e) => return bad_message(shared, connection, device, &e.to_string()),
        },
        Ok(None) => return bad_message(shared, connection, device, "broken framing"),
        Err(_) => {
            debug!(%device, "tracker: a stream sent nothing; dropped");
            return;
        }
    };
    if let ClientMessage::RelayJoin { token } = first {
        match &shared.relay {
            Some(relay) => relay.join(device, token, send, recv).await,
            None => bad_message(
                shared,
                connection,
                device,
                "relay join; this tracker does not relay",
            ),
        }
        return;
    }
    let Some(outbox) = outbox.lock().expect("poisoned").take() else {
        return bad_message(shared, connection, device, "a second control stream");
    };
    let writer = tokio::spawn(write_messages(send, outbox));
    let mut decoder = FrameDecoder::new(MAX_MESSAGE_LEN);
    let mut message = first;
    loop {
        handle(shared, device, connection, message);
        let Some(payload) = next_payload(&mut recv, &mut decoder).await else {
            if decoder.buffered() > 0 {
                bad_message(shared, connection, device, "broken framing");
            }
            break;
        };
        message = match decode_client(&payload) {
            Ok(m) => m,
            Err(e) => {
                bad_message(shared, connection, device, &e.to_string());
                break;
            }
        };
    }
    writer.abort();
}

async fn write_messages(mut send: SendStream, mut outbox: mpsc::Receiver<ServerMessage>) {
    while let Some(message) = outbox.recv().await {
        let Ok(frame) = encode_server(&message) else {
            warn!("tracker: a message too large to send: {message:?}");
            continue;
        };
        if send.write_all(&frame).await.is_err() {
            return;
        }
    }
}

/// Acts on one request and queues the answers.
fn handle(
    shared: &Shared,
    device: DeviceId,
    connection: &quinn::Connection,
    message: ClientMessage,
) {
    let now = Instant::now();
    let source = connection.remote_address();
    let request = message.kind();
    let mut state = shared.state.lock().expect("poisoned");
    let cost = match &message {
        ClientMessage::Announce { keys, .. } => keys.len() as f64,
        ClientMessage::Leave { .. } | ClientMessage::RelayJoin { .. } => 1.0,
        ClientMessage::PunchRequest { .. } => COST_PUNCH,
        ClientMessage::RelayRequest { .. } => COST_RELAY,
    };
    let mut out: Vec<(DeviceId, ServerMessage)> = Vec::new();
    let refuse = |reason| (device, ServerMessage::Refused { request, reason });
    if let Err(wait) = state.limiter.check(now, source.ip(), cost) {
        shared.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
        debug!(%source, %device, "tracker: rate limited");
        let retry_after_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        out.push(refuse(RefuseReason::RateLimited { retry_after_ms }));
    } else {
        match message {
            ClientMessage::Announce { keys, addrs } => {
                shared.stats.announces.fetch_add(1, Ordering::Relaxed);
                let outcome = state.directory.announce(now, device, source, &keys, &addrs);
                let ttl_secs =
                    u32::try_from(state.directory.limits().ttl.as_secs()).unwrap_or(u32::MAX);
                out.push((
                    device,
                    ServerMessage::Announced {
                        observed: source,
                        ttl_secs,
                    },
                ));
                if outcome.refused > 0 {
                    shared
                        .stats
                        .full
                        .fetch_add(outcome.refused as u64, Ordering::Relaxed);
                    info!(%source, %device, refused = outcome.refused, "tracker: tables full; announcements refused");
                    out.push(refuse(RefuseReason::Full));
                }
                for key in keys {
                    let peers = state.directory.peers(now, &key, device);
                    out.push((device, ServerMessage::Peers { key, peers }));
                }
            }
            ClientMessage::Leave { keys } => state.directory.leave(device, &keys),
            ClientMessage::PunchRequest { key, peer } => {
                match punch(&state, now, key, device, peer) {
                    Some(both) => {
                        shared.stats.punches.fetch_add(1, Ordering::Relaxed);
                        out.extend(both);
                    }
                    None => out.push(refuse(RefuseReason::UnknownPeer)),
                }
            }
            ClientMessage::RelayRequest { key, peer } => match &shared.relay {
                None => out.push(refuse(RefuseReason::RelayDisabled)),
                Some(_)
                    if !state.directory.shares_key(now, &key, device, peer)
                        || !state.clients.contains_key(&peer) =>
                {
                    out.push(refuse(RefuseReason::UnknownPeer));
                }
                Some(relay) => {
                    let token = RelayToken(rand::random());
                    match relay.offer(now, device, peer, token) {
                        Ok(()) => {
                            out.push((device, ServerMessage::RelayOffer { peer, token }));
                            out.push((
                                peer,
                                ServerMessage::RelayOffer {
                                    peer: device,
                                    token,
                                },
                            ));
                        }
                        Err(reason) => {
                            info!(%device, %peer, "tracker: relay session refused: {reason:?}");
                            out.push(refuse(reason));
                        }
                    }
                }
            },
            ClientMessage::RelayJoin { .. } => {
                drop(state);
                return bad_message(
                    shared,
                    connection,
                    device,
                    "relay join on the control stream",
                );
            }
        }
    }
    for (to, message) in out {
        if let Some(client) = state.clients.get(&to)
            && client.mailbox.try_send(message).is_err()
        {
            debug!(device = %to, "tracker: client not reading; message dropped");
        }
    }
}

/// The two `PunchNow`s of a hole punch between `a` and `b`, timed so both
/// leave at once: each is delayed by half the difference of the round-trip
/// times, so the one closer to the tracker waits for the other's message to
/// arrive.
fn punch(
    state: &State,
    now: Instant,
    key: [u8; 32],
    a: DeviceId,
    b: DeviceId,
) -> Option<[(DeviceId, ServerMessage); 2]> {
    if !state.directory.shares_key(now, &key, a, b) {
        return None;
    }
    let (ca, cb) = (state.clients.get(&a)?, state.clients.get(&b)?);
    let (addrs_a, addrs_b) = (state.directory.addresses(a)?, state.directory.addresses(b)?);
    let (delay_a, delay_b) = punch_delays(ca.connection.rtt(), cb.connection.rtt());
    Some([
        (
            a,
            ServerMessage::PunchNow {
                peer: b,
                addrs: addrs_b.into_iter().take(MAX_ADDRS).collect(),
                delay_ms: delay_a,
            },
        ),
        (
            b,
            ServerMessage::PunchNow {
                peer: a,
                addrs: addrs_a.into_iter().take(MAX_ADDRS).collect(),
                delay_ms: delay_b,
            },
        ),
    ])
}

/// Delays (ms) for two devices at round-trip times `a` and `b` so that
/// messages sent to both now make them act at the same moment.
pub fn punch_delays(a: Duration, b: Duration) -> (u32, u32) {
    let half_ms = |d: Duration| (d.as_micros() / 2000) as u64;
    let (ha, hb) = (half_ms(a), half_ms(b));
    let cap = u64::from(MAX_PUNCH_DELAY_MS);
    let da = hb.saturating_sub(ha).min(cap) as u32;
    let db = ha.saturating_sub(hb).min(cap) as u32;
    (da, db)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearer_device_waits_for_the_farther() {
        let (a, b) = punch_delays(Duration::from_millis(10), Duration::from_millis(110));
        assert_eq!((a, b), (50, 0));
        assert_eq!(
            punch_delays(Duration::from_millis(40), Duration::from_millis(40)),
            (0, 0)
        );
        let (_, b) = punch_delays(Duration::from_secs(100), Duration::ZERO);
        assert_eq!(b, MAX_PUNCH_DELAY_MS);
    }
}
