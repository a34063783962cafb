//! `meshsync demo`: three devices on this machine, syncing a folder.
//!
//! Starts three real daemons (this binary, `meshsync run`) in a temporary
//! directory, each with its own identity, config and QUIC port on 127.0.0.1;
//! shares a generated folder from the first, joins it on the other two (the
//! third also peers with the second, so it pulls from both), and shows them
//! converge with live progress; then makes an edit and a conflict and shows
//! how they resolve. The web UI of each device can be opened while it runs.
//!
//! It must never listen on or send to anything but 127.0.0.1, and it removes
//! everything it made on exit, on an error, or on Ctrl-C.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use meshsync_core::keys::ReadWriteKey;
use meshsync_store::identity::DeviceIdentity;
use rand::TryRng;

use crate::client::ApiClient;
use crate::config::{Config, FolderConfig, FolderMode, VersioningConfig};
use crate::exit;

/// Flags of `meshsync demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Megabytes of generated data to share.
    #[arg(long, default_value_t = 64)]
    pub megabytes: u64,
    /// Keep the devices running at the end until Ctrl-C (to look at the web UI).
    #[arg(long)]
    pub stay: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// One demo device.
struct Device {
    name: &'static str,
    home: PathBuf,
    folder: PathBuf,
    listen: SocketAddr,
    api: ApiClient,
    api_addr: SocketAddr,
    api_key: String,
    child: Option<Child>,
}

