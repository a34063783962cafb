//! Helpers for the integration tests (after ripgrep's `tests/util.rs`): a
//! temporary sandbox ([`Dir`]) with file, mode, mtime and symlink helpers, a
//! comparable snapshot of a tree ([`Tree`]), and a wrapper around the real
//! `meshsync` binary ([`Output`]) that gives every test its own `--home`.
//!
//! Every path a helper takes is relative to the sandbox root, and the binary
//! runs with the sandbox root as its working directory, so tests can say
//! `d.sync(&["src", "dst"])`.

// Each test file uses a different subset of the helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// One kibibyte.
pub const KIB: usize = 1024;
/// One mebibyte.
pub const MIB: usize = 1024 * 1024;

/// The prefix of meshsync's temporary files.
pub const TEMP_PREFIX: &str = ".meshsync-tmp-";

/// A temporary sandbox directory, removed when dropped.
pub struct Dir {
    root: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Dir {
    /// A new, empty sandbox named after the test (for readable paths in
    /// failure messages). The state directory is `<root>/home`.
    pub fn new(name: &str) -> Dir {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("meshsync-cli-{name}-"))
            .tempdir()
            .expect("creating a temporary directory");
        // Canonical, so paths in the binary's messages match ours.
        let root = fs::canonicalize(tmp.path()).expect("canonicalizing the sandbox");
        Dir { root, _tmp: tmp }
    }

    /// The sandbox root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `rel` under the sandbox root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The state directory passed as `--home`.
    pub fn home(&self) -> PathBuf {
        self.path("home")
    }

