//! Carrying out one planned action on one folder on this disk.
//!
//! Both `meshsync sync` (two local trees) and the daemon (this folder
//! against the swarm) use these: each takes the absolute path, what the scan
//! saw there (`expected`: the action is refused if the disk moved on), and
//! returns the new facts of the path so the caller can record them.
//!
//! Also here: [`Assembly`], a file put together from chunks that arrive in
//! any order (from local files or from peers), verified chunk by chunk, kept
//! under `.meshsync/partial/` so an interrupted download resumes, and
//! renamed into place only when complete.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use meshsync_core::entry::{ChunkRef, Content, FileEntry, FileKind};
use meshsync_core::ids::Hash;

use crate::chunkmap::ChunkReader;
use crate::db::StoredEntry;
use crate::scan::Observed;
use crate::write::{self, WriteError};

/// Renames the losing copy of a conflict to its conflict name (never over an
/// existing file), if it is still what the scan saw.
pub fn keep_conflict_copy(
    from: &Path,
    to: &Path,
    expected: Option<&StoredEntry>,
) -> Result<Observed, WriteError> {
    write::check_unchanged(from, expected)?;
    write::rename_no_replace(from, to)?;
    observe(to)
}

/// Creates a directory (or accepts an existing one) with `mode`.
pub fn make_dir(abs: &Path, mode: u32) -> Result<Observed, WriteError> {
    match fs::DirBuilder::new().mode(mode).create(abs) {
        Ok(()) => {}
        Err(e)
            if e.kind() == io::ErrorKind::AlreadyExists
                && fs::symlink_metadata(abs).is_ok_and(|m| m.is_dir()) => {}
        Err(e) => return Err(WriteError::io(abs, e)),
    }
    fs::set_permissions(abs, fs::Permissions::from_mode(mode))
        .map_err(|e| WriteError::io(abs, e))?;
    observe(abs)
}

/// Sets permissions (not on symlinks) and mtime (not on directories) to
/// `entry`'s, if the path is still what the scan saw.
pub fn set_metadata(
    abs: &Path,
    expected: Option<&StoredEntry>,
    entry: &FileEntry,
) -> Result<Observed, WriteError> {
    write::check_unchanged(abs, expected)?;
    if entry.kind != FileKind::Symlink {
        fs::set_permissions(abs, fs::Permissions::from_mode(entry.permissions))
            .map_err(|e| WriteError::io(abs, e))?;
    }
    if entry.kind != FileKind::Directory {
        write::set_mtime_nofollow(abs, entry.mtime).map_err(|e| WriteError::io(abs, e))?;
    }
    observe(abs)
}

/// Keeps a file instead of deleting it (moves it to versions).
pub type KeepFile<'a> = &'a dyn Fn(&Path) -> Result<(), WriteError>;

/// Deletes a file, symlink or (empty) directory, if it is still what the
/// scan saw. With `keep_in`, a file is moved there instead of unlinked
/// (versioning).
pub fn delete(
    abs: &Path,
    expected: Option<&StoredEntry>,
    kind: FileKind,
    keep: Option<KeepFile<'_>>,
) -> Result<(), WriteError> {
    write::check_unchanged(abs, expected)?;
    let result = match (kind, keep) {
        (FileKind::Directory, _) => fs::remove_dir(abs),
        (FileKind::File, Some(keep)) => return keep(abs),
        _ => fs::remove_file(abs),
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Err(WriteError::Io {
            path: abs.into(),
            source: io::Error::other(
                "directory is not empty (it holds files that are not synced); left in place",
            ),
        }),
        Err(e) => Err(WriteError::io(abs, e)),
    }
}

/// The current facts of `abs` (which must exist).
pub fn observe(abs: &Path) -> Result<Observed, WriteError> {
    Observed::of(abs)
        .map_err(|e| WriteError::io(abs, e))?
        .ok_or(WriteError::TargetChanged { path: abs.into() })
}

/// `ROOT/.meshsync/partial`, opened once (never through a symlink, never
/// making the marker), where partial files are made by name relative to
/// the open directory: no path walk per file.
pub struct PartialDir {
    path: PathBuf,
    dir: File,
}

impl PartialDir {
    /// Makes sure the directory exists below the folder marker, and opens
    /// it.
    pub fn open(root: &Path) -> Result<Self, WriteError> {
        let sub = Path::new("partial");
        let path = write::ensure_meta_dir(root, sub, 0o700)?;
        let dir =
            write::open_dir_nofollow(root, &Path::new(meshsync_core::path::META_DIR).join(sub))?;
        Ok(PartialDir { path, dir })
    }

    /// Opens the partial file `name`, made (mode 0600) if missing; also
    /// whether it was there before (a download to resume).
    fn create(&self, name: &str) -> io::Result<(File, bool)> {
        let name = std::ffi::CString::new(name).map_err(io::Error::other)?;
        match write::open_in_dir(&self.dir, &name, libc::O_CREAT | libc::O_EXCL) {
            Ok(f) => Ok((f, false)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Ok((write::open_in_dir(&self.dir, &name, 0)?, true))
            }
            Err(e) => Err(e),
        }
    }
}

