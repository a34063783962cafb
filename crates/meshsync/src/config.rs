//! The daemon's configuration: `config.toml` in the state directory.
//!
//! It holds the device's name and addresses, the REST API key, and every
//! folder with its key string, mode, versioning and static peers. It holds
//! secrets (folder keys, the API key), so it is written with mode 0600,
//! atomically (temporary file, fsync, rename).
//!
//! The file is the source of truth when no daemon runs; a running daemon
//! re-reads it when told to (the CLI edits it through the daemon's API).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The config file's name in the state directory.
pub const CONFIG_FILE: &str = "config.toml";

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Config {
    /// This device.
    pub device: DeviceConfig,
    /// How peers are found.
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    /// Shared folders.
    #[serde(default, rename = "folder")]
    pub folders: Vec<FolderConfig>,
}

/// How this device finds peers (`[discovery]`). Each method can be turned
/// off on its own; static peer addresses (per folder) always work.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DiscoveryConfig {
    /// Announce on and listen to the local network (UDP multicast and
    /// broadcast).
    pub lan: bool,
    /// The UDP port of LAN announcements.
    pub lan_port: u16,
    /// Trackers (`HOST:PORT`): they introduce peers of the same folder and
    /// help two peers behind NAT reach each other.
    pub trackers: Vec<String>,
    /// Use the trackers' relays when no direct path works.
    pub relay: bool,
    /// Reach peers a tracker introduces only through its relay: no direct
    /// dials, no hole punching. For tests and diagnostics.
    pub force_relay: bool,
    /// Announce and look up folders on the BitTorrent mainline DHT.
    pub dht: bool,
    /// DHT bootstrap nodes (`HOST:PORT`); empty: the public mainline
    /// bootstrap nodes.
    pub dht_bootstrap: Vec<String>,
    /// Share the addresses of other peers of a folder with its peers (and
    /// learn from theirs).
    pub pex: bool,
    /// Ask the router to forward the listening port (UPnP IGD, NAT-PMP).
    pub upnp: bool,
}

/// The default UDP port of LAN announcements.
pub const DEFAULT_LAN_PORT: u16 = 21029;

impl DiscoveryConfig {
    /// Nothing beyond static peer addresses: for tests, benchmarks and the
    /// demo, which must not send a packet off this machine.
    pub fn offline() -> Self {
        DiscoveryConfig {
            lan: false,
            trackers: Vec::new(),
            relay: false,
            dht: false,
            dht_bootstrap: Vec::new(),
            pex: false,
            upnp: false,
            ..Default::default()
        }
    }
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            lan: true,
            lan_port: DEFAULT_LAN_PORT,
            trackers: Vec::new(),
            relay: true,
            force_relay: false,
            dht: true,
            dht_bootstrap: Vec::new(),
            pex: true,
            upnp: true,
        }
    }
}

/// This device's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceConfig {
    /// A name shown to peers.
    pub name: String,
    /// Where to listen for peers (QUIC over UDP).
    pub listen: SocketAddr,
    /// Where the REST API listens (loopback only).
    pub api: SocketAddr,
    /// The API key the CLI and web UI present (`X-API-Key`).
    pub api_key: String,
    /// Seconds between full rescans (the safety net under file-system events).
    #[serde(default = "default_rescan_secs")]
    pub rescan_interval_secs: u64,
    /// Seconds a chunk request may wait for the peer's next bytes; then the
    /// chunks it carried are asked of another holder, and the peer is not
    /// asked again this round (a peer that keeps its connection alive but
    /// stops answering).
    #[serde(default = "default_chunk_stall_secs")]
    pub chunk_stall_secs: u64,
    /// Seconds a new connection may take to say hello; then it is closed
    /// (a stranger that connects and stays silent).
    #[serde(default = "default_hello_timeout_secs")]
    pub hello_timeout_secs: u64,
    /// Chunk data sent to all peers together, at most this many KiB/s (0:
    /// no limit).
    #[serde(default)]
    pub max_send_kibps: u64,
    /// Chunk data fetched from all peers together, at most this many KiB/s
    /// (0: no limit).
    #[serde(default)]
    pub max_recv_kibps: u64,
}

