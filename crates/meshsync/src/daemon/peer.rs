//! Connected peers: the registry, the protocol driver for one connection,
//! the chunk server, and chunk fetching for the swarm.
//!
//! One QUIC connection per peer device. Its first stream is the control
//! stream, driven by meshsync-proto's sans-IO [`Connection`] machine: hello,
//! then every folder both devices hold is opened with an access proof bound
//! to this connection, then indexes flow (the full index once, then each new
//! local change as the folder's sequence moves). Every other stream is a
//! chunk request: a fixed header naming a chunk by hash (or, from version 4,
//! a run of them: runs.rs), answered with the bytes, which the requester
//! verifies before using them.
//!
//! A peer is served only chunks of folders it opened with a valid proof on
//! this connection, and only chunks this device verified on disk.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use meshsync_core::entry::ChunkRef;
use meshsync_core::ids::{DeviceId, ShareId};
use meshsync_core::keys::{FolderKey, KeyKind, ProofRole};
use meshsync_net::{PeerConnection, Role};
use meshsync_proto::chunk::{ChunkRequest, ChunkResponse, ChunkStatus};
use meshsync_proto::limits::{MAX_BATCH_ENTRIES, MAX_HELD_SPANS};
use meshsync_proto::message::{ChunkSpan, RefuseReason};
use meshsync_proto::{CloseCode, Connection, Event as ProtoEvent, FolderOffer, LocalInfo};

use super::Daemon;
use super::bandwidth::Bandwidth;
use super::control::{Event, PeerStatus};
use super::discovery::pex::Exchange;
use super::discovery::{Found, PathKind};
use super::held::HeldCursor;
use super::pull::ChunkSource;
use super::runs::{self, RunQueue};

/// One connected peer.
pub struct PeerLink {
    /// Its device id.
    pub device: DeviceId,
    /// Its name, from its hello.
    pub name: Mutex<String>,
    /// The QUIC connection.
    pub conn: PeerConnection,
    /// How it was found.
    pub found: Found,
    /// The kind of path the connection runs over.
    pub path: PathKind,
    /// Folders open with it.
    pub folders: Mutex<HashSet<ShareId>>,
    /// Folders it sent a bad chunk for (not asked again).
    pub bad_for: Mutex<HashSet<ShareId>>,
    /// Chunk bytes received from it.
    pub bytes_in: AtomicU64,
    /// Chunk bytes sent to it.
    pub bytes_out: AtomicU64,
    /// Folders it holds without their data key (ciphertext only).
    pub sealed: super::storage::SealedLinks,
    /// Whether the negotiated protocol carries chunk runs (version 4).
    pub chunk_runs: std::sync::atomic::AtomicBool,
    /// Whether it carries chunk deltas (version 5).
    pub chunk_deltas: std::sync::atomic::AtomicBool,
    /// Chunk requests to it, batched into runs.
    pub runs: Arc<RunQueue>,
}

impl PeerLink {
    /// The folders open with it now.
    pub fn open_folders(&self) -> Vec<ShareId> {
        self.folders
            .lock()
            .expect("poisoned")
            .iter()
            .copied()
            .collect()
    }
}

/// Every connected peer, by device id.
#[derive(Default)]
pub struct PeerRegistry {
    links: Mutex<HashMap<DeviceId, Arc<PeerLink>>>,
    /// Which device answered at a dialled address.
    dialled: Mutex<HashMap<SocketAddr, DeviceId>>,
    /// Chunk bytes received from all peers, ever.
    pub bytes_received: AtomicU64,
    /// How long a chunk request waits for the peer's next bytes, in
    /// milliseconds (0: the default, [`runs::DEFAULT_STALL`]).
    stall_after_ms: AtomicU64,
    /// Chunk bytes sent to peers, at most `max_send_kibps`.
    pub send_limit: Bandwidth,
    /// Chunk bytes fetched from peers, at most `max_recv_kibps`.
    pub recv_limit: Bandwidth,
}