/// Files at least this large get their space reserved before assembly.
const PREALLOCATE_MIN: u64 = 1 << 20;

/// A file being put together from chunks, under
/// `ROOT/.meshsync/partial/<content hash>`.
pub struct Assembly {
    file: File,
    partial: PathBuf,
    content: Content,
    /// Chunks still missing: offset and chunk.
    missing: Vec<(u64, ChunkRef)>,
    bytes_local: u64,
    /// Bytes written since writeback was last started.
    unflushed: AtomicU64,
}

impl Assembly {
    /// Starts (or resumes) assembling `content` for a folder rooted at
    /// `root`: chunks already in a partial file from an earlier attempt are
    /// kept if they verify; chunks `local` holds are copied (and verified);
    /// the rest is [`Assembly::missing`].
    ///
    /// The partial file is named by content and path, so two files with the
    /// same content assembled at once never share one.
    pub fn start(
        root: &Path,
        path: &meshsync_core::path::RelPath,
        content: &Content,
        local: &mut ChunkReader<'_, 2>,
    ) -> Result<Self, WriteError> {
        Self::start_in(&PartialDir::open(root)?, path, content, local)
    }

    /// [`Assembly::start`] in a partial directory opened once for many
    /// files.
    pub fn start_in(
        dir: &PartialDir,
        path: &meshsync_core::path::RelPath,
        content: &Content,
        local: &mut ChunkReader<'_, 2>,
    ) -> Result<Self, WriteError> {
        let path_tag = &blake3::hash(path.as_str().as_bytes()).to_hex()[..16];
        let name = format!("{}-{path_tag}", content.hash.to_hex());
        let partial = dir.path.join(&name);
        let (file, existed) = dir.create(&name).map_err(|e| WriteError::io(&partial, e))?;
        let total: u64 = content.chunks.iter().map(|c| u64::from(c.len)).sum();
        // Reserving space up front pays for large files (a full disk fails
        // at once, less fragmentation); for small ones it is one more
        // journal transaction per file.
        if !existed && total >= PREALLOCATE_MIN {
            preallocate(&file, total).map_err(|e| WriteError::io(&partial, e))?;
        }
        let mut missing = Vec::new();
        let mut bytes_local = 0;
        let mut unflushed = 0;
        let mut buf = Vec::new();
        let mut file = file;
        for (offset, chunk) in content.offsets() {
            if existed && chunk_present(&file, offset, chunk, &mut buf) {
                continue;
            }
            if local
                .copy(&chunk.hash, chunk.len as usize, &file, offset)
                .map_err(|e| WriteError::io(&partial, e))?
            {
                bytes_local += u64::from(chunk.len);
                // A big file rebuilt from local data (an update) is written
                // back as it goes, like fetched chunks.
                unflushed += u64::from(chunk.len);
                if unflushed >= write::WRITEBACK_STEP {
                    unflushed = 0;
                    write::start_writeback(&file, 0, 0);
                }
                continue;
            }
            missing.push((offset, *chunk));
        }
        // A new file reaches its size with its last chunk (or its
        // reservation); a resumed one is cut or extended to it. (A needless
        // truncate is a journal transaction per file: 20,000 for `small`.)
        if existed {
            file.set_len(total)
                .map_err(|e| WriteError::io(&partial, e))?;
        }
        let _ = &mut file;
        Ok(Assembly {
            file,
            partial,
            content: content.clone(),
            missing,
            bytes_local,
            unflushed: AtomicU64::new(0),
        })
    }

    /// The partial file (chunks written to it were verified first).
    pub fn partial(&self) -> &Path {
        &self.partial
    }

    /// The chunks still to fetch, with their offsets.
    pub fn missing(&self) -> &[(u64, ChunkRef)] {
        &self.missing
    }

    /// Bytes that came from local files.
    pub fn bytes_local(&self) -> u64 {
        self.bytes_local
    }

    /// Writes a fetched chunk at `offset` after checking it is the chunk
    /// expected there. A chunk that does not hash right is refused (the
    /// caller fetches it elsewhere).
    pub fn write_chunk(
        &self,
        offset: u64,
        expected: &ChunkRef,
        bytes: &[u8],
    ) -> Result<(), WriteError> {
        if bytes.len() != expected.len as usize || Hash::of(bytes) != expected.hash {
            return Err(WriteError::Verify {
                path: self.partial.clone(),
            });
        }
        self.file
            .write_all_at(bytes, offset)
            .map_err(|e| WriteError::io(&self.partial, e))?;
        // A big download is written back while it arrives, so the batch's
        // final flush does not wait for all of it at the end.
        let written = bytes.len() as u64;
        if self.unflushed.fetch_add(written, Ordering::Relaxed) + written >= write::WRITEBACK_STEP {
            self.unflushed.store(0, Ordering::Relaxed);
            write::start_writeback(&self.file, 0, 0);
        }
        Ok(())
    }