fn default_rescan_secs() -> u64 {
    3600
}

fn default_chunk_stall_secs() -> u64 {
    20
}

fn default_hello_timeout_secs() -> u64 {
    10
}

/// How a folder treats changes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FolderMode {
    /// Send local changes and receive remote ones.
    #[default]
    SendReceive,
    /// Send local changes; never apply remote ones.
    SendOnly,
    /// Apply remote changes; local changes stay local (and are shown).
    ReceiveOnly,
    /// Apply remote changes but never delete: deleted and replaced files go
    /// to versions.
    Backup,
}

impl FolderMode {
    /// The mode's name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            FolderMode::SendReceive => "send-receive",
            FolderMode::SendOnly => "send-only",
            FolderMode::ReceiveOnly => "receive-only",
            FolderMode::Backup => "backup",
        }
    }
}

/// What is kept of replaced and deleted files, under `.meshsync/versions/`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum VersioningConfig {
    /// Nothing.
    #[default]
    None,
    /// The last version of each file, removed after `clean_after_days` (0: never).
    TrashCan {
        /// Days to keep; 0 keeps forever.
        #[serde(default)]
        clean_after_days: u32,
    },
    /// The last `keep` versions of each file.
    Simple {
        /// How many versions to keep.
        keep: u32,
    },
    /// Versions thinned with age: one per 30 s for the first hour, one per
    /// hour for the first day, one per day for 30 days, one per week after,
    /// none older than `max_age_days` (0: no limit).
    Staggered {
        /// Days to keep at most; 0 keeps forever.
        #[serde(default)]
        max_age_days: u32,
    },
}

/// One shared folder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FolderConfig {
    /// Where the folder is on this device.
    pub path: PathBuf,
    /// The folder key (read-write, read-only or encrypted key string).
    pub key: String,
    /// How it treats changes.
    #[serde(default)]
    pub mode: FolderMode,
    /// What is kept of replaced and deleted files.
    #[serde(default)]
    pub versioning: VersioningConfig,
    /// Static peer addresses to connect to.
    #[serde(default)]
    pub peers: Vec<SocketAddr>,
    /// Held: not scanned, not synced.
    #[serde(default)]
    pub paused: bool,
    /// Devices (ids) that may open the folder; empty: any device that
    /// proves it holds a key of it. Read by the daemon for every new
    /// connection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_devices: Vec<String>,
}

impl FolderConfig {
    /// Whether `device` may open this folder.
    pub fn allows(&self, device: &meshsync_core::ids::DeviceId) -> bool {
        self.allowed_devices.is_empty()
            || self
                .allowed_devices
                .iter()
                .any(|d| d.parse::<meshsync_core::ids::DeviceId>().ok() == Some(*device))
    }
}

impl Config {
    /// A new configuration for a device.
    pub fn new(name: String, listen: SocketAddr, api: SocketAddr, api_key: String) -> Self {
        Config {
            device: DeviceConfig {
                name,
                listen,
                api,
                api_key,
                rescan_interval_secs: default_rescan_secs(),
                chunk_stall_secs: default_chunk_stall_secs(),
                hello_timeout_secs: default_hello_timeout_secs(),
                max_send_kibps: 0,
                max_recv_kibps: 0,
            },
            discovery: DiscoveryConfig::default(),
            folders: Vec::new(),
        }
    }

    /// The config file in `home`.
    pub fn path(home: &Path) -> PathBuf {
        home.join(CONFIG_FILE)
    }