impl PeerRegistry {
    /// Adds a peer. When it is connected already (both sides dialled at
    /// once), both devices keep the connection that the larger device id
    /// initiated, so they keep the same one; the other is returned to be
    /// closed.
    pub fn register(&self, link: Arc<PeerLink>, me: DeviceId) -> Option<Arc<PeerLink>> {
        let mut links = self.links.lock().expect("poisoned");
        let initiator = |l: &PeerLink| {
            if l.conn.role == Role::Initiator {
                me
            } else {
                l.device
            }
        };
        match links.get(&link.device) {
            None => {
                links.insert(link.device, link);
                None
            }
            Some(existing) => {
                // The same device dialled again: the old connection is one it
                // gave up on (a restart, a network change), so the new one
                // wins. Both dialled at once: the larger id's dial wins.
                let (new, old) = (initiator(&link), initiator(existing));
                if new >= old {
                    links.insert(link.device, link)
                } else {
                    Some(link)
                }
            }
        }
    }

    /// Sets how long a chunk request waits for the peer's next bytes.
    fn set_stall_after(&self, after: Duration) {
        self.stall_after_ms
            .store(after.as_millis() as u64, Ordering::Relaxed);
    }

    /// Applies the device settings chunk transfers use (at start and on
    /// every config reload): the stall time and the bandwidth limits.
    pub fn configure(&self, device: &crate::config::DeviceConfig) {
        self.set_stall_after(Duration::from_secs(device.chunk_stall_secs.max(1)));
        self.send_limit.set_kibps(device.max_send_kibps);
        self.recv_limit.set_kibps(device.max_recv_kibps);
    }

    /// How long a chunk request waits for the peer's next bytes.
    pub fn stall_after(&self) -> Duration {
        match self.stall_after_ms.load(Ordering::Relaxed) {
            0 => runs::DEFAULT_STALL,
            ms => Duration::from_millis(ms),
        }
    }

    /// Remembers that `addr` is `device`.
    pub fn note_dialled(&self, addr: SocketAddr, device: DeviceId) {
        self.dialled.lock().expect("poisoned").insert(addr, device);
    }

    /// Removes a peer if `conn` is still its connection.
    pub fn remove(&self, device: &DeviceId, stable_id: usize) {
        let mut links = self.links.lock().expect("poisoned");
        if links
            .get(device)
            .is_some_and(|l| l.conn.connection.stable_id() == stable_id)
        {
            links.remove(device);
        }
    }

    /// The link to `device`, if connected.
    pub fn get(&self, device: &DeviceId) -> Option<Arc<PeerLink>> {
        self.links.lock().expect("poisoned").get(device).cloned()
    }

    /// Whether the peer at `addr` is connected (however the connection was made).
    pub fn has_address(&self, addr: &SocketAddr) -> bool {
        let dialled = self.dialled.lock().expect("poisoned").get(addr).copied();
        let links = self.links.lock().expect("poisoned");
        dialled.is_some_and(|d| links.contains_key(&d))
            || links
                .values()
                .any(|l| l.conn.connection.remote_address() == *addr)
    }

    /// How many peers are connected.
    pub fn count(&self) -> usize {
        self.links.lock().expect("poisoned").len()
    }

    /// Every peer's status.
    pub fn status(&self) -> Vec<PeerStatus> {
        let links = self.links.lock().expect("poisoned");
        let mut out: Vec<PeerStatus> = links
            .values()
            .map(|l| {
                let mut folders: Vec<String> = l
                    .folders
                    .lock()
                    .expect("poisoned")
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                folders.sort();
                PeerStatus {
                    device_id: l.device.to_string(),
                    name: l.name.lock().expect("poisoned").clone(),
                    address: l.conn.connection.remote_address().to_string(),
                    via: l.found.as_str().to_owned(),
                    path: l.path.as_str().to_owned(),
                    folders,
                    bytes_in: l.bytes_in.load(Ordering::Relaxed),
                    bytes_out: l.bytes_out.load(Ordering::Relaxed),
                }
            })
            .collect();
        out.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        out
    }
}

