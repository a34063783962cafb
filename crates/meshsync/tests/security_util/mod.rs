//! Helpers for `tests/security.rs`: raw protocol bytes an honest peer would
//! never send (postcard spelled by hand, proofs and signatures made from
//! the key material, as an attacker holding that material could), an
//! allocation meter, and process control for races made deterministic
//! (freeze a daemon or a sync with SIGSTOP at a chosen moment, found by
//! inotify or polling; or block a sync inside its `open` of a file with a
//! file lease).
//!
//! Every process signalled here is one the test started itself (found by
//! its unique `--home` or by its `Child`).

// Not every test uses every helper.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use meshsync_core::ids::{DeviceId, ShareId};
use meshsync_core::keys::{DataKey, ReadWriteKey, sign_batch};

// ---------------------------------------------------------------------------
// Raw protocol bytes

/// Unsigned LEB128, as postcard writes integers.
pub fn varint(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// What a raw entry is.
#[derive(Debug, Clone)]
pub enum RawKind {
    /// A directory (no content).
    Dir,
    /// A symlink to the target bytes.
    Symlink(Vec<u8>),
}

/// One `FileEntry` in postcard, with any bytes as its path: a live
/// directory or symlink, mtime 1700000000.0, version {2: 1}, sequence 1.
pub fn raw_entry(path: &[u8], kind: &RawKind) -> Vec<u8> {
    let mut e = Vec::new();
    varint(path.len() as u64, &mut e);
    e.extend_from_slice(path);
    match kind {
        RawKind::Dir => e.extend_from_slice(&[1, 0]),
        RawKind::Symlink(_) => e.extend_from_slice(&[2, 0]),
    }
    varint(1_700_000_000 << 1, &mut e); // secs, zigzag
    e.push(0); // nanos
    varint(0o755, &mut e);
    match kind {
        RawKind::Dir => e.push(0),
        RawKind::Symlink(target) => {
            e.push(1);
            let target = &target[..];
            varint(target.len() as u64, &mut e);
            e.extend_from_slice(target);
        }
    }
    e.push(0); // no content
    e.extend_from_slice(&[1, 2, 1]); // version: one pair, device 2, counter 1
    e.push(0); // live
    e.push(1); // sequence 1
    e
}

/// The label that starts a signed batch payload (docs/protocol.md).
const BATCH_PAYLOAD_LABEL: &[u8; 32] = b"meshsync v1 index batch payload\0";

/// A framed IndexBatch (sequences 1..=1, not complete) holding the raw
/// `entry`, signed as `author` would with `signer` for `share` and index
/// generation `index_id` when `signer` is given, else unsigned.
pub fn raw_batch_frame(
    share: ShareId,
    entry: &[u8],
    signer: Option<(&ReadWriteKey, DeviceId, u64)>,
) -> Vec<u8> {
    let (first, last, complete) = (1u64, 1u64, false);
    let mut body = Vec::new();
    varint(first, &mut body);
    varint(last, &mut body);
    body.push(u8::from(complete));
    body.push(1); // one entry
    body.extend_from_slice(entry);

    let mut message = vec![6u8]; // IndexBatch
    message.extend_from_slice(share.as_bytes());
    message.extend_from_slice(&body);
    match signer {
        Some((key, author, index_id)) => {
            // payload = label ‖ postcard(author, share, index_id, first,
            // last, complete, entries): the fields of the message itself.
            let mut payload = BATCH_PAYLOAD_LABEL.to_vec();
            payload.extend_from_slice(author.as_bytes());
            payload.extend_from_slice(share.as_bytes());
            varint(index_id, &mut payload);
            payload.extend_from_slice(&body);
            let signature = sign_batch(key, last, &payload);
            message.push(1);
            message.extend_from_slice(&signature.to_bytes());
        }
        None => message.push(0),
    }
    frame(&message)
}

/// A DownloadProgress frame for `share` naming the raw `path`.
pub fn raw_progress_frame(share: ShareId, path: &[u8]) -> Vec<u8> {
    let mut message = vec![7u8];
    message.extend_from_slice(share.as_bytes());
    varint(path.len() as u64, &mut message);
    message.extend_from_slice(path);
    message.extend_from_slice(&[1, 2]);
    frame(&message)
}

/// `u32` big-endian length, then `payload`.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// The read proof of docs/keys.md ("Proofs"), computed here by hand from
/// the data key, independently of `DataKey::prove_read`.
pub fn read_proof(data_key: &DataKey, role_byte: u8, binding: &[u8; 32]) -> [u8; 32] {
    let key = blake3::derive_key("meshsync v1 folder read proof key", data_key.as_bytes());
    let mut mac = blake3::Hasher::new_keyed(&key);
    mac.update(b"meshsync v1 read proof\0");
    mac.update(&[role_byte]);
    mac.update(binding);
    *mac.finalize().as_bytes()
}

// ---------------------------------------------------------------------------
// Allocation meter

thread_local! {
    static METERING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// The system allocator, counting (per thread, while [`metered`] runs) the
/// largest single allocation and the peak of bytes held.
pub struct MeteredAlloc;

fn note_alloc(size: usize) {
    let _ = METERING.try_with(|on| {
        if on.get() {
            LARGEST.with(|l| l.set(l.get().max(size)));
            LIVE.with(|live| {
                let now = live.get() + size as isize;
                live.set(now);
                PEAK.with(|p| p.set(p.get().max(now)));
            });
        }
    });
}

fn note_free(size: usize) {
    let _ = METERING.try_with(|on| {
        if on.get() {
            LIVE.with(|live| live.set(live.get() - size as isize));
        }
    });
}

// SAFETY: every call is passed to `System` unchanged; the bookkeeping only
// touches const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for MeteredAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_free(layout.size());
        note_alloc(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// What [`metered`] saw.
#[derive(Debug, Clone, Copy)]
pub struct Allocations {
    /// The largest single allocation (or reallocation), in bytes.
    pub largest: usize,
    /// The most bytes held at once, above what was held at the start.
    pub peak: usize,
}

/// Runs `f` on this thread, measuring its allocations (only this thread's;
/// tests run in parallel on others). Requires [`MeteredAlloc`] to be the
/// global allocator.
pub fn metered<T>(f: impl FnOnce() -> T) -> (T, Allocations) {
    LARGEST.with(|l| l.set(0));
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    METERING.with(|m| m.set(true));
    let out = f();
    METERING.with(|m| m.set(false));
    let allocations = Allocations {
        largest: LARGEST.with(Cell::get),
        peak: PEAK.with(Cell::get).max(0) as usize,
    };
    (out, allocations)
}

// ---------------------------------------------------------------------------
// Processes and timing

/// The pid of the `meshsync --home HOME run` daemon the test started.
pub fn daemon_pid(home: &Path) -> i32 {
    let home = home.as_os_str().as_bytes();
    for entry in fs::read_dir("/proc").expect("reading /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let runs_here = args.windows(2).any(|w| w[0] == b"--home" && w[1] == home)
            && args.iter().any(|a| *a == b"run");
        if runs_here {
            return pid;
        }
    }
    panic!(
        "no daemon runs with --home {}",
        String::from_utf8_lossy(home)
    );
}

/// A process frozen with SIGSTOP; SIGCONT when dropped (panics included).
pub struct Frozen(i32);

impl Frozen {
    /// Freezes `pid` (a process this test started).
    pub fn new(pid: i32) -> Frozen {
        // SAFETY: kill(2) on a pid of our own; no memory involved.
        let rc = unsafe { libc::kill(pid, libc::SIGSTOP) };
        assert_eq!(rc, 0, "SIGSTOP {pid}: {}", std::io::Error::last_os_error());
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe {
            libc::kill(self.0, libc::SIGCONT);
        }
    }
}

/// Polls `check` every millisecond until it is true or `timeout` passes.
pub fn poll_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    check()
}

/// Names of the entries of `dir` (none if it does not exist).
pub fn entries(dir: &Path) -> Vec<String> {
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

/// An inotify watch for files created in one directory.
pub struct CreateWatch {
    fd: OwnedFd,
}

impl CreateWatch {
    /// Watches `dir` (which must exist) for IN_CREATE.
    pub fn new(dir: &Path) -> CreateWatch {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = CString::new(dir.as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: a valid descriptor and C string.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), libc::IN_CREATE) };
        assert!(wd >= 0, "inotify_add_watch {}", dir.display());
        CreateWatch { fd }
    }

    /// Waits up to `timeout` for a file whose name starts with `prefix`;
    /// false if none came (or `gave_up` says to stop waiting).
    pub fn wait_for(
        &self,
        prefix: &str,
        timeout: Duration,
        mut gave_up: impl FnMut() -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, 100) };
            if n <= 0 {
                if gave_up() {
                    return false;
                }
                continue;
            }
            // SAFETY: reading into a buffer we own, within its length.
            let len =
                unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if len <= 0 {
                continue;
            }
            let header = std::mem::size_of::<libc::inotify_event>();
            let mut at = 0usize;
            while at + header <= len as usize {
                let name_len =
                    u32::from_ne_bytes(buf[at + 12..at + 16].try_into().expect("4 bytes")) as usize;
                let name = &buf[at + header..at + header + name_len];
                let name = name.split(|b| *b == 0).next().unwrap_or_default();
                if name.starts_with(prefix.as_bytes()) {
                    return true;
                }
                at += header + name_len;
            }
        }
        false
    }
}