    /// Reads the config of `home`.
    pub fn load(home: &Path) -> Result<Self> {
        let path = Self::path(home);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no configuration at {} (run `meshsync init` first)",
                path.display()
            )
        })?;
        let config: Config =
            toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
        config.check()?;
        Ok(config)
    }

    /// Rejects configurations that would do harm.
    pub fn check(&self) -> Result<()> {
        for folder in &self.folders {
            for device in &folder.allowed_devices {
                if let Err(e) = device.parse::<meshsync_core::ids::DeviceId>() {
                    bail!(
                        "folder {}: allowed device {device:?} is not a device id: {e}",
                        folder.path.display()
                    );
                }
            }
        }
        if !self.device.api.ip().is_loopback() {
            bail!(
                "the API address {} is not a loopback address; the API is for this machine only",
                self.device.api
            );
        }
        for (i, a) in self.folders.iter().enumerate() {
            for b in &self.folders[i + 1..] {
                if a.path.starts_with(&b.path) || b.path.starts_with(&a.path) {
                    bail!(
                        "folders {} and {} overlap; a folder cannot hold another",
                        a.path.display(),
                        b.path.display()
                    );
                }
            }
        }
        Ok(())
    }

    /// Writes the config atomically with mode 0600.
    pub fn save(&self, home: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        self.check()?;
        let path = Self::path(home);
        let tmp = home.join(format!(".{CONFIG_FILE}.tmp"));
        let text = toml::to_string_pretty(self)?;
        let mut f = std::fs::File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// The folder at `path` (compared after canonicalisation where possible).
    pub fn folder_index(&self, path: &Path) -> Option<usize> {
        let want = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        self.folders
            .iter()
            .position(|f| std::fs::canonicalize(&f.path).unwrap_or_else(|_| f.path.clone()) == want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device's config with its API on `api`.
    fn config(api: &str) -> Config {
        Config::new(
            "d".into(),
            "127.0.0.1:22000".parse().unwrap(),
            api.parse().unwrap(),
            "k".into(),
        )
    }

    /// A send-receive folder at `path`, no key, nothing else set.
    fn folder(path: &str) -> FolderConfig {
        FolderConfig {
            path: path.into(),
            key: String::new(),
            mode: FolderMode::default(),
            versioning: VersioningConfig::default(),
            peers: vec![],
            paused: false,
            allowed_devices: Vec::new(),
        }
    }

    #[test]
    fn round_trips_through_toml() {
        let mut c = config("127.0.0.1:8384");
        c.folders.push(FolderConfig {
            key: "W...".into(),
            mode: FolderMode::Backup,
            versioning: VersioningConfig::Simple { keep: 3 },
            peers: vec!["127.0.0.1:22001".parse().unwrap()],
            ..folder("/tmp/x")
        });
        let text = toml::to_string_pretty(&c).unwrap();
        assert!(text.contains("mode = \"backup\""), "{text}");
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn refuses_public_api_and_nested_folders() {
        let mut c = config("0.0.0.0:8384");
        assert!(c.check().is_err());
        c.device.api = "127.0.0.1:8384".parse().unwrap();
        for p in ["/a", "/a/b"] {
            c.folders.push(folder(p));
        }
        assert!(c.check().is_err());
    }

    #[test]
    fn an_allowlist_names_device_ids_and_admits_only_them() {
        let mut c = config("127.0.0.1:8384");
        let device = |seed: u8| meshsync_core::ids::DeviceId::from_public_key(&[seed; 32]);
        let mut folder = folder("/a");
        assert!(folder.allows(&device(1)), "empty: anyone with a key");
        folder.allowed_devices = vec![device(1).to_string()];
        assert!(folder.allows(&device(1)));
        assert!(!folder.allows(&device(2)));
        c.folders.push(folder.clone());
        c.check().unwrap();
        let text = toml::to_string_pretty(&c).unwrap();
        assert!(text.contains(&device(1).to_string()), "{text}");
        c.folders[0]
            .allowed_devices
            .push("ABCDEFG-not-an-id".into());
        let err = c.check().unwrap_err().to_string();
        assert!(err.contains("is not a device id"), "{err}");
    }
}
