//! Helpers for the daemon end-to-end tests (`tests/daemon.rs`): real
//! `meshsync run` daemons on loopback, each with its own state directory,
//! free ports and log file, killed when their [`Device`] is dropped (panics
//! included); polling with a deadline ([`eventually`], [`holds_for`]); and a
//! race-tolerant tree snapshot ([`snapshot`]) that can be taken while a
//! daemon is writing.
//!
//! Every daemon listens on 127.0.0.1 only, for peers and for its API.

// Not every test uses every helper.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{Dir, Node};

/// How long convergence may take before a test fails.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Between two polls.
const POLL: Duration = Duration::from_millis(50);

/// The header that carries the API key.
pub const API_KEY_HEADER: &str = "X-API-Key";

/// A free port on 127.0.0.1 for UDP (QUIC).
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("binding a UDP port")
        .port()
}

/// A free port on 127.0.0.1 for TCP (the API).
fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("binding a TCP port")
        .port()
}

/// The three key strings `meshsync share --json` prints.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Read-write key.
    pub read_write: String,
    /// Read-only key.
    pub read_only: String,
    /// Encrypted (storage-only) key.
    pub encrypted: String,
    /// The share id.
    pub share_id: String,
}

/// What a CLI command printed.
#[derive(Debug)]
pub struct CmdOutput {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CmdOutput {
    /// Panics unless the command succeeded.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "command failed\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// One device: a state directory, its addresses, and (when started) its
/// daemon. Dropping it kills the daemon.
pub struct Device {
    /// Its name (also the device name given to `init`).
    pub name: String,
    /// The state directory.
    pub home: PathBuf,
    /// Where it listens for peers.
    pub listen: SocketAddr,
    /// Where its API listens.
    pub api: SocketAddr,
    api_key: String,
    log: PathBuf,
    child: Option<Child>,
    agent: ureq::Agent,
    env: Vec<(String, String)>,
}

/// Spawns `cmd` (a `meshsync` command with its `--home`) as `meshsync
/// run`, appending its output to `log`, at info level unless
/// `$MESHSYNC_TEST_LOG` says otherwise.
pub fn spawn_run(mut cmd: Command, log: &Path) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("opening the log");
    cmd.arg("run")
        .env(
            "RUST_LOG",
            std::env::var("MESHSYNC_TEST_LOG").unwrap_or_else(|_| "warn,meshsync=info".into()),
        )
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .expect("starting meshsync run")
}

impl Device {
    /// Initialises a device named `name` in the sandbox (`init` with free
    /// loopback ports). Not started.
    pub fn new(dir: &Dir, name: &str) -> Device {
        let home = dir.path(&format!("home-{name}"));
        let listen: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        let api: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let mut d = Device {
            name: name.into(),
            log: dir.path(&format!("log-{name}.txt")),
            home,
            listen,
            api,
            api_key: String::new(),
            child: None,
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .proxy(None)
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .into(),
            env: Vec::new(),
        };
        d.cli(&[
            "init",
            "--listen",
            &listen.to_string(),
            "--api",
            &api.to_string(),
            "--name",
            name,
            // Nothing may leave loopback in tests.
            "--offline",
        ])
        .ok();
        let config = fs::read_to_string(d.home.join("config.toml")).expect("reading config.toml");
        let table: toml::Table = config.parse().expect("config.toml is TOML");
        d.api_key = table["device"]["api_key"]
            .as_str()
            .expect("device.api_key")
            .to_string();
        d
    }

    /// The key string of the `index`th folder in `config.toml`.
    pub fn folder_key(&self, index: usize) -> String {
        let text = fs::read_to_string(self.home.join("config.toml")).expect("config.toml");
        let table: toml::Table = text.parse().expect("config.toml is TOML");
        table["folder"][index]["key"]
            .as_str()
            .expect("folder key")
            .to_string()
    }

    /// The API key from `config.toml`.
    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// Sets an environment variable for every later command and daemon of
    /// this device (a fault injected through the environment: a skewed
    /// clock with libfaketime, say).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.into(), value.into()));
    }

