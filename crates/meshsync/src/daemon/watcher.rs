//! The file-system watcher: an inotify watch on every directory of each
//! folder's tree (except its `.meshsync`), reporting the paths that may
//! have changed, so the daemon knows when to scan.
//!
//! Written on the `inotify` crate rather than taken from `notify`: notify 8
//! always adds `IN_OPEN` to its watches, so every file anyone opens in a
//! folder queued an event, every chunk this daemon served to a peer among
//! them, and the opens of 20,000 files can overflow the kernel's queue
//! (16,384 events by default), which costs a full scan. These watches ask
//! only for changes: creates, deletes, writes, metadata, closes after
//! writing, and moves. Reads are silent. Measured on a `small` pull
//! (`bench/p2p-quick.sh`, three runs each), the serving daemon's CPU fell
//! from 1.9–2.2 s to 1.4–1.6 s, and the time from 3.1–3.9 s to 2.6–2.9 s.
//!
//! A directory that appears (made, or moved in) is watched at once, with
//! everything below it. Files made in it before its watch was added raise
//! no event of their own, but the directory's path is reported: it is not
//! in the index, so the daemon scans the folder, and finds them.
//!
//! Paths are reported in batches, one per read of the kernel's queue, and
//! the reader pauses [`COALESCE`] after each, so that a burst (a pull
//! renaming 20,000 files into place) makes a few dozen reports, not one
//! thread wake-up and one message per event. A lone change is still
//! reported at once.
//!
//! Lost events are reported as the empty path, which asks the daemon for a
//! full scan of every folder: the kernel's queue overflowed, a watch could
//! not be added (the per-user limit, `fs.inotify.max_user_watches`), or
//! reading events failed.
//!
//! Must never follow a symlink (watches are added with `IN_DONT_FOLLOW`
//! and `IN_ONLYDIR`, the walk goes by directory entries' own types) nor
//! watch a folder's `.meshsync` (every chunk written to a partial download
//! would raise an event).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};

/// How long the reader waits after a batch before it reads again.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(20);

/// What every directory is watched for: changes, never reads.
const WATCHED: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MODIFY)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::DONT_FOLLOW)
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::EXCL_UNLINK);

/// Watches folder trees and reports changed paths to a callback, from a
/// thread of its own. (A watcher dropped without a single watch leaves that
/// thread waiting until the process ends.)
pub struct TreeWatcher {
    shared: Arc<Shared>,
}

struct Shared {
    watches: Mutex<Watches>,
    /// The watched directories, by watch descriptor number.
    dirs: Mutex<HashMap<i32, (PathBuf, WatchDescriptor)>>,
    /// Directories never watched (each folder's `.meshsync`).
    excluded: Mutex<Vec<PathBuf>>,
    report: Box<dyn Fn(Vec<PathBuf>) + Send + Sync>,
    stopping: AtomicBool,
}

impl TreeWatcher {
    /// Starts the watcher; `report` gets, in batches, every path that may
    /// have changed
    /// (the empty path: events were lost).
    pub fn start(report: impl Fn(Vec<PathBuf>) + Send + Sync + 'static) -> io::Result<TreeWatcher> {
        let inotify = Inotify::init()?;
        let shared = Arc::new(Shared {
            watches: Mutex::new(inotify.watches()),
            dirs: Mutex::default(),
            excluded: Mutex::default(),
            report: Box::new(report),
            stopping: AtomicBool::new(false),
        });
        let reader = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("meshsync-watch".into())
            .spawn(move || read_events(inotify, &reader))?;
        Ok(TreeWatcher { shared })
    }

    /// Watches `root` and every directory below it, except
    /// `root/.meshsync`.
    pub fn watch(&self, root: &Path) {
        self.shared
            .excluded
            .lock()
            .expect("poisoned")
            .push(root.join(meshsync_core::path::META_DIR));
        self.shared.watch_tree(root);
    }
}

