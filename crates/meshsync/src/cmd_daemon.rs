//! The daemon's commands: `init`, `share`, `join`, `status`, `rescan`,
//! `pause`, `resume`, `run`.
//!
//! Each talks to a running daemon through its REST API when one runs (the
//! address and key are in the config), and otherwise edits the config file,
//! which the daemon reads when it starts. `share` and `join` always write
//! the config: a running daemon reads it again every 2 s and opens new
//! folders (then the command asks it to rescan).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use meshsync_core::ids::DeviceId;
use meshsync_core::keys::{FolderKey, KeyKind, ReadWriteKey};
use meshsync_core::path::META_DIR;
use meshsync_store::identity::DeviceIdentity;
use rand::TryRng;
use zeroize::Zeroizing;

use crate::client::ApiClient;
use crate::config::{Config, FolderConfig, FolderMode, VersioningConfig};
use crate::daemon::control::{FolderStatus, Status};
use crate::exit;

/// Flags of `meshsync init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// Where to listen for peers (QUIC, UDP).
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:22000")]
    pub listen: SocketAddr,
    /// Where the REST API and web UI listen (loopback only).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8384")]
    pub api: SocketAddr,
    /// This device's name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// A tracker to announce to and find peers through (repeatable).
    #[arg(long = "tracker", value_name = "HOST:PORT")]
    pub trackers: Vec<String>,
    /// Do not announce on or listen to the local network.
    #[arg(long)]
    pub no_lan: bool,
    /// The UDP port of LAN announcements.
    #[arg(long, value_name = "PORT", default_value_t = crate::config::DEFAULT_LAN_PORT)]
    pub lan_port: u16,
    /// Do not use the BitTorrent mainline DHT.
    #[arg(long)]
    pub no_dht: bool,
    /// DHT bootstrap nodes instead of the public ones (repeatable; for a
    /// private or test DHT).
    #[arg(long = "dht-bootstrap", value_name = "HOST:PORT")]
    pub dht_bootstrap: Vec<String>,
    /// Do not ask the router to forward the port (UPnP IGD, NAT-PMP).
    #[arg(long)]
    pub no_upnp: bool,
    /// Do not use relays.
    #[arg(long)]
    pub no_relay: bool,
    /// Do not exchange peer addresses with connected peers.
    #[arg(long)]
    pub no_pex: bool,
    /// Turn off every discovery method that reaches beyond the static peer
    /// addresses (LAN, DHT, UPnP, relay, PEX); trackers given still apply.
    #[arg(long)]
    pub offline: bool,
}

