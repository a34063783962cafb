//! A device's folder, in memory: path -> node, with the stat facts the real
//! scanner looks at (kind, size, mtime, mode, inode, ctime).
//!
//! The model file system is an ideal POSIX one with two simplifications,
//! stated because the scanner and executor models depend on them:
//! - every write of a file's bytes makes a new inode (editors write a
//!   temporary file and rename it; so does meshsync). In-place edits that keep
//!   size, mtime and inode are invisible to a stat-based scanner and are not
//!   generated;
//! - a directory's mtime and ctime change only when the directory itself is
//!   created or chmod-ed, not when entries are added or removed in it.
//!
//! Every node also carries the oracle's [`Tag`]: which user write its bytes
//! come from. Tags travel with the bytes (copies, renames), never through an
//! index, so the planner cannot see them.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::rc::Rc;

use meshsync_core::chunking::{ChunkParams, content_of};
use meshsync_core::entry::{Content, FileKind, Timestamp};
use meshsync_core::path::RelPath;

/// The id of one user write (see [`crate::sim::oracle`]).
pub type Tag = usize;

/// Inode and ctime: what tells the scanner a path was touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalStat {
    /// Changes when the bytes are replaced (a new file).
    pub inode: u64,
    /// Changes on every change of the node (bytes, mode, name).
    pub ctime: u64,
}

/// One file, directory or symlink.
#[derive(Debug, Clone)]
pub struct Node {
    /// What it is.
    pub kind: FileKind,
    /// A file's bytes or a symlink's target text (empty for a directory).
    pub payload: Rc<[u8]>,
    /// A file's hashes (computed once, when the bytes are written).
    pub content: Option<Rc<Content>>,
    /// Permission bits.
    pub mode: u32,
    /// Modification time.
    pub mtime: Timestamp,
    /// Inode and ctime.
    pub local: LocalStat,
    /// Which user writes these bytes stand for (files and symlinks): one,
    /// or several identical ones a sync has since recorded as one version.
    pub tags: Vec<Tag>,
}

impl Node {
    /// Size as `lstat` reports it (files only).
    pub fn size(&self) -> u64 {
        if self.kind == FileKind::File {
            self.payload.len() as u64
        } else {
            0
        }
    }

    /// Permission bits as the scanner records them.
    pub fn permissions(&self) -> u32 {
        if self.kind == FileKind::Symlink {
            0o777
        } else {
            self.mode
        }
    }

    /// A symlink's target.
    pub fn symlink_target(&self) -> Option<String> {
        (self.kind == FileKind::Symlink).then(|| String::from_utf8_lossy(&self.payload).into())
    }
}

/// The hashes of `bytes`, as the store computes them.
pub fn hash_bytes(bytes: &[u8]) -> Rc<Content> {
    Rc::new(content_of(bytes, ChunkParams::ideal(bytes.len() as u64)))
}

/// A folder: every node by path. The root itself is implicit.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    /// Every node.
    pub nodes: BTreeMap<RelPath, Node>,
    stamps: u64,
}

impl Tree {
    /// A fresh inode/ctime pair.
    pub fn fresh_local(&mut self) -> LocalStat {
        self.stamps += 1;
        LocalStat {
            inode: self.stamps,
            ctime: self.stamps,
        }
    }

    /// Marks `path`'s node as changed (new ctime).
    pub fn touch(&mut self, path: &RelPath) {
        self.stamps += 1;
        let stamp = self.stamps;
        if let Some(n) = self.nodes.get_mut(path) {
            n.local.ctime = stamp;
        }
    }

    /// Whether `dir` is the root (`None`) or an existing directory.
    pub fn is_dir(&self, dir: Option<&RelPath>) -> bool {
        dir.is_none_or(|d| {
            self.nodes
                .get(d)
                .is_some_and(|n| n.kind == FileKind::Directory)
        })
    }

    /// `path` and everything below it, parents first.
    pub fn subtree(&self, path: &RelPath) -> Vec<RelPath> {
        let mut out = Vec::new();
        if self.nodes.contains_key(path) {
            out.push(path.clone());
        }
        out.extend(
            self.nodes
                .range::<RelPath, _>((Bound::Excluded(path), Bound::Unbounded))
                .take_while(|(p, _)| p.as_str().starts_with(path.as_str()))
                .filter(|(p, _)| p.starts_with(path))
                .map(|(p, _)| p.clone()),
        );
        out
    }

    /// Whether the directory at `path` has entries.
    pub fn has_children(&self, path: &RelPath) -> bool {
        self.subtree(path).len() > 1
    }

    /// Removes `path` and everything below it; returns what was removed.
    pub fn remove_tree(&mut self, path: &RelPath) -> Vec<(RelPath, Node)> {
        self.subtree(path)
            .into_iter()
            .filter_map(|p| self.nodes.remove(&p).map(|n| (p, n)))
            .collect()
    }

    /// Creates every missing directory on the way to `dir` (as the store's
    /// `ensure_real_dirs`); fails where a non-directory is in the way.
    pub fn ensure_dirs(&mut self, dir: Option<&RelPath>, mtime: Timestamp) -> Result<(), String> {
        let Some(dir) = dir else { return Ok(()) };
        let mut at = String::new();
        for component in dir.as_str().split('/') {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(component);
            let p = RelPath::new(&at).expect("prefix of a valid path");
            match self.nodes.get(&p) {
                Some(n) if n.kind == FileKind::Directory => {}
                Some(_) => return Err(format!("{p}: unsafe parent (not a directory)")),
                None => {
                    let local = self.fresh_local();
                    self.nodes.insert(
                        p,
                        Node {
                            kind: FileKind::Directory,
                            payload: Rc::from(&b""[..]),
                            content: None,
                            mode: 0o755,
                            mtime,
                            local,
                            tags: Vec::new(),
                        },
                    );
                }
            }
        }
        Ok(())
    }
}
