//! Crash-safe writes into a folder.
//!
//! A file is never written in place. New content goes to a temporary file
//! (`.meshsync-tmp-…`, exclusive create, no symlink followed) in the target's
//! own directory; permissions and mtime are set on it; the data is made
//! durable; only then is it renamed over the target, and only if the target
//! is still what the plan saw (otherwise the write is refused: a change made
//! during the sync is never overwritten). A crash at any point leaves the old
//! file or the new one, plus at worst a temporary file that the next run
//! removes ([`remove_stale_temps`]).
//!
//! Durability is batched: callers write many temporary files, call
//! [`sync_filesystem`] once (one `syncfs(2)` flushes every one of them), then
//! rename them all. Renames need no flush of their own to be safe: before the
//! final flush a crash leaves the old files, after it the new ones.
//!
//! Parent directories are checked component by component: a path whose
//! parent is a symlink is refused, so nothing is ever written through a link
//! out of the folder.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use meshsync_core::entry::Timestamp;
use meshsync_core::path::{META_DIR, TEMP_PREFIX};

use crate::db::StoredEntry;
use crate::scan::Observed;

/// Why a write did not happen. Every variant names the path concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The file system is full (or over quota); the temporary file was
    /// removed and the target left untouched.
    #[error("{path}: no space left on the destination; nothing was replaced")]
    DiskFull {
        /// The file being written.
        path: PathBuf,
    },
    /// The target changed since it was scanned: not overwritten.
    #[error(
        "{path}: changed since it was scanned; left as it is (sync again to pick up the change)"
    )]
    TargetChanged {
        /// The target.
        path: PathBuf,
    },
    /// The source changed or vanished while it was being copied.
    #[error("{path}: changed or vanished while being copied; skipped (sync again)")]
    SourceChanged {
        /// The source file.
        path: PathBuf,
    },
    /// A parent of the target is a symlink or not a directory.
    #[error("{path}: a parent directory is a symlink or a file; refusing to write through it")]
    UnsafeParent {
        /// The target.
        path: PathBuf,
    },
    /// The assembled file did not hash to the expected content.
    #[error("{path}: written content does not match its hash; target left untouched")]
    Verify {
        /// The target.
        path: PathBuf,
    },
    /// Any other I/O failure.
    #[error("{path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl WriteError {
    /// Wraps an I/O error, recognising a full disk.
    pub fn io(path: &Path, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => WriteError::DiskFull { path: path.into() },
            _ => WriteError::Io {
                path: path.into(),
                source,
            },
        }
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary-file name: the process id (read once: `getpid` is a
/// system call per file otherwise) and a counter.
fn temp_name() -> String {
    static PID: OnceLock<u32> = OnceLock::new();
    format!(
        "{TEMP_PREFIX}{}-{}",
        PID.get_or_init(std::process::id),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Files smaller than this are neither preallocated nor read with
/// sequential-access advice: both are a system call each and gain nothing
/// for a file written or read in one go.
pub const SMALL_FILE: u64 = 1 << 20;

/// A temporary file being filled; removed on drop unless committed.
pub struct TempFile {
    file: Option<File>,
    /// The target's directory, opened once: the temporary file is created
    /// and renamed relative to it, so a parent swapped for a symlink after
    /// the check cannot redirect the write. Shared by the temporary files
    /// of one directory, so a batch holds one descriptor per directory.
    dir: Arc<File>,
    temp_name: CString,
    target_name: CString,
    target: PathBuf,
    committed: bool,
}

impl TempFile {
    /// Creates a temporary file beside `target`, whose parent is taken as
    /// given (links in that path are followed: it is what the user named).
    pub fn beside(target: &Path) -> Result<Self, WriteError> {
        let parent = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = File::options()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(parent)
            .map_err(|e| WriteError::io(target, e))?;
        Self::in_dir(Arc::new(dir), target)
    }

    /// Creates a temporary file beside `target` in `dir`, the target's
    /// directory, already opened (by [`open_dir_nofollow`]).
    pub fn in_dir(dir: Arc<File>, target: &Path) -> Result<Self, WriteError> {
        let temp_name = CString::new(temp_name()).expect("no NUL");
        let target_name = CString::new(target.file_name().expect("a target has a name").as_bytes())
            .map_err(|_| WriteError::UnsafeParent {
                path: target.into(),
            })?;
        let file = open_in_dir(&dir, &temp_name, libc::O_CREAT | libc::O_EXCL)
            .map_err(|e| WriteError::io(target, e))?;
        Ok(TempFile {
            file: Some(file),
            dir,
            temp_name,
            target_name,
            target: target.into(),
            committed: false,
        })
    }

    /// Reserves `size` bytes for the file up front, so a file that cannot fit
    /// fails at once, before it has used up space other files need.
    /// Files under [`SMALL_FILE`] are not reserved: their one write fails
    /// as soon.
    pub fn preallocate(&mut self, size: u64) -> Result<(), WriteError> {
        if size < SMALL_FILE {
            return Ok(());
        }
        let fd = self.file().as_raw_fd();
        // SAFETY: a valid descriptor; mode 0 allocates and extends the size.
        let rc = unsafe { libc::fallocate(fd, 0, 0, size as libc::off_t) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // Not supported here: write without reserving.
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) => Ok(()),
            _ => Err(WriteError::io(&self.target, e)),
        }
    }

    /// The open file.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("open until finished")
    }

    /// The target this file will replace.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Sets permissions and mtime and closes the file (no flush yet).
    pub fn finish(&mut self, permissions: u32, mtime: Timestamp) -> Result<(), WriteError> {
        let file = self.file.take().expect("finished once");
        file.set_permissions(fs::Permissions::from_mode(permissions))
            .map_err(|e| WriteError::io(&self.target, e))?;
        set_mtime_fd(&file, mtime).map_err(|e| WriteError::io(&self.target, e))?;
        Ok(())
    }

    /// Renames the temporary file over the target if the target is still as
    /// `expected` says (`None`: it must not exist). Returns the new file's facts.
    pub fn commit(mut self, expected: Option<&StoredEntry>) -> Result<Observed, WriteError> {
        if expected.is_some() {
            check_unchanged(&self.target, expected)?;
        }
        // "Must not exist" is checked by the rename itself, atomically.
        let flags = if expected.is_none() {
            libc::RENAME_NOREPLACE
        } else {
            0
        };
        // SAFETY: a valid directory descriptor and C strings.
        let rc = unsafe {
            libc::renameat2(
                self.dir.as_raw_fd(),
                self.temp_name.as_ptr(),
                self.dir.as_raw_fd(),
                self.target_name.as_ptr(),
                flags,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.kind() == io::ErrorKind::AlreadyExists {
                WriteError::TargetChanged {
                    path: self.target.clone(),
                }
            } else {
                WriteError::io(&self.target, e)
            });
        }
        self.committed = true;
        // Looked up by path, not in `dir`: if the directory was swapped for
        // a link since it was opened, the file is not where it belongs, and
        // this reports it (the rename stayed in the real, moved directory).
        match Observed::of(&self.target) {
            Ok(Some(o)) => Ok(o),
            Ok(None) => Err(WriteError::TargetChanged {
                path: self.target.clone(),
            }),
            Err(e) => Err(WriteError::io(&self.target, e)),
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            // SAFETY: a valid directory descriptor and C string.
            unsafe {
                libc::unlinkat(self.dir.as_raw_fd(), self.temp_name.as_ptr(), 0);
            }
        }
    }
}

/// Fails unless `path` is still exactly as `expected` recorded it (`None`:
/// absent). Inode, size, mtime and ctime must all match.
pub fn check_unchanged(path: &Path, expected: Option<&StoredEntry>) -> Result<(), WriteError> {
    let now = match Observed::of(path) {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(WriteError::io(path, e)),
    };
    let same = match (expected, &now) {
        (None, None) => true,
        (Some(exp), Some(obs)) => obs.matches(exp),
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err(WriteError::TargetChanged { path: path.into() })
    }
}

/// Whether the folder marker (`root/.meshsync`) is there, as a real
/// directory. Without it the folder is not there (an unmounted disk, a
/// deleted folder), and nothing may be written into it or taken from it.
pub fn marker_present(root: &Path) -> bool {
    fs::symlink_metadata(root.join(META_DIR)).is_ok_and(|m| m.is_dir())
}

/// Makes sure `sub` exists below the folder marker (`root/.meshsync/sub`,
/// real directories, missing ones made with `mode`) and returns its path.
/// Never makes the marker itself: creating it would turn an empty, unmounted
/// mount point into a folder whose files all look deleted.
pub fn ensure_meta_dir(root: &Path, sub: &Path, mode: u32) -> Result<PathBuf, WriteError> {
    let marker = root.join(META_DIR);
    match fs::symlink_metadata(&marker) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(WriteError::UnsafeParent { path: marker }),
        Err(e) => return Err(WriteError::io(&marker, e)),
    }
    let rel = Path::new(META_DIR).join(sub);
    ensure_real_dirs(root, &rel, mode)?;
    Ok(root.join(rel))
}

