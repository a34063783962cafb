//! What the daemon offers its control surfaces (the REST API, and through
//! it the CLI and web UI): status snapshots, commands, an event stream and
//! metrics. The daemon implements [`Control`]; the API only talks to it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::folder::FolderStateKind;

/// The whole status (`GET /rest/status`, `meshsync status --json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// This device's id.
    pub device_id: String,
    /// This device's name.
    pub device_name: String,
    /// Where it listens for peers.
    pub listen: String,
    /// Every folder.
    pub folders: Vec<FolderStatus>,
    /// Every connected peer.
    pub peers: Vec<PeerStatus>,
    /// What discovery knows.
    #[serde(default)]
    pub discovery: DiscoveryStatus,
}

/// Discovery's state: which methods are on, this device's addresses as
/// others see them, and every address found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct DiscoveryStatus {
    /// The methods turned on (`lan`, `tracker`, `relay`, `dht`, `pex`,
    /// `upnp`).
    pub methods: Vec<String>,
    /// This device's addresses as reported by routers and trackers.
    pub own_addresses: Vec<String>,
    /// Addresses found, with how and the device expected there.
    pub candidates: Vec<CandidateStatus>,
    /// LAN announcements sent and received.
    #[serde(default)]
    pub lan: LanStatus,
}

/// LAN discovery's counters since the daemon started.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct LanStatus {
    /// Announcement datagrams sent.
    pub sent: u64,
    /// Datagrams received on the announcement port.
    pub received: u64,
    /// Announcements of a folder this device runs, offered to the address
    /// book.
    pub accepted: u64,
    /// Datagrams that were not announcements.
    pub malformed: u64,
    /// Datagrams dropped by the rate limits.
    pub rate_limited: u64,
    /// Announcements of this device, of another window, or of no folder of
    /// ours.
    pub ignored: u64,
}

/// One address discovery found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CandidateStatus {
    /// The address.
    pub address: String,
    /// The device expected there, if known.
    pub device_id: Option<String>,
    /// How it was found.
    pub via: String,
    /// The kind of path.
    pub path: String,
}

/// One folder's status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FolderStatus {
    /// The folder's path on this device.
    pub path: PathBuf,
    /// Its share id.
    pub share_id: String,
    /// `send-receive`, `send-only`, `receive-only` or `backup`.
    pub mode: String,
    /// The key kind this device holds (`read-write`, `read-only`).
    pub key_type: String,
    /// `idle`, `scanning`, `syncing`, `error` or `stopped`.
    pub state: String,
    /// Files still to fetch.
    pub need_files: u64,
    /// Bytes still to fetch.
    pub need_bytes: u64,
    /// Live files in the local index.
    pub local_files: u64,
    /// Their bytes.
    pub local_bytes: u64,
    /// Local changes the swarm does not take (receive-only, read-only key).
    pub local_only_changes: u64,
    /// Connected peers sharing this folder.
    pub peers: u64,
    /// The last error, if any.
    pub error: Option<String>,
}

/// One connected peer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerStatus {
    /// Its device id.
    pub device_id: String,
    /// Its name, from its hello.
    pub name: String,
    /// The address of the connection.
    pub address: String,
    /// How it was found: `static` (configured address), `lan`, `tracker`,
    /// `dht`, `pex` (another peer told us), `incoming` (it connected to us).
    pub via: String,
    /// The network path: `direct`, `hole-punched` or `relayed`.
    #[serde(default = "direct_path")]
    pub path: String,
    /// Folders shared with it (share ids).
    pub folders: Vec<String>,
    /// Bytes received from it.
    pub bytes_in: u64,
    /// Bytes sent to it.
    pub bytes_out: u64,
}

/// Something that happened (`GET /rest/events`, server-sent events).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Event {
    /// A folder changed state.
    FolderState {
        /// Which folder.
        path: PathBuf,
        /// Its new state.
        state: String,
    },
    /// A peer connected.
    PeerConnected {
        /// Its device id.
        device_id: String,
        /// Its address.
        address: String,
    },
    /// A peer disconnected.
    PeerDisconnected {
        /// Its device id.
        device_id: String,
    },
    /// A folder finished a round of changes.
    FolderSynced {
        /// Which folder.
        path: PathBuf,
        /// Files written.
        files: u64,
        /// Bytes fetched from peers.
        bytes_fetched: u64,
        /// Paths deleted.
        deleted: u64,
        /// Conflict copies kept.
        conflicts: u64,
        /// Errors met.
        errors: Vec<String>,
    },
}

/// Counters for `GET /metrics` (Prometheus text format).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    /// Bytes received from peers (chunk data).
    pub bytes_received: u64,
    /// Bytes sent to peers (chunk data).
    pub bytes_sent: u64,
    /// Of `bytes_sent`, those read from files still downloading here.
    pub partial_bytes_sent: u64,
    /// Files written by sync.
    pub files_synced: u64,
    /// Chunks refused for a bad hash.
    pub chunks_rejected: u64,
    /// Connected peers.
    pub peers_connected: u64,
    /// Folders.
    pub folders: u64,
    /// Scans done.
    pub scans: u64,
    /// Index entries received as chunk-list patches (protocol version 5).
    #[serde(default)]
    pub entries_patched: u64,
    /// Connections closed by the bounds on strangers (incoming) or the
    /// hello timeout (either way).
    #[serde(default)]
    pub connections_refused: u64,
    /// Incoming connections open now that share no folder yet.
    #[serde(default)]
    pub strangers_connected: u64,
}

/// A command refused, with the HTTP status to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlError {
    /// 400, 404, 409 or 500.
    pub status: u16,
    /// What is wrong, for a person.
    pub message: String,
}

/// The daemon, as its control surfaces see it.
pub trait Control: Send + Sync + 'static {
    /// The current status.
    fn status(&self) -> Status;
    /// Scans `folder` now (every folder if `None`).
    fn rescan(&self, folder: Option<PathBuf>) -> Result<(), ControlError>;
    /// Pauses or resumes a folder (saved in the config).
    fn set_paused(&self, folder: PathBuf, paused: bool) -> Result<(), ControlError>;
    /// Events from now on.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event>;
    /// The counters.
    fn metrics(&self) -> Metrics;
    /// Asks the daemon to stop.
    fn shutdown(&self);
}

impl FolderStateKind {
    /// The state's name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            FolderStateKind::Idle => "idle",
            FolderStateKind::Scanning => "scanning",
            FolderStateKind::Syncing => "syncing",
            FolderStateKind::Error => "error",
            FolderStateKind::Stopped => "stopped",
        }
    }
}

fn direct_path() -> String {
    "direct".to_owned()
}