/// One HTTP/1.1 request to `addr` (a loopback API) over a plain socket,
/// with exactly the headers given: status code and body.
pub fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use std::io::{Read, Write};
    assert!(addr.ip().is_loopback(), "tests talk to loopback only");
    let mut stream = std::net::TcpStream::connect(addr).expect("connecting to the API");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let body = if method == "POST" { "{}" } else { "" };
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).expect("sending");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A write lease (`fcntl(F_SETLEASE)`) held on a file: another process's
/// `open` of it blocks until the lease is released, which pins that process
/// at a known point (just after its `open` call started) as long as the
/// test needs. Needs the file's owner (or root).
pub struct Lease {
    file: fs::File,
}

impl Lease {
    /// Takes a write lease on `path` (which nobody else may have open).
    pub fn take(path: &Path) -> Lease {
        // The kernel tells the holder of a lease that is being broken with
        // SIGIO, whose default action ends the process; polling is enough.
        // SAFETY: installing SIG_IGN has no memory effects.
        unsafe {
            libc::signal(libc::SIGIO, libc::SIG_IGN);
        }
        let file = fs::File::open(path).expect("opening the leased file");
        // SAFETY: fcntl on a descriptor we own.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_WRLCK) };
        assert_eq!(
            rc,
            0,
            "F_SETLEASE on {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        Lease { file }
    }

    /// Whether another process is blocked opening the file.
    pub fn breaking(&self) -> bool {
        // SAFETY: fcntl on a descriptor we own. While a break is pending,
        // F_GETLEASE reports the type the lease is being broken to.
        let kind = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_GETLEASE) };
        kind != libc::F_WRLCK
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // SAFETY: as above; releasing lets the blocked open go on.
        unsafe {
            libc::fcntl(self.file.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK);
        }
    }
}