    /// Writes `bytes` to `rel` (parents created). Returns the absolute path.
    pub fn write(&self, rel: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {parent:?}: {e}"));
        }
        fs::write(&p, bytes).unwrap_or_else(|e| panic!("writing {p:?}: {e}"));
        p
    }

    /// Writes `bytes` to `rel` with permission bits `mode` and mtime
    /// `(secs, nanos)`.
    pub fn write_with(
        &self,
        rel: &str,
        bytes: impl AsRef<[u8]>,
        mode: u32,
        mtime: (i64, u32),
    ) -> PathBuf {
        let p = self.write(rel, bytes);
        self.chmod(rel, mode);
        self.set_mtime(rel, mtime);
        p
    }

    /// Creates directory `rel` (and its parents).
    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {p:?}: {e}"));
        p
    }

    /// Makes `rel` a symlink to `target` (stored as given, never resolved).
    pub fn symlink(&self, target: &str, rel: &str) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {parent:?}: {e}"));
        }
        std::os::unix::fs::symlink(target, &p)
            .unwrap_or_else(|e| panic!("symlink {p:?} -> {target}: {e}"));
        p
    }

    /// Sets the permission bits of `rel`.
    pub fn chmod(&self, rel: &str, mode: u32) {
        let p = self.path(rel);
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {p:?}: {e}"));
    }

    /// Sets the mtime of `rel` (a symlink itself, not its target).
    pub fn set_mtime(&self, rel: &str, (secs, nanos): (i64, u32)) {
        let p = self.path(rel);
        let c = CString::new(p.as_os_str().as_bytes()).expect("no NUL in test paths");
        let times = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            libc::timespec {
                tv_sec: secs as libc::time_t,
                tv_nsec: nanos as libc::c_long,
            },
        ];
        // SAFETY: a valid C string and a two-element timespec array.
        let rc = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        assert_eq!(
            rc,
            0,
            "utimensat {p:?}: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The mtime of `rel` (not following a symlink).
    pub fn mtime(&self, rel: &str) -> (i64, u32) {
        let md = self.lstat(rel);
        (md.mtime(), md.mtime_nsec() as u32)
    }

    /// The permission bits of `rel`.
    pub fn mode(&self, rel: &str) -> u32 {
        self.lstat(rel).permissions().mode() & 0o7777
    }

    /// `lstat` of `rel`.
    pub fn lstat(&self, rel: &str) -> fs::Metadata {
        let p = self.path(rel);
        fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {p:?}: {e}"))
    }

    /// The bytes of file `rel`.
    pub fn read(&self, rel: &str) -> Vec<u8> {
        let p = self.path(rel);
        fs::read(&p).unwrap_or_else(|e| panic!("reading {p:?}: {e}"))
    }

    /// The text of file `rel`.
    pub fn read_string(&self, rel: &str) -> String {
        String::from_utf8(self.read(rel)).expect("UTF-8 test file")
    }

    /// The target of symlink `rel`.
    pub fn read_link(&self, rel: &str) -> String {
        let p = self.path(rel);
        fs::read_link(&p)
            .unwrap_or_else(|e| panic!("readlink {p:?}: {e}"))
            .to_string_lossy()
            .into_owned()
    }

    /// Whether anything (even a dangling symlink) is at `rel`.
    pub fn exists(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.path(rel)).is_ok()
    }

    /// Removes `rel`: a file, a symlink or a whole directory tree.
    pub fn remove(&self, rel: &str) {
        let p = self.path(rel);
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {p:?}: {e}"));
        let r = if md.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        r.unwrap_or_else(|e| panic!("removing {p:?}: {e}"));
    }

    /// Renames `from` to `to` (parents of `to` created).
    pub fn rename(&self, from: &str, to: &str) {
        let t = self.path(to);
        if let Some(parent) = t.parent() {
            fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {parent:?}: {e}"));
        }
        fs::rename(self.path(from), &t).unwrap_or_else(|e| panic!("rename {from} -> {to}: {e}"));
    }

    /// Copies file `from` to `to` with its permissions and mtime (`cp -p`).
    pub fn copy_file(&self, from: &str, to: &str) {
        let bytes = self.read(from);
        let (mode, mtime) = (self.mode(from), self.mtime(from));
        self.write_with(to, bytes, mode, mtime);
    }

    /// Changes the owner of `rel` and everything below it.
    pub fn chown_tree(&self, rel: &str, uid: u32, gid: u32) {
        fn walk(p: &Path, uid: u32, gid: u32) {
            std::os::unix::fs::lchown(p, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {p:?}: {e}"));
            let md = fs::symlink_metadata(p).expect("lstat");
            if md.is_dir() {
                for e in fs::read_dir(p).expect("read_dir") {
                    walk(&e.expect("dir entry").path(), uid, gid);
                }
            }
        }
        walk(&self.path(rel), uid, gid);
    }

    /// Every `.meshsync-tmp-*` file below `rel`, as paths relative to `rel`.
    pub fn temp_files(&self, rel: &str) -> Vec<String> {
        self.tree(rel)
            .0
            .into_keys()
            .filter(|p| p.rsplit('/').next().unwrap_or(p).starts_with(TEMP_PREFIX))
            .collect()
    }

    /// A comparable snapshot of the tree at `rel` (see [`Tree`]).
    pub fn tree(&self, rel: &str) -> Tree {
        Tree::of(&self.path(rel))
    }

    /// A `meshsync` command with this sandbox's `--home`, run in the
    /// sandbox root.
    pub fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_meshsync"));
        c.current_dir(&self.root)
            .arg("--home")
            .arg(self.home())
            .env_remove("MESHSYNC_HOME")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        c
    }

    /// Runs `meshsync <args>`.
    pub fn run(&self, args: &[&str]) -> Output {
        Output::of(self.command().args(args))
    }

    /// Runs `meshsync sync <args> --no-progress`.
    pub fn sync(&self, args: &[&str]) -> Output {
        Output::of(self.command().arg("sync").args(args).arg("--no-progress"))
    }

    /// Runs `meshsync sync <args> --no-progress --json`.
    pub fn sync_json(&self, args: &[&str]) -> Output {
        let out = Output::of(
            self.command()
                .arg("sync")
                .args(args)
                .args(["--no-progress", "--json"]),
        );
        assert!(
            out.json.is_some(),
            "expected a JSON summary on stdout\n{out}"
        );
        out
    }

    /// Runs `meshsync sync <args> --no-progress --json` as user `uid` (the
    /// test must run as root; groups are dropped too). An error when the
    /// process cannot be started as that user.
    pub fn sync_json_as(&self, uid: u32, args: &[&str]) -> std::io::Result<Output> {
        let mut c = self.command();
        c.uid(uid)
            .gid(uid)
            .arg("sync")
            .args(args)
            .args(["--no-progress", "--json"]);
        Ok(Output::from_output(c.output()?))
    }

    /// Starts `meshsync sync <args> --no-progress --json` without waiting.
    pub fn spawn_sync(&self, args: &[&str]) -> Child {
        self.command()
            .arg("sync")
            .args(args)
            .args(["--no-progress", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting meshsync")
    }
}

impl Drop for Dir {
    /// Makes every directory writable again so the sandbox can be removed
    /// even after a test made parts of it unreadable (and was not root).
    fn drop(&mut self) {
        fn open_up(p: &Path) {
            let Ok(md) = fs::symlink_metadata(p) else {
                return;
            };
            if !md.is_dir() {
                return;
            }
            let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o755));
            if let Ok(entries) = fs::read_dir(p) {
                for e in entries.flatten() {
                    open_up(&e.path());
                }
            }
        }
        open_up(&self.root);
    }
}

/// What a run of the binary printed and returned.
pub struct Output {
    /// The exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Standard output parsed as JSON, if it is JSON.
    pub json: Option<serde_json::Value>,
}

impl Output {
    /// Runs `cmd` to completion.
    pub fn of(cmd: &mut Command) -> Output {
        let out = cmd.output().expect("running meshsync");
        Output::from_output(out)
    }