/// Makes sure every directory from `root` down to `dir` (relative, as
/// spelled on disk) exists and is a real directory, creating missing ones
/// with `mode`.
pub fn ensure_real_dirs(root: &Path, dir: &Path, mode: u32) -> Result<(), WriteError> {
    let mut at = root.to_path_buf();
    for component in dir.components() {
        at.push(component);
        match fs::symlink_metadata(&at) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => return Err(WriteError::UnsafeParent { path: at }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .mode(mode)
                    .create(&at)
                    .or_else(|e| {
                        if e.kind() == io::ErrorKind::AlreadyExists {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(|e| WriteError::io(&at, e))?;
                if !fs::symlink_metadata(&at)
                    .map_err(|e| WriteError::io(&at, e))?
                    .is_dir()
                {
                    return Err(WriteError::UnsafeParent { path: at });
                }
            }
            Err(e) => return Err(WriteError::io(&at, e)),
        }
    }
    Ok(())
}

/// Opens directory `rel` below `root`, one component at a time, refusing
/// any component that is a symlink (`O_NOFOLLOW | O_DIRECTORY`): what is
/// opened is really inside the folder, whatever changes meanwhile.
pub fn open_dir_nofollow(root: &Path, rel: &Path) -> Result<File, WriteError> {
    let mut dir = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(root)
        .map_err(|e| WriteError::io(root, e))?;
    for component in rel.components() {
        let name = CString::new(component.as_os_str().as_bytes()).map_err(|_| {
            WriteError::UnsafeParent {
                path: root.join(rel),
            }
        })?;
        // SAFETY: a valid directory descriptor and C string.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ELOOP) | Some(libc::ENOTDIR) => WriteError::UnsafeParent {
                    path: root.join(rel),
                },
                _ => WriteError::io(&root.join(rel), e),
            });
        }
        // SAFETY: a descriptor openat just returned, owned from here on.
        dir = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    }
    Ok(dir)
}