/// Everything the demo made; dropping it stops the daemons and removes it.
struct Demo {
    dir: PathBuf,
    devices: Vec<Device>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for d in &mut self.devices {
            if let Some(mut child) = d.child.take() {
                if d.api.shutdown().is_err() {
                    // SAFETY: sending SIGTERM to our own child's pid.
                    unsafe {
                        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
                    }
                }
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        println!("cleaned up {}", self.dir.display());
    }
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn free_udp_port() -> Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

fn free_tcp_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut v = vec![0u8; n];
    rand::rngs::SysRng
        .try_fill_bytes(&mut v)
        .context("random bytes")?;
    Ok(v)
}

/// `meshsync demo`.
pub fn run(args: DemoArgs) -> Result<u8> {
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        );
    }
    let dir = std::env::temp_dir().join(format!("meshsync-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut demo = Demo {
        dir: dir.clone(),
        devices: Vec::new(),
    };
    println!(
        "meshsync demo: three devices on 127.0.0.1, everything under {}",
        dir.display()
    );

    // Devices: identity and config each.
    for name in ["alice", "bob", "carol"] {
        let home = dir.join(name).join("home");
        std::fs::create_dir_all(&home)?;
        DeviceIdentity::load_or_create(&home)?;
        let (listen, api_addr) = (free_udp_port()?, free_tcp_port()?);
        let api_key: String = random_bytes(16)?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut config = Config::new(name.into(), listen, api_addr, api_key.clone());
        // The demo stays on loopback: no LAN, DHT, UPnP or relay traffic.
        config.discovery = crate::config::DiscoveryConfig::offline();
        config.save(&home)?;
        demo.devices.push(Device {
            name,
            home,
            folder: dir.join(name).join("photos"),
            listen,
            api: ApiClient::new(api_addr, api_key.clone()),
            api_addr,
            api_key,
            child: None,
        });
    }

    // A folder on alice, shared; bob and carol join it.
    let (files, bytes) = generate_folder(&demo.devices[0].folder, args.megabytes)?;
    let key = ReadWriteKey::from_secret(&random_bytes(32)?.try_into().expect("32 bytes"));
    let key_text = key.to_key_string().to_string();
    let peers_of = |i: usize, devices: &[Device]| -> Vec<SocketAddr> {
        match i {
            0 => vec![],
            1 => vec![devices[0].listen],
            _ => vec![devices[0].listen, devices[1].listen],
        }
    };
    for i in 0..demo.devices.len() {
        let peers = peers_of(i, &demo.devices);
        let d = &demo.devices[i];
        std::fs::create_dir_all(d.folder.join(meshsync_core::path::META_DIR))?;
        let mut config = Config::load(&d.home)?;
        config.folders.push(FolderConfig {
            path: std::fs::canonicalize(&d.folder)?,
            key: key_text.clone(),
            mode: FolderMode::SendReceive,
            versioning: VersioningConfig::None,
            peers,
            paused: false,
            allowed_devices: Vec::new(),
        });
        config.save(&d.home)?;
    }
    println!(
        "alice shares {} ({files} files, {}); share id {}",
        demo.devices[0].folder.display(),
        human(bytes),
        key.share_id()
    );
    println!("bob joins with alice as peer; carol joins with alice and bob as peers (swarm)");

    // Start the daemons.
    let exe = std::env::current_exe()?;
    for d in &mut demo.devices {
        let log = std::fs::File::create(d.home.join("daemon.log"))?;
        let child = Command::new(&exe)
            .arg("--home")
            .arg(&d.home)
            .arg("run")
            .env("RUST_LOG", "meshsync=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting a daemon")?;
        d.child = Some(child);
    }
    for d in &demo.devices {
        wait_for(Duration::from_secs(20), || Ok(d.api.is_running())).with_context(|| {
            format!(
                "{}'s daemon did not start (log: {})",
                d.name,
                d.home.join("daemon.log").display()
            )
        })?;
    }
    println!();
    for d in &demo.devices {
        println!(
            "  {:5}  web UI http://{}/#key={}   (device {})",
            d.name,
            d.api_addr,
            d.api_key,
            &d.api.status()?.device_id[..15]
        );
    }
    println!();

    // Initial sync, with live progress.
    let started = Instant::now();
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:6} [{bar:40}] {bytes}/{total_bytes} {msg}")
        .expect("template")
        .progress_chars("=> ");
    let bars: Vec<ProgressBar> = demo.devices[1..]
        .iter()
        .map(|d| {
            let bar = multi.add(ProgressBar::new(bytes));
            bar.set_style(style.clone());
            bar.set_prefix(d.name);
            bar
        })
        .collect();
    wait_for(Duration::from_secs(600), || {
        let mut all = true;
        for (d, bar) in demo.devices[1..].iter().zip(&bars) {
            let s = d.api.status()?;
            let f = &s.folders[0];
            bar.set_position(f.local_bytes.min(bytes));
            bar.set_message(format!(
                "{} files, {} peers, {}",
                f.local_files,
                s.peers.len(),
                f.state
            ));
            all &= f.local_files == files && f.need_files == 0 && f.state == "idle";
        }
        Ok(all)
    })?;
    for bar in &bars {
        bar.finish();
    }
    println!(
        "bob and carol have all {files} files after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    same_trees(&demo.devices)?;

    // An edit on alice.
    let edited = Path::new("notes/todo.txt");
    let started = Instant::now();
    std::fs::write(demo.devices[0].folder.join(edited), b"buy milk\ncall bob\n")?;
    println!("\nalice edits {} ...", edited.display());
    wait_for(Duration::from_secs(60), || {
        Ok(demo.devices[1..].iter().all(|d| {
            std::fs::read(d.folder.join(edited)).is_ok_and(|b| b == b"buy milk\ncall bob\n")
        }))
    })?;
    println!(
        "  ... bob and carol have it after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // A conflict: bob and carol edit the same file while apart.
    println!("\nbob and carol both edit notes/plan.txt while their folders are paused ...");
    let plan = Path::new("notes/plan.txt");
    for d in &demo.devices[1..] {
        d.api.pause(&d.folder)?;
    }
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(demo.devices[1].folder.join(plan), b"bob's plan: hike\n")?;
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(demo.devices[2].folder.join(plan), b"carol's plan: museum\n")?;
    for d in &demo.devices[1..] {
        d.api.resume(&d.folder)?;
        d.api.rescan(Some(&d.folder))?;
    }
    let started = Instant::now();
    wait_for(Duration::from_secs(60), || {
        let copies = demo
            .devices
            .iter()
            .map(|d| conflict_copies(&d.folder.join("notes")).len())
            .collect::<Vec<_>>();
        Ok(copies.iter().all(|&n| n == 1) && same_trees(&demo.devices).is_ok())
    })?;
    let notes = demo.devices[0].folder.join("notes");
    println!(
        "  ... resolved in {:.1} s on all three devices, nothing lost:",
        started.elapsed().as_secs_f64()
    );
    println!(
        "      plan.txt            = {:?}",
        String::from_utf8_lossy(&std::fs::read(notes.join("plan.txt"))?)
    );
    for c in conflict_copies(&notes) {
        println!(
            "      {:19} = {:?}",
            c.file_name().unwrap_or_default().to_string_lossy(),
            String::from_utf8_lossy(&std::fs::read(&c)?)
        );
    }
    println!("  (the newer edit keeps the name; the other is kept as a conflict copy)");

    if args.stay {
        println!("\nthe devices keep running; open a web UI above. Ctrl-C stops the demo.");
        while !INTERRUPTED.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!("\ndemo done.");
    drop(demo);
    Ok(exit::SUCCESS)
}

/// Polls `done` every 200 ms until it is true, the deadline passes, or Ctrl-C.
fn wait_for(limit: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        check_interrupt()?;
        if done().unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn conflict_copies(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().contains(".sync-conflict-"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Fails unless every device's folder has the same files with the same bytes.
fn same_trees(devices: &[Device]) -> Result<()> {
    let listing = |root: &Path| -> Result<Vec<(PathBuf, meshsync_core::ids::Hash)>> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir)? {
                let e = e?;
                let p = e.path();
                if p.file_name()
                    .is_some_and(|n| n == meshsync_core::path::META_DIR)
                {
                    continue;
                }
                if e.file_type()?.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(root)?.to_path_buf();
                    out.push((rel, meshsync_core::ids::Hash::of(&std::fs::read(&p)?)));
                }
            }
        }
        out.sort();
        Ok(out)
    };
    let first = listing(&devices[0].folder)?;
    for d in &devices[1..] {
        if listing(&d.folder)? != first {
            bail!("{}'s folder differs from alice's", d.name);
        }
    }
    Ok(())
}

/// Makes a folder of photos, documents and notes: about `megabytes` MiB.
fn generate_folder(root: &Path, megabytes: u64) -> Result<(u64, u64)> {
    let mut files = 0u64;
    let mut bytes = 0u64;
    let mut write = |rel: &str, data: &[u8]| -> Result<()> {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("has a parent"))?;
        std::fs::write(&p, data)?;
        files += 1;
        bytes += data.len() as u64;
        Ok(())
    };
    let budget = megabytes.max(1) << 20;
    let photo = (budget / 16).max(1) as usize;
    for i in 0..12 {
        write(&format!("2026/trip/IMG_{i:04}.jpg"), &random_bytes(photo)?)?;
    }
    for i in 0..200 {
        let text = format!("document {i}\n").repeat(50 + i * 7);
        write(&format!("docs/report-{i:03}.txt"), text.as_bytes())?;
    }
    write("notes/todo.txt", b"buy milk\n")?;
    write("notes/plan.txt", b"plan: undecided\n")?;
    std::fs::create_dir_all(root.join("empty-album"))?;
    Ok((files, bytes))
}

fn human(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else {
        format!("{n} B")
    }
}
