//! One file's record in an index: [`FileEntry`].
//!
//! An entry says what a path is (file, directory or symlink), its size, mtime,
//! permission bits, content (whole-file BLAKE3 hash and chunk list, when it
//! has been read), version vector, whether it is a deletion (tombstone), and
//! the sequence number of the device change that produced it.
//!
//! Content is optional on purpose: the scanner records a changed file's stat
//! at once and its hashes when they are first needed (the copy itself, or a
//! conflict check), so a file is read once, not twice.

use serde::{Deserialize, Serialize};

use crate::ids::Hash;
use crate::path::RelPath;
use crate::version::VersionVector;

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link (stored as its target text, never followed).
    Symlink,
}

/// A modification time: seconds and nanoseconds since the Unix epoch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
pub struct Timestamp {
    /// Whole seconds since 1970-01-01T00:00:00Z (negative before).
    pub secs: i64,
    /// Nanoseconds within the second (0..1e9).
    pub nanos: u32,
}

/// One content-defined chunk: its BLAKE3 hash and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    /// BLAKE3 of the chunk's bytes.
    pub hash: Hash,
    /// Length in bytes.
    pub len: u32,
}

/// What a file holds: the whole-file hash and its chunks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Content {
    /// BLAKE3 of the whole file.
    pub hash: Hash,
    /// The average chunk size the chunks were cut with (see [`crate::chunking`]).
    pub chunk_avg: u32,
    /// The chunks, in file order; their lengths add up to the file size.
    pub chunks: Vec<ChunkRef>,
}

impl Content {
    /// Byte offset of every chunk, in order.
    pub fn offsets(&self) -> impl Iterator<Item = (u64, &ChunkRef)> {
        self.chunks.iter().scan(0u64, |off, c| {
            let here = *off;
            *off += u64::from(c.len);
            Some((here, c))
        })
    }
}

/// One path's record in an index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Where, relative to the folder root.
    pub path: RelPath,
    /// File, directory or symlink.
    pub kind: FileKind,
    /// Size in bytes (0 for directories and symlinks).
    pub size: u64,
    /// Modification time.
    pub mtime: Timestamp,
    /// Unix permission bits (`mode & 0o7777`).
    pub permissions: u32,
    /// A symlink's target text, as stored in the link.
    pub symlink_target: Option<String>,
    /// Hash and chunks, once the file has been read.
    pub content: Option<Content>,
    /// Which devices changed this path, how often.
    pub version: VersionVector,
    /// A tombstone: the path was deleted.
    pub deleted: bool,
    /// The recording device's change number for this entry.
    pub sequence: u64,
}

/// How two copies of a file are judged equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CompareMode {
    /// Same kind, size and mtime (what `rsync -a` checks by default).
    #[default]
    Metadata,
    /// Same content hash (`--checksum`).
    Checksum,
}

impl FileEntry {
    /// A live (not deleted) entry.
    pub fn is_live(&self) -> bool {
        !self.deleted
    }

    /// Whether the two entries hold the same thing, judged by `mode`;
    /// `None` when that needs a content hash that one side does not have yet.
    /// Permissions and mtime of directories are not part of this.
    pub fn same_content(&self, other: &FileEntry, mode: CompareMode) -> Option<bool> {
        if self.deleted || other.deleted {
            return Some(self.deleted == other.deleted);
        }
        if self.kind != other.kind {
            return Some(false);
        }
        match self.kind {
            FileKind::Directory => Some(true),
            FileKind::Symlink => Some(self.symlink_target == other.symlink_target),
            FileKind::File => {
                if self.size != other.size {
                    return Some(false);
                }
                if let (Some(a), Some(b)) = (&self.content, &other.content) {
                    return Some(a.hash == b.hash);
                }
                match mode {
                    CompareMode::Metadata if self.mtime == other.mtime => Some(true),
                    _ => None,
                }
            }
        }
    }

    /// Whether mtime or permissions differ (for files and symlinks; for
    /// directories only permissions count).
    pub fn metadata_differs(&self, other: &FileEntry) -> bool {
        self.permissions != other.permissions
            || (self.kind == FileKind::File && self.mtime != other.mtime)
    }
}