    /// Wraps a finished process's output.
    pub fn from_output(out: std::process::Output) -> Output {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let json = serde_json::from_str(&stdout).ok();
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout,
            stderr,
            json,
        }
    }

    /// Panics (showing everything printed) unless the exit code is `code`.
    #[track_caller]
    pub fn code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit code\n{self}");
        self
    }

    /// Shorthand for `code(0)`.
    #[track_caller]
    pub fn ok(&self) -> &Self {
        self.code(0)
    }

    /// The JSON summary.
    #[track_caller]
    pub fn json(&self) -> &serde_json::Value {
        self.json
            .as_ref()
            .unwrap_or_else(|| panic!("no JSON on stdout\n{self}"))
    }

    /// A numeric field of the JSON summary.
    #[track_caller]
    pub fn num(&self, key: &str) -> u64 {
        self.json()[key]
            .as_u64()
            .unwrap_or_else(|| panic!("JSON field {key} is not a number\n{self}"))
    }

    /// A list-of-strings field of the JSON summary.
    #[track_caller]
    pub fn list(&self, key: &str) -> Vec<String> {
        self.json()[key]
            .as_array()
            .unwrap_or_else(|| panic!("JSON field {key} is not a list\n{self}"))
            .iter()
            .map(|v| v.as_str().expect("a string").to_string())
            .collect()
    }

    /// Panics unless stderr contains every one of `needles`.
    #[track_caller]
    pub fn stderr_has(&self, needles: &[&str]) -> &Self {
        for n in needles {
            assert!(self.stderr.contains(n), "stderr lacks {n:?}\n{self}");
        }
        self
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit code: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// One entry of a [`Tree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A regular file: its content (text if short, else length and a
    /// digest), permission bits and mtime.
    File {
        /// The content, described.
        content: String,
        /// `mode & 0o7777`.
        mode: u32,
        /// `(secs, nanos)`.
        mtime: (i64, u32),
    },
    /// A directory and its permission bits.
    Dir {
        /// `mode & 0o7777`.
        mode: u32,
    },
    /// A symlink and its target, as stored.
    Symlink {
        /// The link text.
        target: String,
    },
    /// Anything else (fifo, socket, device).
    Other,
}

/// A snapshot of a tree: every path below the root (relative, `/`-separated)
/// with what it is. The `.meshsync` marker directory at the root is left out;
/// temporary files are kept, so a leftover one shows up in comparisons.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree(pub BTreeMap<String, Node>);

impl Tree {
    /// Reads the tree at `root` (which must be a directory).
    pub fn of(root: &Path) -> Tree {
        let mut t = Tree::default();
        walk(root, "", &mut t.0);
        t
    }

    /// The paths, in order.
    pub fn paths(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }

    /// The entry at `path`.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.0.get(path)
    }
}

fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Node>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {dir:?}: {e}"));
    for e in entries {
        let e = e.expect("dir entry");
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
        let md = fs::symlink_metadata(&p).expect("lstat");
        let mode = md.permissions().mode() & 0o7777;
        let ft = md.file_type();
        let node = if ft.is_file() {
            let bytes = fs::read(&p).unwrap_or_else(|e| panic!("reading {p:?}: {e}"));
            Node::File {
                content: describe(&bytes),
                mode,
                mtime: (md.mtime(), md.mtime_nsec() as u32),
            }
        } else if ft.is_dir() {
            walk(&p, &rel, out);
            Node::Dir { mode }
        } else if ft.is_symlink() {
            Node::Symlink {
                target: fs::read_link(&p)
                    .expect("readlink")
                    .to_string_lossy()
                    .into_owned(),
            }
        } else {
            Node::Other
        };
        out.insert(rel, node);
    }
}

/// Short text as itself; anything else as its length and a digest.
fn describe(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if bytes.len() <= 64 => format!("{s:?}"),
        _ => {
            // FNV-1a: stable and good enough to tell test files apart.
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            format!("{} bytes, fnv {h:016x}", bytes.len())
        }
    }
}

/// `len` pseudo-random bytes from `seed` (xorshift64*: incompressible
/// enough that no two chunks of a test file are equal).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Whether the tests run as root (then permission bits do not stop reads,
/// and tmpfs can be mounted).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A tmpfs mounted for the life of the guard; unmounted on drop, panics
/// included.
pub struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    /// Mounts a tmpfs of `size` (e.g. `"2m"`) on the existing directory `path`.
    pub fn new(path: &Path, size: &str) -> std::io::Result<TmpfsMount> {
        let target = CString::new(path.as_os_str().as_bytes()).expect("no NUL");
        let data = CString::new(format!("size={size},mode=0755")).expect("no NUL");
        // SAFETY: valid C strings; tmpfs takes its options as a C string.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        if rc == 0 {
            Ok(TmpfsMount { path: path.into() })
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let target = CString::new(self.path.as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: a valid C string; MNT_DETACH so a busy mount still goes.
        let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            eprintln!(
                "warning: could not unmount {:?}: {}",
                self.path,
                std::io::Error::last_os_error()
            );
        }
    }
}