/// Flags of `meshsync share`.
#[derive(Args, Debug)]
pub struct ShareArgs {
    /// The folder to share (created if missing).
    pub dir: PathBuf,
    /// How the folder treats changes.
    #[arg(long, value_enum, default_value = "send-receive")]
    pub mode: FolderMode,
    /// Static peer addresses to connect to.
    #[arg(long = "peer", value_name = "ADDR:PORT")]
    pub peers: Vec<SocketAddr>,
    /// Only these devices may open the folder (repeatable; default: any
    /// device holding a key of it).
    #[arg(long = "allow", value_name = "DEVICE_ID")]
    pub allow: Vec<DeviceId>,
    /// Print the keys as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `meshsync join`.
#[derive(Args, Debug)]
pub struct JoinArgs {
    /// A folder key of any type (read-write, read-only); `-` reads it from stdin.
    pub key: String,
    /// Where the folder goes on this device (created if missing).
    pub dir: PathBuf,
    /// Static peer addresses to connect to.
    #[arg(long = "peer", value_name = "ADDR:PORT")]
    pub peers: Vec<SocketAddr>,
    /// How the folder treats changes (default: send-receive; receive-only
    /// with a read-only key).
    #[arg(long, value_enum)]
    pub mode: Option<FolderMode>,
    /// Only these devices may open the folder here (repeatable; default:
    /// any device holding a key of it).
    #[arg(long = "allow", value_name = "DEVICE_ID")]
    pub allow: Vec<DeviceId>,
}

/// Flags of `meshsync status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `meshsync init`.
pub fn init(args: InitArgs, home: &Path) -> Result<u8> {
    if Config::path(home).exists() {
        bail!(
            "{} exists already; this device is initialised",
            Config::path(home).display()
        );
    }
    if !args.api.ip().is_loopback() {
        bail!("--api must be a loopback address (127.0.0.1 or ::1)");
    }
    let identity = DeviceIdentity::load_or_create(home).context("creating the device identity")?;
    let name = args.name.unwrap_or_else(host_name);
    let mut config = Config::new(name, args.listen, args.api, random_hex(16)?);
    let d = &mut config.discovery;
    d.trackers = args.trackers;
    d.lan = !(args.no_lan || args.offline);
    d.lan_port = args.lan_port;
    d.dht = !(args.no_dht || args.offline);
    d.dht_bootstrap = args.dht_bootstrap;
    d.upnp = !(args.no_upnp || args.offline);
    d.relay = !(args.no_relay || args.offline);
    d.pex = !(args.no_pex || args.offline);
    config.save(home)?;
    println!("device id: {}", identity.device_id());
    println!("config:    {}", Config::path(home).display());
    println!(
        "peers connect to {}; the API and web UI are at http://{}/",
        args.listen, args.api
    );
    Ok(exit::SUCCESS)
}

/// `meshsync share DIR`.
pub fn share(args: ShareArgs, home: &Path) -> Result<u8> {
    let mut secret = Zeroizing::new([0u8; 32]);
    rand::rngs::SysRng
        .try_fill_bytes(&mut secret[..])
        .context("the operating system's random number generator failed")?;
    let key = ReadWriteKey::from_secret(&secret);
    let rw = key.to_key_string();
    add_folder(
        home,
        &args.dir,
        rw.to_string(),
        args.mode,
        args.peers,
        &args.allow,
    )?;
    let (ro, enc) = (
        key.read_only().to_key_string(),
        key.encrypted().to_key_string(),
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "path": args.dir,
                "share_id": key.share_id().to_string(),
                "read_write": *rw,
                "read_only": *ro,
                "encrypted": *enc,
            })
        );
    } else {
        println!(
            "shared {} (share id {})",
            args.dir.display(),
            key.share_id()
        );
        println!("read-write key (full access):     {}", *rw);
        println!("read-only key (can read, not change): {}", *ro);
        println!("encrypted key (storage only):     {}", *enc);
        println!("give a key to another device: meshsync join KEY DIR --peer THIS_HOST:PORT");
    }
    Ok(exit::SUCCESS)
}

/// `meshsync join KEY DIR`.
pub fn join(args: JoinArgs, home: &Path) -> Result<u8> {
    let text = if args.key == "-" {
        let mut s = String::new();
        std::io::stdin().read_line(&mut s)?;
        Zeroizing::new(s.trim().to_string())
    } else {
        Zeroizing::new(args.key.clone())
    };
    let key: FolderKey = text.parse().context("not a valid folder key")?;
    let mode = args.mode.unwrap_or(if key.kind() == KeyKind::ReadOnly {
        FolderMode::ReceiveOnly
    } else {
        FolderMode::SendReceive
    });
    add_folder(
        home,
        &args.dir,
        text.to_string(),
        mode,
        args.peers,
        &args.allow,
    )?;
    if key.kind() == KeyKind::Encrypted {
        println!(
            "joined share {} as a storage-only (encrypted) device at {}: it keeps ciphertext only, in {}/.meshsync",
            key.share_id(),
            args.dir.display(),
            args.dir.display()
        );
    } else {
        println!(
            "joined share {} as a {} device at {}",
            key.share_id(),
            key.kind(),
            args.dir.display()
        );
    }
    Ok(exit::SUCCESS)
}