impl Drop for TreeWatcher {
    /// Removing the watches wakes the reader (one `IN_IGNORED` each), which
    /// then stops.
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let all: Vec<WatchDescriptor> = self
            .shared
            .dirs
            .lock()
            .expect("poisoned")
            .values()
            .map(|(_, wd)| wd.clone())
            .collect();
        self.shared.remove(all);
    }
}

fn read_events(mut inotify: Inotify, shared: &Shared) {
    // Blocking reads: the flag is cleared once here, not around every read
    // as `read_events_blocking` does (four `fcntl` calls a wake-up).
    let fd = std::os::fd::AsRawFd::as_raw_fd(&inotify);
    // SAFETY: fcntl on a descriptor `inotify` owns and keeps open.
    let blocking = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags != -1 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) != -1
    };
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = if blocking {
            inotify.read_events(&mut buffer)
        } else {
            inotify.read_events_blocking(&mut buffer)
        };
        let events = match read {
            Ok(events) => events,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(
                    "file-system notifications stopped: {e}; relying on periodic rescans"
                );
                (shared.report)(vec![PathBuf::new()]);
                return;
            }
        };
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let batch: Vec<PathBuf> = events
            .filter_map(|event| {
                shared.handle(event.wd.get_watch_descriptor_id(), event.mask, event.name)
            })
            .collect();
        if !batch.is_empty() {
            (shared.report)(batch);
        }
        std::thread::sleep(COALESCE);
    }
}