    /// Sets mode and mtime; the file is complete (every chunk written by the
    /// caller). Returns the path of the finished partial file, to be flushed
    /// and then moved into place with [`commit_partial`].
    pub fn finish(
        self,
        permissions: u32,
        mtime: meshsync_core::entry::Timestamp,
    ) -> Result<PathBuf, WriteError> {
        self.file
            .set_permissions(fs::Permissions::from_mode(permissions))
            .map_err(|e| WriteError::io(&self.partial, e))?;
        write::set_mtime_fd(&self.file, mtime).map_err(|e| WriteError::io(&self.partial, e))?;
        let _ = &self.content;
        Ok(self.partial)
    }
}

/// Moves a finished (and flushed) partial file over `target` (below
/// `root`), if `target` is still what the scan saw (`None`: it must not
/// exist). The rename goes into the target's directory opened without
/// following symlinks, so a directory swapped for a symlink while the file
/// was downloading is refused, never written through.
pub fn commit_partial(
    partial: &Path,
    root: &Path,
    target: &Path,
    expected: Option<&StoredEntry>,
) -> Result<Observed, WriteError> {
    let dir = open_parent(root, target)?;
    commit_partial_in(partial, &dir, target, expected)
}

/// The directory `target` (below `root`) goes into, opened without following
/// symlinks (for [`commit_partial_in`]).
pub fn open_parent(root: &Path, target: &Path) -> Result<File, WriteError> {
    let parent = target.parent().expect("a target has a parent");
    let rel = parent
        .strip_prefix(root)
        .map_err(|_| WriteError::UnsafeParent {
            path: target.into(),
        })?;
    write::open_dir_nofollow(root, rel)
}

/// [`commit_partial`] into `dir`, the target's directory opened with
/// [`open_parent`] (one opening for many files of one directory).
pub fn commit_partial_in(
    partial: &Path,
    dir: &File,
    target: &Path,
    expected: Option<&StoredEntry>,
) -> Result<Observed, WriteError> {
    let name = target.file_name().expect("a target has a name");
    if expected.is_some() {
        write::check_unchanged(target, expected)?;
    }
    match write::rename_into(partial, dir, name, expected.is_none(), target) {
        Err(WriteError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
            return Err(WriteError::TargetChanged {
                path: target.into(),
            });
        }
        other => other?,
    }
    observe(target)
}

fn chunk_present(file: &File, offset: u64, chunk: &ChunkRef, buf: &mut Vec<u8>) -> bool {
    buf.resize(chunk.len as usize, 0);
    file.read_exact_at(buf, offset).is_ok() && Hash::of(buf) == chunk.hash
}

fn preallocate(file: &File, size: u64) -> io::Result<()> {
    if size == 0 {
        return Ok(());
    }
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) => Ok(()),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunkmap::ChunkMap;
    use meshsync_core::chunking::{ChunkParams, content_of};
    use meshsync_core::path::META_DIR;

    #[test]
    fn assembles_from_chunks_in_any_order_and_resumes() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(META_DIR)).unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let content = content_of(&data, ChunkParams::ideal(data.len() as u64));
        assert!(content.chunks.len() > 3);
        let empty = ChunkMap::default();
        let mut reader = ChunkReader::new([&empty, &empty]);
        let name = meshsync_core::path::RelPath::new("out.bin").unwrap();
        let a = Assembly::start(root.path(), &name, &content, &mut reader).unwrap();
        let missing = a.missing().to_vec();
        assert_eq!(missing.len(), content.chunks.len());
        // Write half, in reverse order, then "crash".
        for (off, c) in missing.iter().rev().take(missing.len() / 2) {
            let bytes = &data[*off as usize..*off as usize + c.len as usize];
            a.write_chunk(*off, c, bytes).unwrap();
        }
        // A corrupt chunk is refused.
        let (off0, c0) = missing[0];
        assert!(matches!(
            a.write_chunk(off0, &c0, &vec![0u8; c0.len as usize]),
            Err(WriteError::Verify { .. })
        ));
        drop(a);
        let b = Assembly::start(root.path(), &name, &content, &mut reader).unwrap();
        assert_eq!(b.missing().len(), missing.len() - missing.len() / 2);
        for (off, c) in b.missing().to_vec() {
            b.write_chunk(off, &c, &data[off as usize..off as usize + c.len as usize])
                .unwrap();
        }
        let partial = b.finish(0o644, Default::default()).unwrap();
        let target = root.path().join("out.bin");
        commit_partial(&partial, root.path(), &target, None).unwrap();
        assert_eq!(fs::read(&target).unwrap(), data);
    }
}