impl ChunkSource for PeerRegistry {
    async fn fetch(&self, peer: DeviceId, share: ShareId, chunk: ChunkRef) -> Result<Vec<u8>> {
        let link = self
            .get(&peer)
            .ok_or_else(|| anyhow!("peer {peer} is not connected"))?;
        self.recv_limit.take(u64::from(chunk.len)).await;
        let bytes = match link.sealed.reader_view(&share) {
            Some(view) => {
                super::storage::fetch_from_store(&link, share, chunk, &view, self.stall_after())
                    .await?
            }
            None if link.chunk_runs.load(Ordering::Relaxed) && !link.sealed.is_sealed(&share) => {
                link.runs
                    .fetch(&link.conn, share, chunk, self.stall_after())
                    .await?
            }
            None => fetch_chunk(&link.conn, share, chunk, self.stall_after()).await?,
        };
        link.bytes_in
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.bytes_received
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    }

    async fn fetch_near(
        &self,
        peer: DeviceId,
        share: ShareId,
        chunk: ChunkRef,
        base: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let link = self
            .get(&peer)
            .ok_or_else(|| anyhow!("peer {peer} is not connected"))?;
        if !link.chunk_deltas.load(Ordering::Relaxed) || link.sealed.is_sealed(&share) {
            return self.fetch(peer, share, chunk).await;
        }
        let rebuilt =
            super::deltas::fetch(&link.conn, share, chunk, base, self.stall_after()).await?;
        // A delta's size is known once it is here: counted after, which
        // holds back the fetches that follow.
        self.recv_limit.take(rebuilt.wire).await;
        link.bytes_in.fetch_add(rebuilt.wire, Ordering::Relaxed);
        self.bytes_received
            .fetch_add(rebuilt.wire, Ordering::Relaxed);
        Ok(rebuilt.bytes)
    }

    fn connected(&self) -> Vec<DeviceId> {
        self.links
            .lock()
            .expect("poisoned")
            .values()
            .map(|l| l.device)
            .collect()
    }

    fn mark_bad(&self, peer: DeviceId, share: ShareId) {
        if let Some(l) = self.get(&peer) {
            l.bad_for.lock().expect("poisoned").insert(share);
            l.folders.lock().expect("poisoned").remove(&share);
        }
    }
}

/// Fetches one chunk over a new chunk stream; every step waits at most
/// `stall` for the peer ([`runs::Stalled`]).
pub(super) async fn fetch_chunk(
    conn: &PeerConnection,
    share: ShareId,
    chunk: ChunkRef,
    stall: Duration,
) -> Result<Vec<u8>> {
    let request = ChunkRequest {
        share,
        hash: chunk.hash,
        len: chunk.len,
    };
    let (mut send, mut recv) = runs::within(stall, conn.open_chunk_stream()).await??;
    runs::within(stall, send.write_all(&request.encode())).await??;
    send.finish()?;
    let mut header = [0u8; ChunkResponse::ENCODED_LEN];
    runs::within(stall, recv.read_exact(&mut header)).await??;
    let response = ChunkResponse::decode(&header, &request)?;
    match response.status {
        ChunkStatus::Found => runs::read_body(&mut recv, chunk.len, stall).await,
        other => bail!("peer answered {other:?}"),
    }
}