/// Renames `from` to `name` inside the open directory `dir` (never over an
/// existing file when `no_replace`).
pub fn rename_into(
    from: &Path,
    dir: &File,
    name: &std::ffi::OsStr,
    no_replace: bool,
    shown_as: &Path,
) -> Result<(), WriteError> {
    let (a, b) = (
        cstr(from)?,
        CString::new(name.as_bytes()).map_err(|_| WriteError::UnsafeParent {
            path: shown_as.into(),
        })?,
    );
    let flags = if no_replace {
        libc::RENAME_NOREPLACE
    } else {
        0
    };
    // SAFETY: valid C strings and a valid directory descriptor.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            dir.as_raw_fd(),
            b.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(WriteError::io(shown_as, io::Error::last_os_error()))
    }
}

/// Renames `from` to `to` unless `to` exists (never overwrites).
pub fn rename_no_replace(from: &Path, to: &Path) -> Result<(), WriteError> {
    let (a, b) = (cstr(from)?, cstr(to)?);
    // SAFETY: both are valid NUL-terminated paths; AT_FDCWD with absolute or
    // cwd-relative paths is the documented use.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(WriteError::io(to, io::Error::last_os_error()))
    }
}

/// Creates a symlink to `link_target` at `target` atomically (made beside it,
/// then renamed over), if `target` is still as `expected`.
pub fn write_symlink(
    target: &Path,
    link_target: &str,
    mtime: Timestamp,
    expected: Option<&StoredEntry>,
) -> Result<Observed, WriteError> {
    let dir = target.parent().expect("a target has a parent");
    let temp = dir.join(temp_name());
    std::os::unix::fs::symlink(link_target, &temp).map_err(|e| WriteError::io(target, e))?;
    let result = (|| {
        set_mtime_nofollow(&temp, mtime).map_err(|e| WriteError::io(target, e))?;
        check_unchanged(target, expected)?;
        fs::rename(&temp, target).map_err(|e| WriteError::io(target, e))
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    Observed::of(target)
        .map_err(|e| WriteError::io(target, e))?
        .ok_or(WriteError::TargetChanged {
            path: target.into(),
        })
}

/// Flushes every dirty page of the file system holding `path` (`syncfs(2)`).
pub fn sync_filesystem(path: &Path) -> Result<(), WriteError> {
    let f = File::open(path).map_err(|e| WriteError::io(path, e))?;
    // SAFETY: a valid open descriptor.
    let rc = unsafe { libc::syncfs(f.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(WriteError::io(path, io::Error::last_os_error()))
    }
}

/// Sets the mtime of an open file.
pub fn set_mtime_fd(file: &File, mtime: Timestamp) -> io::Result<()> {
    let times = mtime_pair(mtime);
    // SAFETY: valid descriptor and a two-element timespec array.
    let rc = unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the mtime of a path without following a final symlink.
pub fn set_mtime_nofollow(path: &Path, mtime: Timestamp) -> io::Result<()> {
    let c = cstr(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let times = mtime_pair(mtime);
    // SAFETY: valid C string and a two-element timespec array.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn mtime_pair(mtime: Timestamp) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: mtime.secs as libc::time_t,
            tv_nsec: mtime.nanos as libc::c_long,
        },
    ]
}

fn cstr(p: &Path) -> Result<CString, WriteError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| WriteError::Io {
        path: p.into(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })
}

/// Removes temporary files a crashed run left (as found by the scanner);
/// returns how many were removed.
pub fn remove_stale_temps(paths: &[PathBuf]) -> usize {
    paths.iter().filter(|p| fs::remove_file(p).is_ok()).count()
}

/// Opens `name` in the open directory `dir` for reading and writing, never
/// through a symlink; `extra` adds flags (`O_CREAT | O_EXCL` makes it, mode
/// 0600).
pub(crate) fn open_in_dir(
    dir: &File,
    name: &std::ffi::CStr,
    extra: libc::c_int,
) -> io::Result<File> {
    // SAFETY: a valid directory descriptor and C string.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC | extra,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor openat just returned, owned from here on.
    Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Bytes written to a file being assembled between requests to start
/// writing them back (so the batch's final `syncfs` finds little left to
/// do).
pub(crate) const WRITEBACK_STEP: u64 = 8 << 20;

/// Asks the kernel to start writing a range back to disk now, without
/// waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`; `len` 0: to the end):
/// large files are then written while the rest is still arriving.
/// Durability still comes from the batch's `syncfs`.
pub(crate) fn start_writeback(f: &File, offset: u64, len: u64) {
    // SAFETY: a valid descriptor; the call only schedules I/O.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}