impl Shared {
    /// One event from the watch `id`: the path to report, if any.
    fn handle(&self, id: i32, mask: EventMask, name: Option<&OsStr>) -> Option<PathBuf> {
        if mask.contains(EventMask::Q_OVERFLOW) {
            return Some(PathBuf::new());
        }
        if mask.contains(EventMask::IGNORED) {
            // The watch is gone (its directory deleted, or unwatched).
            self.dirs.lock().expect("poisoned").remove(&id);
            return None;
        }
        let dir = self
            .dirs
            .lock()
            .expect("poisoned")
            .get(&id)
            .map(|(dir, _)| dir.clone())?;
        let path = match name {
            Some(name) => dir.join(name),
            None => dir,
        };
        if mask.contains(EventMask::ISDIR) {
            if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                self.watch_tree(&path);
            } else if mask.contains(EventMask::MOVED_FROM) {
                // Moved out, or elsewhere in the tree (its MOVED_TO then
                // watches it under its new name).
                self.unwatch_tree(&path);
            }
        }
        Some(path)
    }

    /// Watches `top` and the directories below it.
    fn watch_tree(&self, top: &Path) {
        let mut todo = vec![top.to_path_buf()];
        // Directories the kernel would not watch, and its first reason (one
        // warning for a whole tree: past `fs.inotify.max_user_watches`
        // every directory fails alike).
        let mut refused: Option<(usize, io::Error)> = None;
        while let Some(dir) = todo.pop() {
            if self.excluded.lock().expect("poisoned").contains(&dir) {
                continue;
            }
            let added = self.watches.lock().expect("poisoned").add(&dir, WATCHED);
            match added {
                Ok(wd) => {
                    self.dirs
                        .lock()
                        .expect("poisoned")
                        .insert(wd.get_watch_descriptor_id(), (dir.clone(), wd));
                }
                // Gone already, or not a directory (ONLYDIR): nothing to watch.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                    continue;
                }
                Err(e) => {
                    match refused.as_mut() {
                        Some((count, _)) => *count += 1,
                        None => refused = Some((1, e)),
                    }
                    continue;
                }
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                // The entry's own type: a symlink to a directory is not one.
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    todo.push(entry.path());
                }
            }
        }
        if let Some((count, first)) = refused {
            tracing::warn!(
                "cannot watch {count} director{} in {} ({first}; if that is the \
                 per-user limit, raise fs.inotify.max_user_watches): changes \
                 there are found by full scans",
                if count == 1 { "y" } else { "ies" },
                top.display()
            );
            (self.report)(vec![PathBuf::new()]);
        }
    }

    /// Stops watching `top` and everything below it.
    fn unwatch_tree(&self, top: &Path) {
        let below: Vec<WatchDescriptor> = self
            .dirs
            .lock()
            .expect("poisoned")
            .values()
            .filter(|(dir, _)| dir.starts_with(top))
            .map(|(_, wd)| wd.clone())
            .collect();
        self.remove(below);
    }

    /// Removes watches; their entries go when the kernel confirms
    /// (`IN_IGNORED`).
    fn remove(&self, watches: Vec<WatchDescriptor>) {
        let mut all = self.watches.lock().expect("poisoned");
        for wd in watches {
            let _ = all.remove(wd);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// A folder tree (with a `.meshsync`, a directory and a file, and a
    /// symlink to a directory outside it), watched; and what is reported.
    fn watched() -> (tempfile::TempDir, TreeWatcher, mpsc::Receiver<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("folder");
        std::fs::create_dir_all(root.join(".meshsync/partial")).unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/old"), b"old").unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("a/link")).unwrap();
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let watcher = TreeWatcher::start(move |paths| {
            for path in paths {
                let _ = tx.lock().unwrap().send(path);
            }
        })
        .unwrap();
        watcher.watch(&root);
        (dir, watcher, rx)
    }

    /// What is reported until nothing more comes for a while.
    fn reported(rx: &mpsc::Receiver<PathBuf>) -> Vec<PathBuf> {
        let mut paths = Vec::new();
        while let Ok(path) = rx.recv_timeout(Duration::from_millis(300)) {
            paths.push(path);
        }
        paths
    }

    #[test]
    fn changes_are_reported_and_reads_are_not() {
        let (dir, _watcher, rx) = watched();
        let root = dir.path().join("folder");
        let old = root.join("a/b/old");
        // Reads, as a scan or a peer's chunk requests make them.
        assert_eq!(std::fs::read(&old).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(root.join("a")).unwrap().count(), 2);
        // Writes where nothing is watched.
        std::fs::write(root.join(".meshsync/partial/p"), b"chunk").unwrap();
        std::fs::write(dir.path().join("outside/f"), b"elsewhere").unwrap();
        assert_eq!(reported(&rx), Vec::<PathBuf>::new());

        std::fs::write(&old, b"new").unwrap();
        assert!(reported(&rx).contains(&old));
        std::fs::rename(&old, root.join("a/moved")).unwrap();
        let moved = reported(&rx);
        assert!(moved.contains(&old) && moved.contains(&root.join("a/moved")));
    }

    #[test]
    fn a_new_directory_is_watched_with_everything_below_it() {
        let (dir, _watcher, rx) = watched();
        let root = dir.path().join("folder");
        std::fs::create_dir_all(root.join("n/m")).unwrap();
        assert!(reported(&rx).contains(&root.join("n")));
        std::fs::write(root.join("n/m/f"), b"1").unwrap();
        assert!(reported(&rx).contains(&root.join("n/m/f")));
        // Moved within the tree: reported under its new name after.
        std::fs::rename(root.join("n"), root.join("a/n2")).unwrap();
        reported(&rx);
        std::fs::write(root.join("a/n2/m/g"), b"2").unwrap();
        let mut after = reported(&rx);
        after.dedup();
        assert_eq!(after, vec![root.join("a/n2/m/g")]);
    }

    #[test]
    fn an_overflowed_queue_asks_for_a_full_scan() {
        let (_dir, watcher, _rx) = watched();
        // The read loop reports what `handle` returns, in the batch of its read.
        let asked = watcher.shared.handle(-1, EventMask::Q_OVERFLOW, None);
        assert_eq!(asked, Some(PathBuf::new()));
    }
}