    /// A `meshsync --home HOME` command (no log filter, stdin closed, the
    /// variables of [`Device::set_env`]).
    pub fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_meshsync"));
        c.arg("--home")
            .arg(&self.home)
            .env_remove("MESHSYNC_HOME")
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        c
    }

    /// Runs `meshsync --home HOME <args>` to completion.
    pub fn cli(&self, args: &[&str]) -> CmdOutput {
        let out = self
            .command()
            .args(args)
            .output()
            .expect("running meshsync");
        CmdOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `meshsync share DIR --json [--mode MODE]`: the keys.
    pub fn share(&self, dir: &Path, mode: Option<&str>) -> Keys {
        let d = dir.to_str().expect("UTF-8 test path");
        let mut args = vec!["share", d, "--json"];
        if let Some(m) = mode {
            args.extend(["--mode", m]);
        }
        let out = self.cli(&args).ok();
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("share --json printed no JSON ({e}): {}", out.stdout));
        let field = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("share --json lacks {k}: {v}"))
                .to_string()
        };
        Keys {
            read_write: field("read_write"),
            read_only: field("read_only"),
            encrypted: field("encrypted"),
            share_id: field("share_id"),
        }
    }

    /// `meshsync join KEY DIR --peer P… [--mode MODE]`.
    pub fn join(&self, key: &str, dir: &Path, peers: &[&Device], mode: Option<&str>) {
        let d = dir.to_str().expect("UTF-8 test path");
        let peer_addrs: Vec<String> = peers.iter().map(|p| p.listen.to_string()).collect();
        let mut args = vec!["join", key, d];
        for p in &peer_addrs {
            args.extend(["--peer", p.as_str()]);
        }
        if let Some(m) = mode {
            args.extend(["--mode", m]);
        }
        self.cli(&args).ok();
    }

    /// Starts `meshsync run` (logging to the device's log file at info
    /// level, or as `$MESHSYNC_TEST_LOG` says) and waits until its API
    /// answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} runs already", self.name);
        self.child = Some(spawn_run(self.command(), &self.log));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                self.child = None;
                panic!(
                    "daemon {} exited at start ({status})\n{}",
                    self.name,
                    self.log_text()
                );
            }
            if self.health() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon {} did not answer on its API\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether a daemon is running (started and not exited).
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// Stops the daemon with SIGTERM (SIGKILL after 10 s) and waits for it;
    /// panics unless it exits with status 0.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                assert!(
                    status.success(),
                    "daemon {} exited with {status} on SIGTERM\n{}",
                    self.name,
                    self.log_text()
                );
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "daemon {} ignored SIGTERM for 10 s\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the daemon with SIGKILL (a crash) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The daemon's log so far (stdout and stderr of every run).
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    /// Whether `GET /rest/health` answers 200 (no key).
    pub fn health(&self) -> bool {
        self.agent
            .get(&self.url("/rest/health"))
            .call()
            .is_ok_and(|r| r.status().as_u16() == 200)
    }

    /// `GET path` with the API key (or none): status and body.
    pub fn get(&self, path: &str, with_key: bool) -> (u16, String) {
        let mut req = self.agent.get(&self.url(path));
        if with_key {
            req = req.header(API_KEY_HEADER, &self.api_key);
        }
        let mut resp = req
            .call()
            .unwrap_or_else(|e| panic!("GET {path} on {}: {e}", self.name));
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        (status, body)
    }

    /// `POST path` with the API key and a body: the status code.
    pub fn post(&self, path: &str, body: &str) -> u16 {
        self.agent
            .post(&self.url(path))
            .header(API_KEY_HEADER, &self.api_key)
            .send(body)
            .map_or(0, |r| r.status().as_u16())
    }

    /// `GET /rest/status` (the running daemon's status).
    pub fn status(&self) -> Value {
        let (code, body) = self.get("/rest/status", true);
        assert_eq!(code, 200, "GET /rest/status on {}: {body}", self.name);
        serde_json::from_str(&body).expect("status is JSON")
    }

    /// `meshsync status --json` (through the CLI).
    pub fn status_cli(&self) -> Value {
        let out = self.cli(&["status", "--json"]).ok();
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", out.stdout))
    }

    /// The status of the folder at `dir` (compared canonically).
    pub fn folder_status(&self, dir: &Path) -> Value {
        let want = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let s = self.status();
        s["folders"]
            .as_array()
            .expect("folders")
            .iter()
            .find(|f| f["path"].as_str().map(PathBuf::from) == Some(want.clone()))
            .cloned()
            .unwrap_or_else(|| panic!("{} has no folder {}: {s}", self.name, want.display()))
    }

    /// Bytes received from every connected peer (on the current connections).
    pub fn bytes_in(&self) -> u64 {
        self.status()["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .map(|p| p["bytes_in"].as_u64().expect("bytes_in"))
            .sum()
    }

    /// How many peers are connected.
    pub fn peer_count(&self) -> usize {
        self.status()["peers"].as_array().expect("peers").len()
    }

    /// `GET /metrics`, parsed: every sample line as `name{labels}` → value.
    /// Panics on a line that is not valid Prometheus text.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let (code, body) = self.get("/metrics", true);
        assert_eq!(code, 200, "GET /metrics on {}: {body}", self.name);
        parse_metrics(&body)
    }

    /// One unlabelled metric.
    pub fn metric(&self, name: &str) -> f64 {
        let m = self.metrics();
        *m.get(name)
            .unwrap_or_else(|| panic!("{} has no metric {name}: {m:?}", self.name))
    }

    /// `meshsync pause DIR`.
    pub fn pause(&self, dir: &Path) {
        self.cli(&["pause", dir.to_str().unwrap()]).ok();
    }

    /// `meshsync resume DIR`.
    pub fn resume(&self, dir: &Path) {
        self.cli(&["resume", dir.to_str().unwrap()]).ok();
    }

    /// `meshsync rescan DIR`.
    pub fn rescan(&self, dir: &Path) {
        self.cli(&["rescan", dir.to_str().unwrap()]).ok();
    }

    /// Opens `GET /rest/events` (server-sent events) and returns a reader
    /// of its `data:` lines, which gives up after `timeout` in all.
    pub fn events(&self, timeout: Duration) -> EventStream {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(timeout))
            .build()
            .into();
        let resp = agent
            .get(&self.url("/rest/events"))
            .header(API_KEY_HEADER, &self.api_key)
            .call()
            .expect("GET /rest/events");
        assert_eq!(resp.status().as_u16(), 200, "GET /rest/events");
        EventStream {
            lines: Box::new(BufReader::new(resp.into_body().into_reader())),
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The `data:` lines of an SSE stream.
pub struct EventStream {
    lines: Box<dyn BufRead + Send>,
}

impl EventStream {
    /// The next event's data parsed as JSON; `None` when the stream ends or
    /// times out.
    pub fn next_event(&mut self) -> Option<Value> {
        loop {
            let mut line = String::new();
            match self.lines.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            if let Some(data) = line.trim_end().strip_prefix("data:")
                && let Ok(v) = serde_json::from_str(data.trim_start())
            {
                return Some(v);
            }
        }
    }
}

/// Parses Prometheus text format: `# HELP`/`# TYPE` comments, then samples
/// `name{label="v",…} value`. Panics on anything else.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                "bad comment line {line:?}"
            );
            if let Some(t) = rest.strip_prefix("TYPE ") {
                let kind = t.split_whitespace().nth(1).unwrap_or_default();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "bad TYPE line {line:?}"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels in {line:?}");
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(
            out.insert(series.to_string(), v).is_none(),
            "duplicate series {series}"
        );
    }
    out
}