fn add_folder(
    home: &Path,
    dir: &Path,
    key: String,
    mode: FolderMode,
    peers: Vec<SocketAddr>,
    allow: &[DeviceId],
) -> Result<()> {
    let mut config = Config::load(home)?;
    std::fs::create_dir_all(dir.join(META_DIR))
        .with_context(|| format!("creating {}", dir.join(META_DIR).display()))?;
    let path = std::fs::canonicalize(dir)?;
    if config.folder_index(&path).is_some() {
        bail!("{} is shared already", path.display());
    }
    config.folders.push(FolderConfig {
        path,
        key,
        mode,
        versioning: VersioningConfig::None,
        peers,
        paused: false,
        allowed_devices: allow.iter().map(ToString::to_string).collect(),
    });
    config.save(home)?;
    if let Some(client) = running_daemon(&config) {
        client.rescan(None).context("telling the running daemon")?;
    }
    Ok(())
}

/// The API of the daemon running for this config, if one runs.
pub fn running_daemon(config: &Config) -> Option<ApiClient> {
    let client = ApiClient::new(config.device.api, config.device.api_key.clone());
    client.is_running().then_some(client)
}

/// `meshsync status`.
pub fn status(args: StatusArgs, home: &Path) -> Result<u8> {
    let config = Config::load(home)?;
    let status = match running_daemon(&config) {
        Some(client) => client.status()?,
        None => offline_status(&config, home)?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_status(&status);
    }
    Ok(exit::SUCCESS)
}

/// What can be said without a daemon: the config.
fn offline_status(config: &Config, home: &Path) -> Result<Status> {
    let identity = DeviceIdentity::load_or_create(home)?;
    let folders = config
        .folders
        .iter()
        .map(|f| {
            let key: Option<FolderKey> = f.key.parse().ok();
            FolderStatus {
                path: f.path.clone(),
                share_id: key
                    .as_ref()
                    .map(|k| k.share_id().to_string())
                    .unwrap_or_default(),
                mode: f.mode.as_str().into(),
                key_type: key
                    .as_ref()
                    .map(|k| k.kind().as_str().to_string())
                    .unwrap_or_default(),
                state: "stopped".into(),
                need_files: 0,
                need_bytes: 0,
                local_files: 0,
                local_bytes: 0,
                local_only_changes: 0,
                peers: 0,
                error: Some("no daemon running (start it with `meshsync run`)".into()),
            }
        })
        .collect();
    Ok(Status {
        device_id: identity.device_id().to_string(),
        device_name: config.device.name.clone(),
        listen: config.device.listen.to_string(),
        folders,
        peers: Vec::new(),
        discovery: Default::default(),
    })
}

fn print_status(s: &Status) {
    println!(
        "device {} ({}), listening on {}",
        s.device_id, s.device_name, s.listen
    );
    for f in &s.folders {
        println!(
            "  {}  [{}] {} {}: {} files local, {} files / {} bytes to fetch, {} peers{}",
            f.path.display(),
            f.mode,
            f.key_type,
            f.state,
            f.local_files,
            f.need_files,
            f.need_bytes,
            f.peers,
            f.error
                .as_ref()
                .map(|e| format!(" — {e}"))
                .unwrap_or_default()
        );
    }
    for p in &s.peers {
        println!(
            "  peer {} ({}) at {} via {}, {}",
            p.device_id, p.name, p.address, p.via, p.path
        );
    }
}

/// `meshsync rescan [DIR]`.
pub fn rescan(dir: Option<PathBuf>, home: &Path) -> Result<u8> {
    let config = Config::load(home)?;
    let Some(client) = running_daemon(&config) else {
        bail!("no daemon running; `meshsync run` scans every folder when it starts");
    };
    client.rescan(dir.as_deref())?;
    Ok(exit::SUCCESS)
}

/// `meshsync pause DIR` / `meshsync resume DIR`.
pub fn set_paused(dir: PathBuf, paused: bool, home: &Path) -> Result<u8> {
    let mut config = Config::load(home)?;
    if let Some(client) = running_daemon(&config) {
        if paused {
            client.pause(&dir)?;
        } else {
            client.resume(&dir)?;
        }
        return Ok(exit::SUCCESS);
    }
    let i = config
        .folder_index(&dir)
        .with_context(|| format!("{} is not a shared folder", dir.display()))?;
    config.folders[i].paused = paused;
    config.save(home)?;
    Ok(exit::SUCCESS)
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    rand::rngs::SysRng
        .try_fill_bytes(&mut buf)
        .context("the operating system's random number generator failed")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "meshsync-device".into())
}
