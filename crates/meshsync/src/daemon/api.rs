//! The daemon's control API: JSON endpoints, server-sent events, Prometheus
//! metrics and the web UI, over plain HTTP on the loopback interface. The CLI
//! ([`crate::client`]) and the web page (`webui.html`) drive a running
//! daemon through it; the daemon itself is behind [`Control`], so this module
//! only translates HTTP to `Control` calls and back.
//!
//! | Method and path        | Answer                                                  |
//! |------------------------|---------------------------------------------------------|
//! | `GET /`                | the web UI (no key needed: the page holds no data)      |
//! | `GET /rest/health`     | `200 ok` (no key needed: lets the CLI find a daemon)    |
//! | `GET /rest/status`     | [`Status`]                                              |
//! | `GET /rest/folders`    | `[FolderStatus]`                                        |
//! | `GET /rest/peers`      | `[PeerStatus]`                                          |
//! | `GET /rest/completion` | [`Completion`]                                          |
//! | `POST /rest/rescan`    | body [`FolderRequest`], `folder` optional: 204          |
//! | `POST /rest/pause`     | body [`FolderRequest`], `folder` required: 204          |
//! | `POST /rest/resume`    | body [`FolderRequest`], `folder` required: 204          |
//! | `POST /rest/shutdown`  | 202; the daemon stops after answering                   |
//! | `GET /rest/events`     | server-sent events, each `data:` one [`Event`] as JSON  |
//! | `GET /metrics`         | Prometheus text exposition                              |
//!
//! Errors are JSON [`ErrorBody`] (`{"error": "..."}`) with the status the
//! daemon chose ([`ControlError::status`]), 400 for a bad request body, 401
//! for a missing or wrong key and 404 for an unknown path.
//!
//! The key travels in the `X-API-Key` header, or in the `api_key` query
//! parameter for clients that cannot set headers (a browser's
//! `EventSource`), and is compared in constant time.
//!
//! This module must never answer a `/rest/*` (other than health) or
//! `/metrics` request that lacks the right key (an empty configured key
//! matches nothing), and must never be served on a non-loopback address:
//! the API speaks plain HTTP, so the key would cross the network in clear.
//! [`serve`] refuses such a listener.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use super::control::{Control, ControlError, Event, FolderStatus, Metrics, PeerStatus, Status};

/// The header that carries the API key.
pub const API_KEY_HEADER: &str = "X-API-Key";

/// The web UI, served at `GET /`.
const WEB_UI: &str = include_str!("webui.html");

/// The page only talks to its own origin, runs only its own inline code and
/// may not be framed (the buttons must not be clickjacked).
const WEB_UI_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// How often an idle event stream sends a comment, so proxies and browsers
/// do not drop it and a vanished client is noticed.
const EVENTS_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    /// What is wrong, for a person.
    pub error: String,
}

/// The body of `POST /rest/rescan`, `/rest/pause` and `/rest/resume`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FolderRequest {
    /// The folder's path on this device. Optional for rescan (absent means
    /// every folder), required for pause and resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<PathBuf>,
}

/// How far this device is from being in sync (`GET /rest/completion`).
///
/// Every percentage is this device's own progress, computed from what it
/// holds and what it still needs: `100 × have / (have + need_bytes)`, where
/// `have` is `local_bytes`. It is rounded down to one decimal and is exactly
/// 100 only when nothing at all is needed; while any file is still needed it
/// is at most 99.9 (so a folder that needs only deletions or empty files
/// does not read as done). Nothing to hold and something needed reads 0.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Completion {
    /// Over every folder together.
    pub completion: f64,
    /// Per folder.
    pub folders: Vec<FolderCompletion>,
    /// Per connected peer.
    pub peers: Vec<PeerCompletion>,
}

/// One folder's completion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FolderCompletion {
    /// The folder's path on this device.
    pub path: PathBuf,
    /// Its share id.
    pub share_id: String,
    /// Percent complete (see [`Completion`]).
    pub completion: f64,
    /// Files still to fetch.
    pub need_files: u64,
    /// Bytes still to fetch.
    pub need_bytes: u64,
}

/// This device's completion over the folders it shares with one peer.
///
/// The API does not know how far the peer itself is: this is how much of
/// what this device should hold of those folders it already holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerCompletion {
    /// The peer's device id.
    pub device_id: String,
    /// Percent complete (see [`Completion`]) over the shared folders.
    pub completion: f64,
    /// Files still to fetch in the shared folders.
    pub need_files: u64,
    /// Bytes still to fetch in the shared folders.
    pub need_bytes: u64,
}

/// Computes [`Completion`] from a status snapshot.
pub fn completion(status: &Status) -> Completion {
    let folders: Vec<FolderCompletion> = status
        .folders
        .iter()
        .map(|f| FolderCompletion {
            path: f.path.clone(),
            share_id: f.share_id.clone(),
            completion: percent_complete(f.local_bytes, f.need_bytes, f.need_files),
            need_files: f.need_files,
            need_bytes: f.need_bytes,
        })
        .collect();
    let peers = status
        .peers
        .iter()
        .map(|p| {
            let shared = status
                .folders
                .iter()
                .filter(|f| p.folders.contains(&f.share_id));
            let (completion, need_files, need_bytes) = overall(shared);
            PeerCompletion {
                device_id: p.device_id.clone(),
                completion,
                need_files,
                need_bytes,
            }
        })
        .collect();
    Completion {
        completion: overall(status.folders.iter()).0,
        folders,
        peers,
    }
}