/// Serves one chunk request.
async fn serve_chunk(
    daemon: Arc<Daemon>,
    link: Arc<PeerLink>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<()> {
    let mut header = [0u8; ChunkRequest::ENCODED_LEN];
    recv.read_exact(&mut header[..1]).await?;
    if header[0] == meshsync_proto::sealed::STREAM_KIND_SEALED_INDEX {
        return super::storage::stream::serve(daemon, link, send, recv).await;
    }
    if header[0] == meshsync_proto::sealed::STREAM_KIND_CHUNK_HINTS {
        return super::storage::hints::receive(daemon, link, send, recv).await;
    }
    if header[0] == meshsync_proto::chunk::STREAM_KIND_CHUNK_RUN {
        return super::runs::serve(daemon, link, send, recv).await;
    }
    if header[0] == meshsync_proto::delta::STREAM_KIND_CHUNK_DELTA
        && link.chunk_deltas.load(Ordering::Relaxed)
    {
        return super::deltas::serve(daemon, link, send, recv).await;
    }
    recv.read_exact(&mut header[1..]).await?;
    let request = ChunkRequest::decode(&header)?;
    let open = link
        .folders
        .lock()
        .expect("poisoned")
        .contains(&request.share);
    let Some(rt) = daemon.folder(&request.share).filter(|_| open) else {
        send.write_all(&ChunkResponse::refused().encode()).await?;
        send.finish()?;
        return Ok(());
    };
    if link.sealed.is_sealed(&request.share) {
        let n =
            super::storage::serve_chunk(rt, request, &mut send, &daemon.peers.send_limit).await?;
        link.bytes_out.fetch_add(n, Ordering::Relaxed);
        daemon.counters.bytes_sent.fetch_add(n, Ordering::Relaxed);
        return Ok(());
    }
    // Whole files first, then big files still downloading (both read back
    // and hashed before they are served).
    let mut served = super::runs::read_group(
        &rt,
        &[ChunkRef {
            hash: request.hash,
            len: request.len,
        }],
    )
    .await?;
    super::runs::send_served(&daemon, &link, &mut send, &request, served.pop().flatten()).await?;
    send.finish()?;
    Ok(())
}

/// Runs one peer connection until it closes.
pub async fn run_connection(
    daemon: Arc<Daemon>,
    conn: PeerConnection,
    found: Found,
    path: PathKind,
) {
    if conn.peer == daemon.device_id {
        conn.connection.close(0u32.into(), b"connected to itself");
        return;
    }
    // An incoming connection counts as a stranger's until a folder opens on
    // it; past its address's bound it is closed before it can displace
    // anyone (admission.rs).
    let stranger = match conn.role {
        Role::Initiator => {
            daemon
                .peers
                .note_dialled(conn.connection.remote_address(), conn.peer);
            None
        }
        Role::Responder => {
            let evict = {
                let (connection, daemon) = (conn.connection.clone(), Arc::clone(&daemon));
                move || {
                    daemon
                        .counters
                        .connections_refused
                        .fetch_add(1, Ordering::Relaxed);
                    connection.close(0u32.into(), super::admission::EVICTED.as_bytes());
                }
            };
            match daemon
                .admission
                .admit(conn.connection.remote_address(), evict)
            {
                Some(place) => Some(place),
                None => {
                    tracing::debug!(
                        peer = %conn.peer,
                        remote = %conn.connection.remote_address(),
                        "connection refused: {}",
                        super::admission::REFUSED
                    );
                    daemon
                        .counters
                        .connections_refused
                        .fetch_add(1, Ordering::Relaxed);
                    conn.connection
                        .close(0u32.into(), super::admission::REFUSED.as_bytes());
                    return;
                }
            }
        }
    };
    let link = Arc::new(PeerLink {
        device: conn.peer,
        name: Mutex::new(String::new()),
        conn: conn.clone(),
        found,
        path,
        folders: Mutex::new(HashSet::new()),
        bad_for: Mutex::new(HashSet::new()),
        bytes_in: AtomicU64::new(0),
        bytes_out: AtomicU64::new(0),
        sealed: Default::default(),
        chunk_runs: Default::default(),
        chunk_deltas: Default::default(),
        runs: Default::default(),
    });
    if let Some(loser) = daemon.peers.register(Arc::clone(&link), daemon.device_id) {
        loser
            .conn
            .connection
            .close(0u32.into(), b"duplicate connection");
        if Arc::ptr_eq(&loser, &link) {
            return;
        }
    }
    let address = conn.connection.remote_address().to_string();
    tracing::info!(
        "peer {} connected ({}, {}, {address})",
        conn.peer,
        found.as_str(),
        path.as_str()
    );
    let _ = daemon.events.send(Event::PeerConnected {
        device_id: conn.peer.to_string(),
        address,
    });
    if let Err(e) = drive_control(&daemon, &link, stranger).await {
        tracing::info!("peer {}: {e:#}", conn.peer);
    }
    daemon.peers.remove(&conn.peer, conn.connection.stable_id());
    if daemon.peers.get(&conn.peer).is_none() {
        for rt in daemon.all_folders() {
            rt.folder.forget_peer(&conn.peer);
            rt.storage.forget_peer(&conn.peer);
            rt.wake.notify_one();
        }
        let _ = daemon.events.send(Event::PeerDisconnected {
            device_id: conn.peer.to_string(),
        });
    }
    conn.connection.close(0u32.into(), b"bye");
}

async fn run_chunk_server(daemon: Arc<Daemon>, link: Arc<PeerLink>) {
    loop {
        match link.conn.accept_chunk_stream().await {
            Ok((send, recv)) => {
                let (d, l) = (Arc::clone(&daemon), Arc::clone(&link));
                tokio::spawn(async move {
                    if let Err(e) = serve_chunk(d, l, send, recv).await {
                        tracing::debug!("chunk request: {e:#}");
                    }
                });
            }
            Err(_) => return,
        }
    }
}

/// The key this device offers for a folder: a receive-only folder offers
/// only its read-only key, so its own changes are never signed.
fn offered_key(rt: &super::FolderRuntime) -> FolderKey {
    let f = &rt.folder;
    if f.key.kind() == KeyKind::ReadWrite && !f.announces_changes() {
        f.key
            .to_read_only()
            .map(FolderKey::ReadOnly)
            .unwrap_or_else(|_| f.key.clone())
    } else {
        f.key.clone()
    }
}

/// A stable id for this device's index of a folder (a new database gets a
/// new one only with a new device identity; peers re-read the full index on
/// every connection anyway).
fn index_id(daemon: &Daemon, share: &ShareId) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(daemon.device_id.as_bytes());
    h.update(share.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(b) | 1
}

/// Drives the control stream: hello, folder opening, index exchange.
/// `stranger` is the connection's place among those that share no folder
/// yet, given up once one opens. A peer that has not said hello within
/// `hello_timeout_secs` of the connection is closed (quietly: a stranger's
/// silence is not worth a log line each).
async fn drive_control(
    daemon: &Arc<Daemon>,
    link: &Arc<PeerLink>,
    mut stranger: Option<super::admission::StrangerPlace>,
) -> Result<()> {
    let conn = &link.conn;
    let hello_secs = daemon
        .config
        .lock()
        .expect("poisoned")
        .device
        .hello_timeout_secs
        .max(1);
    let hello_deadline = tokio::time::Instant::now() + Duration::from_secs(hello_secs);
    // Closes a connection whose hello did not come in time (no Close on the
    // control stream: the peer may give it no credit; the QUIC close
    // carries the reason).
    let hang_up_no_hello = || {
        let reason = format!("no hello within {hello_secs} s");
        tracing::debug!(peer = %link.device, "{reason}");
        daemon
            .counters
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
        conn.connection.close(0u32.into(), reason.as_bytes());
    };
    let control = async {
        match conn.role {
            Role::Initiator => conn.open_control_stream().await,
            Role::Responder => conn.accept_control_stream().await,
        }
    };
    let Ok(control) = tokio::time::timeout_at(hello_deadline, control).await else {
        hang_up_no_hello();
        return Ok(());
    };
    let (mut send, mut recv) = control?;
    // Chunk streams come after the control stream; served while it lives.
    let server = tokio::spawn(run_chunk_server(Arc::clone(daemon), Arc::clone(link)));
    let _stop_server = AbortOnDrop(server);
    let role = match conn.role {
        Role::Initiator => ProofRole::Initiator,
        Role::Responder => ProofRole::Responder,
    };
    let name = daemon.config.lock().expect("poisoned").device.name.clone();
    let client = format!("meshsync {}", env!("CARGO_PKG_VERSION"));
    let mut proto = Connection::new(
        role,
        LocalInfo::new(daemon.device_id, &name, &client),
        conn.channel_binding,
        conn.peer,
    );
    // What was sent of each open folder's index: the last sequence covered.
    let mut sent: HashMap<ShareId, u64> = HashMap::new();
    // What was announced of each open folder's partial downloads.
    let mut held: HashMap<ShareId, HeldCursor> = HashMap::new();
    let mut pex = Exchange::new(std::time::Instant::now());
    let mut buf = vec![0u8; 64 * 1024];
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut stopping = daemon.stopping.subscribe();
    loop {
        while let Some(bytes) = proto.poll_transmit() {
            let write = send.write_all(&bytes);
            if proto.negotiated_version().is_some() {
                write.await.context("writing the control stream")?;
            } else {
                // Before the hello, a peer that gives the stream no credit
                // must not hold this write past the deadline.
                match tokio::time::timeout_at(hello_deadline, write).await {
                    Ok(written) => written.context("writing the control stream")?,
                    Err(_) => {
                        hang_up_no_hello();
                        return Ok(());
                    }
                }
            }
        }
        if proto.is_closed() {
            return Ok(());
        }
        if stranger.is_some() && proto.has_open_folder() {
            stranger = None;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(hello_deadline), if proto.negotiated_version().is_none() => {
                hang_up_no_hello();
                return Ok(());
            }
            read = recv.read(&mut buf) => {
                let keys = folder_keys(daemon);
                match read.context("reading the control stream")? {
                    Some(n) => {
                        if let Err(e) = proto.handle_bytes(&buf[..n], &keys) {
                            tracing::warn!("peer {} broke the protocol: {e}", link.device);
                        }
                    }
                    None => {
                        let _ = proto.handle_stream_end();
                        return Ok(());
                    }
                }
                while let Some(event) = proto.poll_event() {
                    if let ProtoEvent::PeersReceived { share, peers } = event {
                        pex.received(daemon, link, share, peers, std::time::Instant::now());
                        continue;
                    }
                    handle_event(daemon, link, &mut proto, &mut sent, event)?;
                }
            }
            _ = daemon.index_moved.notified() => {
                send_index_updates(daemon, &mut proto, &mut sent);
            }
            _ = tick.tick() => {
                if proto.negotiated_version().is_some() {
                    offer_new_folders(daemon, &mut proto)?;
                }
                // A folder this peer has open but may no longer open (its
                // allowlist changed): the protocol closes no single folder,
                // so the connection goes; the next one is refused.
                if let Some(share) = no_longer_allowed(daemon, link) {
                    proto.close(CloseCode::Normal, "a folder's allowlist changed; reconnect");
                    while let Some(bytes) = proto.poll_transmit() {
                        let _ = send.write_all(&bytes).await;
                    }
                    bail!("no longer in the allowed_devices of folder {share}: disconnected");
                }
                send_index_updates(daemon, &mut proto, &mut sent);
                send_held_chunks(daemon, link, &mut proto, &sent, &mut held);
                pex.send_due(daemon, link, &mut proto, std::time::Instant::now());
            }
            _ = stopping.changed() => {
                proto.close(CloseCode::Normal, "shutting down");
                while let Some(bytes) = proto.poll_transmit() {
                    let _ = send.write_all(&bytes).await;
                }
                return Ok(());
            }
        }
    }
}

/// Offers every running folder this connection has not heard of: all of
/// them after the hello, later a folder added or resumed while connected.
///
/// A folder this side refused on this connection (it was paused when the
/// peer offered it) stays refused for the connection's life (the protocol's
/// rule); once it runs again the connection is closed so that a fresh one
/// (the dialer reconnects at once) opens it.
fn offer_new_folders(daemon: &Daemon, proto: &mut Connection) -> Result<()> {
    use meshsync_proto::connection::{FolderStatus, Side};
    for rt in daemon.all_folders() {
        if rt.folder.paused.load(Ordering::SeqCst) || !allowed(daemon, &rt, &proto.peer()) {
            continue;
        }
        let share = rt.folder.share;
        match proto.folder_status(&share) {
            None => {
                let offer = FolderOffer::fresh(index_id(daemon, &share), rt.folder.max_sequence());
                if let Err(e) = proto.open_folder(&offered_key(&rt), offer) {
                    tracing::debug!("offering {share}: {e}");
                }
            }
            Some(FolderStatus::Refused { by: Side::Local }) => {
                proto.close(CloseCode::Normal, "a refused folder runs again; reconnect");
                bail!("folder {share} runs again; reconnecting to open it");
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Whether the folder's allowlist (`allowed_devices`, read from the config
/// as it is now) lets `device` open it. A folder no longer in the config
/// lets nobody in.
fn allowed(daemon: &Daemon, rt: &super::FolderRuntime, device: &DeviceId) -> bool {
    let config = daemon.config.lock().expect("poisoned");
    config
        .folders
        .iter()
        .find(|f| f.path == rt.folder.config.path)
        .is_some_and(|f| f.allows(device))
}

/// A folder open with `link` whose allowlist no longer lets its device in.
fn no_longer_allowed(daemon: &Daemon, link: &PeerLink) -> Option<ShareId> {
    link.open_folders().into_iter().find(|share| {
        daemon
            .folder(share)
            .is_some_and(|rt| !allowed(daemon, &rt, &link.device))
    })
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn folder_keys(daemon: &Daemon) -> HashMap<ShareId, FolderKey> {
    daemon
        .all_folders()
        .iter()
        .filter(|rt| !rt.folder.paused.load(Ordering::SeqCst))
        .map(|rt| (rt.folder.share, offered_key(rt)))
        .collect()
}

fn handle_event(
    daemon: &Arc<Daemon>,
    link: &Arc<PeerLink>,
    proto: &mut Connection,
    sent: &mut HashMap<ShareId, u64>,
    event: ProtoEvent,
) -> Result<()> {
    match event {
        ProtoEvent::HelloReceived { device_name, .. } => {
            *link.name.lock().expect("poisoned") = device_name;
            link.chunk_runs
                .store(proto.has_chunk_runs(), Ordering::Relaxed);
            link.chunk_deltas
                .store(proto.has_chunk_deltas(), Ordering::Relaxed);
            offer_new_folders(daemon, proto)?;
        }
        ProtoEvent::FolderRequested { share, .. } => {
            // A peer without the data key gets the folder too, sealed
            // (storage module): plaintext only ever goes to a read-proven peer.
            if let Some(rt) = daemon.folder(&share) {
                if !allowed(daemon, &rt, &link.device) {
                    tracing::info!(
                        "peer {} holds a key of {} but is not in its allowed_devices: refused",
                        link.device,
                        rt.folder.config.path.display()
                    );
                    if let Err(e) = proto.refuse_folder(share, RefuseReason::NotAllowed) {
                        tracing::debug!("refusing {share}: {e}");
                    }
                    return Ok(());
                }
                let offer = FolderOffer::fresh(index_id(daemon, &share), rt.folder.max_sequence());
                if let Err(e) = proto.open_folder(&offered_key(&rt), offer) {
                    tracing::debug!("answering {share}: {e}");
                }
            }
        }
        ProtoEvent::FolderOpened {
            share,
            send_from,
            peer,
            ..
        } => {
            // Offered while the peer was allowed, opened after a reload left
            // it out: nothing is sent, and the connection goes.
            if daemon
                .folder(&share)
                .is_some_and(|rt| !allowed(daemon, &rt, &link.device))
            {
                proto.close(CloseCode::Normal, "a folder's allowlist changed; reconnect");
                bail!("opened folder {share}, whose allowed_devices no longer name the peer");
            }
            if !peer.read_proven {
                if super::storage::open_link(daemon, link, share, peer.kind) {
                    link.folders.lock().expect("poisoned").insert(share);
                }
                return Ok(());
            }
            link.folders.lock().expect("poisoned").insert(share);
            sent.insert(share, send_from.saturating_sub(1));
            send_index_updates(daemon, proto, sent);
            if let Some(rt) = daemon.folder(&share) {
                rt.wake.notify_one();
            }
        }
        ProtoEvent::IndexReceived { share, batch } => {
            let open = link.folders.lock().expect("poisoned").contains(&share);
            if !open
                || link.sealed.is_sealed(&share)
                || link.bad_for.lock().expect("poisoned").contains(&share)
            {
                return Ok(());
            }
            daemon
                .counters
                .entries_patched
                .fetch_add(batch.patched as u64, Ordering::Relaxed);
            if let Some(rt) = daemon.folder(&share) {
                rt.index_burst.store(batch.more_follows(), Ordering::SeqCst);
                let news = rt.folder.receive_index(
                    link.device,
                    batch.entries,
                    batch.last_sequence,
                    batch.signed,
                );
                if news {
                    rt.wake.notify_one();
                }
            }
        }
        ProtoEvent::ChunksHeld {
            share,
            path,
            file,
            spans,
        } => {
            let open = link.folders.lock().expect("poisoned").contains(&share);
            if !open
                || link.sealed.is_sealed(&share)
                || link.bad_for.lock().expect("poisoned").contains(&share)
            {
                return Ok(());
            }
            if let Some(rt) = daemon.folder(&share) {
                rt.folder.receive_held(link.device, &path, file, &spans);
            }
        }
        ProtoEvent::FolderRejected { share, reason } => {
            tracing::warn!(
                "peer {} offered folder {share} and was refused: {reason:?}",
                link.device
            );
        }
        ProtoEvent::FolderRefused { share, reason } => {
            tracing::info!("peer {} refused folder {share}: {reason:?}", link.device);
        }
        ProtoEvent::Closed { code, reason, by } => {
            tracing::info!(
                "connection to {} closed by {by:?}: {code:?} {reason}",
                link.device
            );
        }
        _ => {}
    }
    Ok(())
}

/// Tells the peer which chunks of big files still downloading here it can
/// fetch from this device (version 3): the new ones since the last time,
/// for each folder whose index goes to it (read-proven), except files the
/// peer announced holding whole.
fn send_held_chunks(
    daemon: &Daemon,
    link: &PeerLink,
    proto: &mut Connection,
    sent: &HashMap<ShareId, u64>,
    held: &mut HashMap<ShareId, HeldCursor>,
) {
    if !proto.has_held_chunks() {
        return;
    }
    held.retain(|share, _| sent.contains_key(share));
    for share in sent.keys() {
        let Some(rt) = daemon.folder(share) else {
            continue;
        };
        let cursor = held.entry(*share).or_default();
        for (path, file, numbers) in rt.folder.held.news(cursor) {
            if rt.folder.peer_has(&link.device, &path, &file) {
                continue;
            }
            let spans = ChunkSpan::runs(numbers);
            for part in spans.chunks(MAX_HELD_SPANS) {
                if let Err(e) = proto.send_chunks_held(*share, path.clone(), file, part.to_vec()) {
                    tracing::debug!("announcing chunks of {path} held: {e}");
                    break;
                }
            }
        }
    }
}

/// Encoded bytes a batch may hold (well under the 16 MiB frame limit).
const BATCH_BYTES: usize = 4 << 20;

/// A generous estimate of an entry's encoded size.
fn entry_size(e: &meshsync_core::entry::FileEntry) -> usize {
    128 + e.path.as_str().len()
        + e.content.as_ref().map_or(0, |c| 48 + 40 * c.chunks.len())
        + 16 * e.version.counters().len()
}

/// Sends each open folder's index entries the peer has not seen yet, in
/// batches bounded by entry count and encoded size; the last batch's range
/// ends at the folder's current sequence.
fn send_index_updates(daemon: &Daemon, proto: &mut Connection, sent: &mut HashMap<ShareId, u64>) {
    for (share, done) in sent.iter_mut() {
        let Some(rt) = daemon.folder(share) else {
            continue;
        };
        let max = rt.folder.max_sequence();
        if max <= *done {
            continue;
        }
        let entries = rt.folder.changes_since(*done);
        let mut batches: Vec<&[meshsync_core::entry::FileEntry]> = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, e) in entries.iter().enumerate() {
            let size = entry_size(e);
            if i > start && (i - start >= MAX_BATCH_ENTRIES || bytes + size > BATCH_BYTES) {
                batches.push(&entries[start..i]);
                start = i;
                bytes = 0;
            }
            bytes += size;
        }
        batches.push(&entries[start..]);
        let count = batches.len();
        let mut first = *done + 1;
        for (i, batch) in batches.into_iter().enumerate() {
            let last = if i + 1 == count {
                max
            } else {
                batch.last().map_or(max, |e| e.sequence)
            };
            if let Err(e) = proto.send_index_batch(*share, first, last, batch) {
                tracing::warn!("sending index of {share}: {e}");
                break;
            }
            first = last + 1;
            *done = last;
        }
    }
}