/// Polls `check` until it returns `Ok`, every 50 ms, for at most
/// [`TIMEOUT`]; then panics with the last reason, and the status and log of
/// every device in `devices`.
#[track_caller]
pub fn eventually<T>(
    what: &str,
    devices: &[&Device],
    check: impl FnMut() -> Result<T, String>,
) -> T {
    eventually_within(TIMEOUT, what, devices, check)
}

/// [`eventually`] with another deadline.
#[track_caller]
pub fn eventually_within<T>(
    timeout: Duration,
    what: &str,
    devices: &[&Device],
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(why) => {
                if Instant::now() > deadline {
                    panic!(
                        "timed out after {timeout:?} waiting for {what}: {why}\n{}",
                        report(devices)
                    );
                }
            }
        }
        std::thread::sleep(POLL);
    }
}

/// Checks that `check` stays `Ok` for all of `window` (for things that must
/// not happen); panics with the reason and a report at the first failure.
#[track_caller]
pub fn holds_for(
    window: Duration,
    what: &str,
    devices: &[&Device],
    mut check: impl FnMut() -> Result<(), String>,
) {
    let end = Instant::now() + window;
    loop {
        if let Err(why) = check() {
            panic!("{what} did not hold: {why}\n{}", report(devices));
        }
        if Instant::now() > end {
            return;
        }
        std::thread::sleep(POLL);
    }
}