/// Percent complete, files and bytes needed, over `folders` together.
fn overall<'a>(folders: impl Iterator<Item = &'a FolderStatus>) -> (f64, u64, u64) {
    let (mut have, mut need_bytes, mut need_files) = (0u64, 0u64, 0u64);
    for f in folders {
        have = have.saturating_add(f.local_bytes);
        need_bytes = need_bytes.saturating_add(f.need_bytes);
        need_files = need_files.saturating_add(f.need_files);
    }
    (
        percent_complete(have, need_bytes, need_files),
        need_files,
        need_bytes,
    )
}

/// The percentage rule of [`Completion`].
fn percent_complete(have_bytes: u64, need_bytes: u64, need_files: u64) -> f64 {
    if need_bytes == 0 && need_files == 0 {
        return 100.0;
    }
    // f64 loses precision above 2^53 bytes (8 PiB); a percentage does not care.
    let total = have_bytes as f64 + need_bytes as f64;
    if total == 0.0 {
        return 0.0;
    }
    let percent = (1000.0 * have_bytes as f64 / total).floor() / 10.0;
    percent.min(99.9)
}

/// What the handlers share.
#[derive(Clone)]
struct ApiState {
    control: Arc<dyn Control>,
    key: Arc<str>,
}

/// Tells open event streams that the server is shutting down, so graceful
/// shutdown does not wait forever for them. Added by [`serve`].
#[derive(Clone)]
struct ServerStopping(watch::Receiver<bool>);

/// The API's routes over `control`, guarded by `api_key`.
///
/// An empty `api_key` matches no request, so every guarded endpoint answers
/// 401. Serve the router with [`serve`], which also ends event streams on
/// shutdown.
pub fn router(control: Arc<dyn Control>, api_key: String) -> Router {
    let state = ApiState {
        control,
        key: Arc::from(api_key),
    };
    let guarded = Router::new()
        .route("/rest/status", get(get_status))
        .route("/rest/folders", get(get_folders))
        .route("/rest/peers", get(get_peers))
        .route("/rest/completion", get(get_completion))
        .route("/rest/rescan", post(post_rescan))
        .route("/rest/pause", post(post_pause))
        .route("/rest/resume", post(post_resume))
        .route("/rest/shutdown", post(post_shutdown))
        .route("/rest/events", get(get_events))
        .route("/metrics", get(get_metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/", get(get_web_ui))
        .route("/rest/health", get(get_health))
        .merge(guarded)
        .fallback(not_found)
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes, then stops
/// accepting, ends open event streams and waits for requests in flight.
///
/// Fails at once, serving nothing, if `listener` is not bound to a loopback
/// address.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    if !addr.ip().to_canonical().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "refusing to serve the control API on {addr}: it speaks plain HTTP and must \
                 only listen on a loopback address"
            ),
        ));
    }
    let (stopping_tx, stopping_rx) = watch::channel(false);
    let router = router.layer(Extension(ServerStopping(stopping_rx)));
    tracing::debug!(%addr, "control API listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            // Every stream holds a receiver, and so does the router's layer.
            let _ = stopping_tx.send(true);
        })
        .await
}

/// A request the API refuses, answered as [`ErrorBody`].
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

impl From<ControlError> for Refusal {
    fn from(e: ControlError) -> Self {
        // A status that is not an error would tell the client it worked.
        let status = StatusCode::from_u16(e.status)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Refusal::new(status, e.message)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

/// Lets a request through only with the right key.
async fn require_key(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let presented = presented_key(&request);
    if presented.is_some_and(|k| key_matches(k.as_bytes(), state.key.as_bytes())) {
        next.run(request).await
    } else {
        tracing::debug!(path = %request.uri().path(), "control request without a valid API key");
        Refusal::new(
            StatusCode::UNAUTHORIZED,
            format!("missing or wrong API key (send it in the {API_KEY_HEADER} header)"),
        )
        .into_response()
    }
}

/// The key a request carries: the header if present, else the query.
fn presented_key(request: &Request) -> Option<String> {
    if let Some(value) = request.headers().get(API_KEY_HEADER) {
        return value.to_str().ok().map(str::to_owned);
    }
    query_key(request.uri())
}

fn query_key(uri: &Uri) -> Option<String> {
    #[derive(Deserialize)]
    struct KeyQuery {
        api_key: Option<String>,
    }
    Query::<KeyQuery>::try_from_uri(uri).ok()?.0.api_key
}

/// Constant time in the key's contents; its length is not a secret.
fn key_matches(presented: &[u8], expected: &[u8]) -> bool {
    !expected.is_empty() && bool::from(presented.ct_eq(expected))
}

/// Runs `f` against the daemon on a blocking thread: `Control` methods are
/// plain functions that may take locks or write the config, and must not
/// stall the runtime's workers.
async fn with_control<T: Send + 'static>(
    state: &ApiState,
    f: impl FnOnce(&dyn Control) -> T + Send + 'static,
) -> Result<T, Refusal> {
    let control = Arc::clone(&state.control);
    tokio::task::spawn_blocking(move || f(&*control))
        .await
        .map_err(|e| {
            tracing::error!("control call failed: {e}");
            Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the daemon failed while answering",
            )
        })
}

/// Parses a command body; an empty body is an empty request.
fn folder_request(body: &Bytes) -> Result<FolderRequest, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(FolderRequest::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("bad request body (expected {{\"folder\": PATH}}): {e}"),
        )
    })
}

fn required_folder(body: &Bytes) -> Result<PathBuf, Refusal> {
    folder_request(body)?
        .folder
        .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "missing \"folder\" in the body"))
}

async fn get_web_ui() -> impl IntoResponse {
    (
        [
            (header::CONTENT_SECURITY_POLICY, WEB_UI_CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(WEB_UI),
    )
}

async fn get_health() -> &'static str {
    "ok"
}

async fn get_status(State(state): State<ApiState>) -> Result<Json<Status>, Refusal> {
    Ok(Json(with_control(&state, |c| c.status()).await?))
}

async fn get_folders(State(state): State<ApiState>) -> Result<impl IntoResponse, Refusal> {
    Ok(Json(with_control(&state, |c| c.status().folders).await?))
}

async fn get_peers(State(state): State<ApiState>) -> Result<impl IntoResponse, Refusal> {
    Ok(Json(with_control(&state, |c| c.status().peers).await?))
}

async fn get_completion(State(state): State<ApiState>) -> Result<Json<Completion>, Refusal> {
    Ok(Json(
        with_control(&state, |c| completion(&c.status())).await?,
    ))
}

async fn post_rescan(State(state): State<ApiState>, body: Bytes) -> Result<StatusCode, Refusal> {
    let folder = folder_request(&body)?.folder;
    with_control(&state, move |c| c.rescan(folder)).await??;
    Ok(StatusCode::NO_CONTENT)
}

async fn post_pause(State(state): State<ApiState>, body: Bytes) -> Result<StatusCode, Refusal> {
    let folder = required_folder(&body)?;
    with_control(&state, move |c| c.set_paused(folder, true)).await??;
    Ok(StatusCode::NO_CONTENT)
}

async fn post_resume(State(state): State<ApiState>, body: Bytes) -> Result<StatusCode, Refusal> {
    let folder = required_folder(&body)?;
    with_control(&state, move |c| c.set_paused(folder, false)).await??;
    Ok(StatusCode::NO_CONTENT)
}

async fn post_shutdown(State(state): State<ApiState>) -> Result<StatusCode, Refusal> {
    with_control(&state, |c| c.shutdown()).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Each [`Event`] as one unnamed SSE event whose data is its JSON (so a
/// browser's `onmessage` sees them all). If this client falls behind the
/// daemon's buffer, it gets an event named `lagged` whose data is the number
/// of events it missed: it should fetch the status again. The stream ends
/// when the daemon drops its sender or the server shuts down.
async fn get_events(
    State(state): State<ApiState>,
    stopping: Option<Extension<ServerStopping>>,
) -> impl IntoResponse {
    let events = state.control.subscribe();
    let stopping = stopping.map(|Extension(ServerStopping(rx))| rx);
    let stream = futures_util::stream::unfold(
        (events, stopping),
        |(mut events, mut stopping)| async move {
            let sse_event = tokio::select! {
                () = server_stopping(&mut stopping) => return None,
                received = events.recv() => match received {
                    Ok(event) => event_to_sse(&event),
                    Err(RecvError::Lagged(missed)) => {
                        sse::Event::default().event("lagged").data(missed.to_string())
                    }
                    Err(RecvError::Closed) => return None,
                },
            };
            Some((Ok::<_, Infallible>(sse_event), (events, stopping)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(EVENTS_KEEP_ALIVE))
}

/// Completes when the server is shutting down (or is gone); never if the
/// router is served without [`serve`].
async fn server_stopping(stopping: &mut Option<watch::Receiver<bool>>) {
    match stopping {
        Some(rx) => {
            // An error means the sender is gone: the server is gone too.
            let _ = rx.wait_for(|stopping| *stopping).await;
        }
        None => std::future::pending().await,
    }
}

fn event_to_sse(event: &Event) -> sse::Event {
    sse::Event::default().json_data(event).unwrap_or_else(|e| {
        // Only a path that is not UTF-8 can fail to serialize.
        sse::Event::default()
            .event("unencodable")
            .data(format!("an event could not be encoded as JSON: {e}"))
    })
}

async fn get_metrics(State(state): State<ApiState>) -> Result<impl IntoResponse, Refusal> {
    let text = with_control(&state, |c| render_metrics(&c.metrics(), &c.status())).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}

async fn not_found(uri: Uri) -> Refusal {
    Refusal::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", uri.path()),
    )
}

/// Folder states the `meshsync_folder_state` gauge always reports (0 or 1),
/// as Prometheus' convention for enums asks.
const FOLDER_STATES: [&str; 5] = ["idle", "scanning", "syncing", "error", "stopped"];

/// The Prometheus text exposition (format 0.0.4) of the counters and of
/// per-folder and per-peer gauges.
fn render_metrics(metrics: &Metrics, status: &Status) -> String {
    let mut out = Exposition::default();
    let totals = [
        (
            "meshsync_bytes_received_total",
            "counter",
            "Chunk data received from peers, in bytes.",
            metrics.bytes_received,
        ),
        (
            "meshsync_bytes_sent_total",
            "counter",
            "Chunk data sent to peers, in bytes.",
            metrics.bytes_sent,
        ),
        (
            "meshsync_partial_bytes_sent_total",
            "counter",
            "Chunk data sent to peers from files still downloading here, in bytes.",
            metrics.partial_bytes_sent,
        ),
        (
            "meshsync_files_synced_total",
            "counter",
            "Files written by sync.",
            metrics.files_synced,
        ),
        (
            "meshsync_chunks_rejected_total",
            "counter",
            "Chunks refused because their hash did not match.",
            metrics.chunks_rejected,
        ),
        (
            "meshsync_scans_total",
            "counter",
            "Folder scans done.",
            metrics.scans,
        ),
        (
            "meshsync_index_entries_patched_total",
            "counter",
            "Index entries received as chunk-list patches.",
            metrics.entries_patched,
        ),
        (
            "meshsync_connections_refused_total",
            "counter",
            "Connections closed for sharing no folder past the bounds on strangers, or for no hello in time.",
            metrics.connections_refused,
        ),
        (
            "meshsync_peers_connected",
            "gauge",
            "Connected peers.",
            metrics.peers_connected,
        ),
        (
            "meshsync_strangers_connected",
            "gauge",
            "Incoming connections that share no folder yet.",
            metrics.strangers_connected,
        ),
        ("meshsync_folders", "gauge", "Folders.", metrics.folders),
    ];
    for (name, kind, help, value) in totals {
        out.family(name, kind, help);
        out.sample(name, &[], value);
    }

    let folders = &status.folders;
    out.per_folder(
        folders,
        "meshsync_folder_need_files",
        "Files still to fetch.",
        |f| f.need_files,
    );
    out.per_folder(
        folders,
        "meshsync_folder_need_bytes",
        "Bytes still to fetch.",
        |f| f.need_bytes,
    );
    out.per_folder(
        folders,
        "meshsync_folder_local_files",
        "Live files in the local index.",
        |f| f.local_files,
    );
    out.per_folder(
        folders,
        "meshsync_folder_local_bytes",
        "Bytes of the live files in the local index.",
        |f| f.local_bytes,
    );
    out.per_folder(
        folders,
        "meshsync_folder_local_only_changes",
        "Local changes the swarm does not take (receive-only folder or read-only key).",
        |f| f.local_only_changes,
    );
    let name = "meshsync_folder_state";
    out.family(
        name,
        "gauge",
        "1 for the state a folder is in, 0 for the others.",
    );
    for f in folders {
        let unknown = (!FOLDER_STATES.contains(&f.state.as_str())).then_some(f.state.as_str());
        for state in FOLDER_STATES.into_iter().chain(unknown) {
            let value = u64::from(state == f.state);
            out.sample(name, &[("share_id", &f.share_id), ("state", state)], value);
        }
    }

    let peers = &status.peers;
    out.per_peer(
        peers,
        "meshsync_peer_bytes_received_total",
        "Bytes received from a connected peer on its current connection.",
        |p| p.bytes_in,
    );
    out.per_peer(
        peers,
        "meshsync_peer_bytes_sent_total",
        "Bytes sent to a connected peer on its current connection.",
        |p| p.bytes_out,
    );
    out.0
}

/// Prometheus text being written.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        self.0
            .push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    }

    /// A gauge with one sample per folder, labelled by share id.
    fn per_folder(
        &mut self,
        folders: &[FolderStatus],
        name: &str,
        help: &str,
        value: impl Fn(&FolderStatus) -> u64,
    ) {
        self.family(name, "gauge", help);
        for f in folders {
            self.sample(name, &[("share_id", &f.share_id)], value(f));
        }
    }

    /// A counter with one sample per connected peer, labelled by device id.
    fn per_peer(
        &mut self,
        peers: &[PeerStatus],
        name: &str,
        help: &str,
        value: impl Fn(&PeerStatus) -> u64,
    ) {
        self.family(name, "counter", help);
        for p in peers {
            self.sample(name, &[("device_id", &p.device_id)], value(p));
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let labels: Vec<String> = labels
                .iter()
                .map(|(label, value)| format!("{label}=\"{}\"", escape_label_value(value)))
                .collect();
            self.0.push('{');
            self.0.push_str(&labels.join(","));
            self.0.push('}');
        }
        self.0.push_str(&format!(" {value}\n"));
    }
}

fn escape_label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read};
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Mutex;

    use serde_json::Value;
    use tokio::sync::{broadcast, oneshot};

    use super::*;
    use crate::client::{ApiClient, ClientError};

    const KEY: &str = "test-key-0123456789";

    /// What the HTTP layer passed on to the daemon.
    #[derive(Debug, Clone, PartialEq)]
    enum Call {
        Rescan(Option<PathBuf>),
        SetPaused(PathBuf, bool),
        Shutdown,
    }

    /// A test double for the HTTP layer only: canned status and metrics, a
    /// record of the commands it was given, and the refusals a daemon makes
    /// (unknown folder: 404; pausing a paused folder: 409). Real daemons are
    /// tested end to end elsewhere.
    struct CannedControl {
        status: Status,
        metrics: Metrics,
        events: broadcast::Sender<Event>,
        calls: Mutex<Vec<Call>>,
    }

    fn canned_folder(path: &str, share_id: &str, state: &str) -> FolderStatus {
        FolderStatus {
            path: PathBuf::from(path),
            share_id: share_id.to_owned(),
            mode: "send-receive".to_owned(),
            key_type: "read-write".to_owned(),
            state: state.to_owned(),
            need_files: 0,
            need_bytes: 0,
            local_files: 0,
            local_bytes: 0,
            local_only_changes: 0,
            peers: 0,
            error: None,
        }
    }

    impl CannedControl {
        fn new() -> Self {
            let photos = FolderStatus {
                need_files: 2,
                need_bytes: 100,
                local_files: 3,
                local_bytes: 300,
                peers: 1,
                ..canned_folder("/data/photos", "SHAREA", "syncing")
            };
            let docs = FolderStatus {
                mode: "receive-only".to_owned(),
                key_type: "read-only".to_owned(),
                local_files: 10,
                local_bytes: 1000,
                local_only_changes: 1,
                peers: 2,
                error: Some("disk full".to_owned()),
                ..canned_folder("/data/docs", "SHAREB", "stopped")
            };
            let peer = |id: &str, folders: &[&str]| PeerStatus {
                device_id: id.to_owned(),
                name: format!("{id}-laptop"),
                address: "192.0.2.7:22000".to_owned(),
                via: "static".to_owned(),
                path: "direct".to_owned(),
                folders: folders.iter().map(|s| (*s).to_owned()).collect(),
                bytes_in: 5,
                bytes_out: 6,
            };
            CannedControl {
                status: Status {
                    device_id: "DEV-SELF".to_owned(),
                    device_name: "desk".to_owned(),
                    listen: "0.0.0.0:22000".to_owned(),
                    folders: vec![photos, docs],
                    peers: vec![
                        peer("DEV-ONE", &["SHAREA", "SHAREB"]),
                        peer("DEV-TWO", &["SHAREB"]),
                    ],
                    discovery: Default::default(),
                },
                metrics: Metrics {
                    bytes_received: 4096,
                    bytes_sent: 2048,
                    partial_bytes_sent: 512,
                    files_synced: 7,
                    chunks_rejected: 1,
                    peers_connected: 2,
                    folders: 2,
                    scans: 3,
                    entries_patched: 6,
                    connections_refused: 4,
                    strangers_connected: 1,
                },
                events: broadcast::channel(16).0,
                calls: Mutex::new(Vec::new()),
            }
        }

        fn folder(&self, path: &Path) -> Result<&FolderStatus, ControlError> {
            self.status
                .folders
                .iter()
                .find(|f| f.path == path)
                .ok_or_else(|| ControlError {
                    status: 404,
                    message: format!("no folder at {}", path.display()),
                })
        }

        fn record(&self, call: Call) {
            self.calls.lock().unwrap().push(call);
        }
    }

    impl Control for CannedControl {
        fn status(&self) -> Status {
            self.status.clone()
        }

        fn rescan(&self, folder: Option<PathBuf>) -> Result<(), ControlError> {
            if let Some(path) = &folder {
                self.folder(path)?;
            }
            self.record(Call::Rescan(folder));
            Ok(())
        }

        fn set_paused(&self, folder: PathBuf, paused: bool) -> Result<(), ControlError> {
            if paused && self.folder(&folder)?.state == "stopped" {
                return Err(ControlError {
                    status: 409,
                    message: format!("{} is already paused", folder.display()),
                });
            }
            self.folder(&folder)?;
            self.record(Call::SetPaused(folder, paused));
            Ok(())
        }

        fn subscribe(&self) -> broadcast::Receiver<Event> {
            self.events.subscribe()
        }

        fn metrics(&self) -> Metrics {
            self.metrics.clone()
        }

        fn shutdown(&self) {
            self.record(Call::Shutdown);
        }
    }

    /// The router over a [`CannedControl`], served with [`serve`] on
    /// 127.0.0.1:0 by a runtime of its own, so the test thread can use the
    /// blocking client.
    struct Server {
        addr: SocketAddr,
        control: Arc<CannedControl>,
        stop: Option<oneshot::Sender<()>>,
        served: Option<tokio::task::JoinHandle<io::Result<()>>>,
        runtime: tokio::runtime::Runtime,
    }

    impl Server {
        fn start() -> Self {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let control = Arc::new(CannedControl::new());
            let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = oneshot::channel::<()>();
            let app = router(control.clone(), KEY.to_owned());
            let served = runtime.spawn(serve(listener, app, async {
                let _ = stopped.await;
            }));
            Server {
                addr,
                control,
                stop: Some(stop),
                served: Some(served),
                runtime,
            }
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        fn client(&self) -> ApiClient {
            ApiClient::new(self.addr, KEY)
        }

        fn calls(&self) -> Vec<Call> {
            self.control.calls.lock().unwrap().clone()
        }

        /// Triggers graceful shutdown and waits (at most 5 s) for [`serve`].
        fn stop(mut self) -> io::Result<()> {
            let _ = self.stop.take().unwrap().send(());
            let served = self.served.take().unwrap();
            self.runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), served).await })
                .expect("serve did not return within 5 s of shutdown")
                .unwrap()
        }
    }

    /// A request made without [`ApiClient`], to see the HTTP answer itself.
    struct Answer {
        status: u16,
        content_type: String,
        body: String,
    }

    fn raw_agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into()
    }

    fn raw(method: &str, url: &str, key: Option<&str>, body: &str) -> Answer {
        let agent = raw_agent();
        let answer = match (method, key) {
            ("GET", None) => agent.get(url).call(),
            ("GET", Some(key)) => agent.get(url).header(API_KEY_HEADER, key).call(),
            ("POST", None) => agent.post(url).send(body),
            ("POST", Some(key)) => agent.post(url).header(API_KEY_HEADER, key).send(body),
            _ => unreachable!("{method}"),
        };
        let mut response = answer.unwrap();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Answer {
            status: response.status().as_u16(),
            content_type,
            body: response.body_mut().read_to_string().unwrap(),
        }
    }

    fn error_of(answer: &Answer) -> String {
        assert!(answer.content_type.starts_with("application/json"));
        serde_json::from_str::<ErrorBody>(&answer.body)
            .unwrap()
            .error
    }

    const GUARDED: [(&str, &str); 10] = [
        ("GET", "/rest/status"),
        ("GET", "/rest/folders"),
        ("GET", "/rest/peers"),
        ("GET", "/rest/completion"),
        ("POST", "/rest/rescan"),
        ("POST", "/rest/pause"),
        ("POST", "/rest/resume"),
        ("POST", "/rest/shutdown"),
        ("GET", "/rest/events"),
        ("GET", "/metrics"),
    ];

    #[test]
    fn guarded_endpoints_refuse_without_the_right_key() {
        let server = Server::start();
        let same_length: String = KEY.chars().rev().collect();
        for (method, path) in GUARDED {
            let body = r#"{"folder": "/data/photos"}"#;
            for key in [None, Some("wrong"), Some(same_length.as_str()), Some("")] {
                let answer = raw(method, &server.url(path), key, body);
                assert_eq!(answer.status, 401, "{method} {path} with key {key:?}");
                assert!(error_of(&answer).contains("API key"), "{method} {path}");
            }
            let wrong_query = server.url(&format!("{path}?api_key=wrong"));
            assert_eq!(raw(method, &wrong_query, None, body).status, 401);
            // The header wins over the query: a wrong header is not rescued.
            let right_query = server.url(&format!("{path}?api_key={KEY}"));
            assert_eq!(raw(method, &right_query, Some("wrong"), body).status, 401);
        }
        assert_eq!(server.calls(), [], "no command may reach the daemon");
        let answer = raw(
            "GET",
            &server.url(&format!("/rest/status?api_key={KEY}")),
            None,
            "",
        );
        assert_eq!(answer.status, 200, "the query key is for EventSource");
    }

    #[test]
    fn health_and_web_ui_need_no_key() {
        let server = Server::start();
        let answer = raw("GET", &server.url("/rest/health"), None, "");
        assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));
        assert!(server.client().is_running());
        assert!(ApiClient::new(server.addr, "wrong").is_running());

        let page = raw("GET", &server.url("/"), None, "");
        assert_eq!(page.status, 200);
        assert!(page.content_type.starts_with("text/html"));
        assert!(page.body.contains("<title>meshsync</title>"));
        assert!(page.body.contains("X-API-Key"));
        // Self-contained: nothing fetched from anywhere else.
        assert!(!page.body.contains("http://") && !page.body.contains("https://"));
        let csp = raw_agent()
            .get(server.url("/"))
            .call()
            .unwrap()
            .headers()
            .get(header::CONTENT_SECURITY_POLICY)
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(csp.as_deref(), Some(WEB_UI_CSP));
    }

    #[test]
    fn status_json_has_the_fields_clients_read() {
        let server = Server::start();
        let answer = raw("GET", &server.url("/rest/status"), Some(KEY), "");
        assert_eq!(answer.status, 200);
        assert!(answer.content_type.starts_with("application/json"));
        let status: Value = serde_json::from_str(&answer.body).unwrap();
        for field in ["device_id", "device_name", "listen"] {
            assert!(status[field].is_string(), "{field}");
        }
        let folders = status["folders"].as_array().unwrap();
        assert_eq!(folders.len(), 2);
        for folder in folders {
            for field in ["path", "share_id", "mode", "key_type", "state"] {
                assert!(folder[field].is_string(), "folders[].{field}");
            }
            for field in [
                "need_files",
                "need_bytes",
                "local_files",
                "local_bytes",
                "local_only_changes",
                "peers",
            ] {
                assert!(folder[field].is_u64(), "folders[].{field}");
            }
            assert!(folder["error"].is_null() || folder["error"].is_string());
        }
        assert_eq!(folders[0]["path"], "/data/photos");
        assert_eq!(folders[1]["error"], "disk full");
        let peers = status["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 2);
        for peer in peers {
            for field in ["device_id", "name", "address", "via"] {
                assert!(peer[field].is_string(), "peers[].{field}");
            }
            assert!(peer["folders"].is_array());
            assert!(peer["bytes_in"].is_u64() && peer["bytes_out"].is_u64());
        }

        assert_eq!(server.client().status().unwrap(), server.control.status);
        let folders = raw("GET", &server.url("/rest/folders"), Some(KEY), "");
        let folders: Vec<FolderStatus> = serde_json::from_str(&folders.body).unwrap();
        assert_eq!(folders, server.control.status.folders);
        let peers = raw("GET", &server.url("/rest/peers"), Some(KEY), "");
        let peers: Vec<PeerStatus> = serde_json::from_str(&peers.body).unwrap();
        assert_eq!(peers, server.control.status.peers);
    }

    #[test]
    fn completion_endpoint_follows_the_documented_rule() {
        let server = Server::start();
        let answer = raw("GET", &server.url("/rest/completion"), Some(KEY), "");
        assert_eq!(answer.status, 200);
        let got: Completion = serde_json::from_str(&answer.body).unwrap();
        // photos: 300 held, 100 needed -> 75; docs: nothing needed -> 100;
        // together 1300 / 1400 = 92.857 -> 92.8 (rounded down).
        assert_eq!(got.completion, 92.8);
        let folders: Vec<(&str, f64)> = got
            .folders
            .iter()
            .map(|f| (f.share_id.as_str(), f.completion))
            .collect();
        assert_eq!(folders, [("SHAREA", 75.0), ("SHAREB", 100.0)]);
        let peers: Vec<(&str, f64, u64)> = got
            .peers
            .iter()
            .map(|p| (p.device_id.as_str(), p.completion, p.need_bytes))
            .collect();
        assert_eq!(peers, [("DEV-ONE", 92.8, 100), ("DEV-TWO", 100.0, 0)]);
    }

    #[test]
    fn percent_complete_is_100_only_when_nothing_is_needed() {
        assert_eq!(percent_complete(0, 0, 0), 100.0);
        assert_eq!(percent_complete(500, 0, 0), 100.0);
        assert_eq!(percent_complete(500, 0, 3), 99.9, "deletions still to do");
        assert_eq!(
            percent_complete(999_999, 1, 1),
            99.9,
            "never rounds up to 100"
        );
        assert_eq!(percent_complete(0, 0, 1), 0.0, "an empty file to fetch");
        assert_eq!(percent_complete(0, 10, 1), 0.0);
        assert_eq!(percent_complete(1, 2, 1), 33.3);
        assert_eq!(percent_complete(u64::MAX, u64::MAX, 1), 50.0);
    }

    #[test]
    fn commands_call_through_to_the_daemon() {
        let server = Server::start();
        let client = server.client();
        let photos = Path::new("/data/photos");
        client.rescan(None).unwrap();
        client.rescan(Some(photos)).unwrap();
        client.pause(photos).unwrap();
        client.resume(Path::new("/data/docs")).unwrap();
        let answer = raw("POST", &server.url("/rest/rescan"), Some(KEY), "");
        assert_eq!(answer.status, 204, "an empty body rescans everything");
        client.shutdown().unwrap();
        assert_eq!(
            server.calls(),
            [
                Call::Rescan(None),
                Call::Rescan(Some(photos.to_owned())),
                Call::SetPaused(photos.to_owned(), true),
                Call::SetPaused(PathBuf::from("/data/docs"), false),
                Call::Rescan(None),
                Call::Shutdown,
            ]
        );
    }

    #[test]
    fn control_errors_keep_their_status_and_message() {
        let server = Server::start();
        let pause = |folder: &str| {
            let body = serde_json::json!({ "folder": folder }).to_string();
            raw("POST", &server.url("/rest/pause"), Some(KEY), &body)
        };
        let answer = pause("/nope");
        assert_eq!(answer.status, 404);
        assert_eq!(error_of(&answer), "no folder at /nope");
        let answer = pause("/data/docs");
        assert_eq!(answer.status, 409);
        assert_eq!(error_of(&answer), "/data/docs is already paused");

        let e = server.client().pause(Path::new("/data/docs")).unwrap_err();
        assert_eq!(e.to_string(), "/data/docs is already paused");
        assert!(matches!(
            e.downcast_ref::<ClientError>(),
            Some(ClientError::Refused { status: 409, .. })
        ));
        let e = server
            .client()
            .rescan(Some(Path::new("/nope")))
            .unwrap_err();
        assert_eq!(e.to_string(), "no folder at /nope");
        assert_eq!(server.calls(), []);
    }

    #[test]
    fn control_error_statuses_that_are_not_errors_become_500() {
        let refusal = |status| {
            Refusal::from(ControlError {
                status,
                message: "m".to_owned(),
            })
            .status
        };
        assert_eq!(refusal(400), StatusCode::BAD_REQUEST);
        assert_eq!(refusal(409), StatusCode::CONFLICT);
        assert_eq!(refusal(503), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refusal(200), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(refusal(1000), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn bad_command_bodies_are_400() {
        let server = Server::start();
        let post = |path: &str, body: &str| raw("POST", &server.url(path), Some(KEY), body);
        for (path, body) in [
            ("/rest/pause", ""),
            ("/rest/resume", "{}"),
            ("/rest/pause", "{not json"),
            // A typo must not turn "rescan this folder" into "rescan all".
            ("/rest/rescan", r#"{"path": "/data/photos"}"#),
            ("/rest/rescan", r#"{"folder": 7}"#),
        ] {
            let answer = post(path, body);
            assert_eq!(answer.status, 400, "{path} {body:?}");
            assert!(!error_of(&answer).is_empty());
        }
        assert_eq!(server.calls(), []);
    }

    #[test]
    fn unknown_paths_are_404_json() {
        let server = Server::start();
        let answer = raw("GET", &server.url("/rest/nothing"), Some(KEY), "");
        assert_eq!(answer.status, 404);
        assert_eq!(error_of(&answer), "no such endpoint: /rest/nothing");
    }

    #[test]
    fn client_reports_a_rejected_key() {
        let server = Server::start();
        let client = ApiClient::new(server.addr, "wrong");
        let e = client.status().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("API key rejected by the daemon at {}", server.addr)
        );
        assert!(matches!(
            e.downcast_ref::<ClientError>(),
            Some(ClientError::KeyRejected { .. })
        ));
        assert!(client.shutdown().is_err());
        assert_eq!(server.calls(), []);
    }

    /// Reads server-sent events until one with data, and parses that data.
    fn next_event_data(reader: &mut impl BufRead) -> Event {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(reader.read_line(&mut line).unwrap() > 0, "stream ended");
            if let Some(data) = line.strip_prefix("data:") {
                return serde_json::from_str(data.trim()).unwrap();
            }
        }
    }

    #[test]
    fn events_stream_delivers_broadcast_events() {
        let server = Server::start();
        // As a browser's EventSource does it: the key in the query.
        let response = raw_agent()
            .get(server.url(&format!("/rest/events?api_key={KEY}")))
            .call()
            .unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers().get(header::CONTENT_TYPE).unwrap();
        assert_eq!(content_type, "text/event-stream");
        let mut reader = BufReader::new(response.into_body().into_reader());

        // The handler subscribed before it answered, so these all arrive.
        let sent = [
            Event::PeerConnected {
                device_id: "DEV-ONE".to_owned(),
                address: "192.0.2.7:22000".to_owned(),
            },
            Event::FolderSynced {
                path: PathBuf::from("/data/photos"),
                files: 2,
                bytes_fetched: 100,
                deleted: 0,
                conflicts: 1,
                errors: vec!["a: permission denied".to_owned()],
            },
        ];
        for event in &sent {
            server.control.events.send(event.clone()).unwrap();
        }
        for event in &sent {
            assert_eq!(&next_event_data(&mut reader), event);
        }
    }

    #[test]
    fn events_stream_ends_on_shutdown() {
        let server = Server::start();
        let response = raw_agent()
            .get(server.url("/rest/events"))
            .header(API_KEY_HEADER, KEY)
            .call()
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut reader = response.into_body().into_reader();
        // Graceful shutdown waits for open responses: the stream must end.
        server.stop().unwrap();
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
    }

    #[test]
    fn metrics_text_parses() {
        let server = Server::start();
        let answer = raw("GET", &server.url("/metrics"), Some(KEY), "");
        assert_eq!(answer.status, 200);
        assert!(answer.content_type.starts_with("text/plain; version=0.0.4"));
        let is_name = |s: &str| {
            !s.is_empty()
                && !s.starts_with(|c: char| c.is_ascii_digit())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        };
        let mut typed = Vec::new();
        for line in answer.body.lines() {
            if let Some(comment) = line.strip_prefix("# ") {
                let mut words = comment.splitn(3, ' ');
                let (kind, name, rest) = (words.next(), words.next(), words.next());
                assert!(matches!(kind, Some("HELP" | "TYPE")), "{line}");
                assert!(is_name(name.unwrap()), "{line}");
                if kind == Some("TYPE") {
                    assert!(matches!(rest, Some("counter" | "gauge")), "{line}");
                    typed.push(name.unwrap().to_owned());
                }
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect(line);
            value.parse::<f64>().expect(line);
            let name = match series.split_once('{') {
                Some((name, labels)) => {
                    let labels = labels.strip_suffix('}').expect(line);
                    for label in labels.split(',') {
                        let (key, value) = label.split_once('=').expect(line);
                        assert!(is_name(key), "{line}");
                        assert!(value.len() >= 2 && value.starts_with('"') && value.ends_with('"'));
                    }
                    name
                }
                None => series,
            };
            assert!(is_name(name), "{line}");
            assert_eq!(
                typed.last().map(String::as_str),
                Some(name),
                "TYPE before {line}"
            );
        }
        for expected in [
            "meshsync_bytes_received_total 4096",
            "meshsync_bytes_sent_total 2048",
            "meshsync_partial_bytes_sent_total 512",
            "meshsync_chunks_rejected_total 1",
            "meshsync_index_entries_patched_total 6",
            "meshsync_connections_refused_total 4",
            "meshsync_peers_connected 2",
            "meshsync_strangers_connected 1",
            "meshsync_folder_need_bytes{share_id=\"SHAREA\"} 100",
            "meshsync_folder_need_files{share_id=\"SHAREA\"} 2",
            "meshsync_folder_local_files{share_id=\"SHAREB\"} 10",
            "meshsync_folder_state{share_id=\"SHAREA\",state=\"syncing\"} 1",
            "meshsync_folder_state{share_id=\"SHAREA\",state=\"idle\"} 0",
            "meshsync_folder_state{share_id=\"SHAREB\",state=\"stopped\"} 1",
            "meshsync_peer_bytes_received_total{device_id=\"DEV-ONE\"} 5",
        ] {
            assert!(
                answer.body.lines().any(|l| l == expected),
                "missing {expected}"
            );
        }
    }

    #[test]
    fn metrics_escape_labels_and_report_unknown_states() {
        assert_eq!(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut status = CannedControl::new().status;
        status.folders[0].state = "weird".to_owned();
        let text = render_metrics(&Metrics::default(), &status);
        assert!(text.contains("meshsync_folder_state{share_id=\"SHAREA\",state=\"weird\"} 1"));
        assert!(text.contains("meshsync_folder_state{share_id=\"SHAREA\",state=\"idle\"} 0"));
    }

    #[test]
    fn key_comparison() {
        assert!(key_matches(b"abc", b"abc"));
        assert!(!key_matches(b"abd", b"abc"));
        assert!(!key_matches(b"ab", b"abc"));
        assert!(
            !key_matches(b"", b""),
            "an empty configured key matches nothing"
        );
    }

    #[test]
    fn serve_refuses_a_non_loopback_listener() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let control: Arc<dyn Control> = Arc::new(CannedControl::new());
        let result = runtime.block_on(async {
            let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
            serve(listener, router(control, KEY.to_owned()), async {}).await
        });
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}