/// Every device's status (if its API answers) and the end of its log (40
/// lines, or `$MESHSYNC_TEST_LOG_LINES`).
pub fn report(devices: &[&Device]) -> String {
    let lines: usize = std::env::var("MESHSYNC_TEST_LOG_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let mut s = String::new();
    for d in devices {
        let status = if d.health() {
            let (_, body) = d.get("/rest/status", true);
            body
        } else {
            "(not running)".into()
        };
        let log = d.log_text();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let _ = write!(
            s,
            "=== device {} ===\nstatus: {status}\nlog (last {lines} lines):\n{}\n",
            d.name,
            tail.join("\n")
        );
    }
    s
}

/// A snapshot of the tree at `root`, like [`crate::util::Tree`] (the root's
/// `.meshsync` is left out; file content, mode and mtime; directory mode;
/// symlink target) but taken while daemons may be renaming files in it: a
/// path that vanishes between listing and reading is an `Err`, for the
/// caller to poll again.
pub fn snapshot(root: &Path) -> Result<BTreeMap<String, Node>, String> {
    let mut out = BTreeMap::new();
    walk(root, "", &mut out).map_err(|e| format!("reading {}: {e}", root.display()))?;
    Ok(out)
}

fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Node>) -> std::io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if prefix.is_empty() && name == ".meshsync" {
            continue;
        }
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let p = e.path();
        let md = fs::symlink_metadata(&p)?;
        let mode = md.permissions().mode() & 0o7777;
        let ft = md.file_type();
        let node = if ft.is_file() {
            let bytes = fs::read(&p)?;
            Node::File {
                content: describe(&bytes),
                mode,
                mtime: (md.mtime(), md.mtime_nsec() as u32),
            }
        } else if ft.is_dir() {
            walk(&p, &rel, out)?;
            Node::Dir { mode }
        } else if ft.is_symlink() {
            Node::Symlink {
                target: fs::read_link(&p)?.to_string_lossy().into_owned(),
            }
        } else {
            Node::Other
        };
        out.insert(rel, node);
    }
    Ok(())
}

/// Short text as itself; anything else as its length and BLAKE3.
pub fn describe(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if bytes.len() <= 64 => format!("{s:?}"),
        _ => format!(
            "{} bytes, blake3 {}",
            bytes.len(),
            &blake3::hash(bytes).to_hex()[..16]
        ),
    }
}

/// `Ok` if the trees at `a` and `b` are equal, else the differences.
pub fn same_trees(a: &Path, b: &Path) -> Result<(), String> {
    let (ta, tb) = (snapshot(a)?, snapshot(b)?);
    diff_trees(&ta, &tb)
}

/// `Ok` if equal, else the paths that differ (at most 20).
pub fn diff_trees(ta: &BTreeMap<String, Node>, tb: &BTreeMap<String, Node>) -> Result<(), String> {
    if ta == tb {
        return Ok(());
    }
    let mut diffs = Vec::new();
    for (p, n) in ta {
        match tb.get(p) {
            None => diffs.push(format!("{p}: only in the first ({n:?})")),
            Some(m) if m != n => diffs.push(format!("{p}: {n:?} vs {m:?}")),
            Some(_) => {}
        }
    }
    for (p, m) in tb {
        if !ta.contains_key(p) {
            diffs.push(format!("{p}: only in the second ({m:?})"));
        }
    }
    diffs.truncate(20);
    Err(diffs.join("; "))
}

/// `Ok` if the file at `p` holds exactly `want`.
pub fn has_content(p: &Path, want: &[u8]) -> Result<(), String> {
    match fs::read(p) {
        Ok(b) if b == want => Ok(()),
        Ok(b) => Err(format!("{} holds {}", p.display(), describe(&b))),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

/// `Ok` if nothing is at `p`.
pub fn absent(p: &Path) -> Result<(), String> {
    match fs::symlink_metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", p.display())),
        Ok(_) => Err(format!("{} exists", p.display())),
    }
}

/// Names in directory `dir` (empty if it does not exist).
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every regular file below `dir` (recursively) with its content.
pub fn files_below(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        match fs::symlink_metadata(&p) {
            Ok(md) if md.is_dir() => out.extend(files_below(&p)),
            Ok(md) if md.is_file() => {
                if let Ok(b) = fs::read(&p) {
                    out.push((p, b));
                }
            }
            _ => {}
        }
    }
    out
}
