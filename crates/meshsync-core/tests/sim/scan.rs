//! The scanner, as `meshsync-store`'s `scan.rs` does it, over a [`Tree`]:
//! unchanged paths (same kind, size, mtime, mode, target, inode and ctime as
//! recorded) keep their entry; new and changed paths get a version bump and
//! a new sequence number; vanished paths become tombstones (bumped).
//!
//! Hashing follows the store's policies: `Changed` reads new and changed
//! files, `Deferred` reads nothing (the copy or `content_needed` fills the
//! hashes in), `All` re-reads everything (`--checksum`).

use std::collections::BTreeMap;

use meshsync_core::entry::{FileEntry, FileKind};
use meshsync_core::ids::ShortId;
use meshsync_core::path::RelPath;
use meshsync_core::plan::Index;

use crate::sim::fs::{LocalStat, Node, Tree};

/// When changed files are read (the store's `HashPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashPolicy {
    /// Hash new and changed files during the scan.
    Changed,
    /// Record only the stat.
    Deferred,
    /// Re-read every file.
    All,
}

/// A device's index as stored: entries, the local stat each was recorded
/// with, and the last sequence number.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Entries, tombstones included.
    pub index: Index,
    /// The inode/ctime recorded with each live entry.
    pub local: BTreeMap<RelPath, LocalStat>,
    /// The device's last sequence number.
    pub sequence: u64,
    /// The largest version counter the device ever issued (the store's
    /// `TreeMeta::last_counter`): saved with the scan, so a counter is
    /// never issued twice, even after a crash.
    pub last_counter: u64,
}

/// Whether `node` still looks exactly as `entry` + `local` recorded it
/// (the store's `Observed::matches`).
pub fn matches(node: &Node, entry: &FileEntry, local: Option<&LocalStat>) -> bool {
    entry.is_live()
        && entry.kind == node.kind
        && entry.size == node.size()
        && (node.kind == FileKind::Directory || entry.mtime == node.mtime)
        && entry.permissions == node.permissions()
        && entry.symlink_target == node.symlink_target()
        && local == Some(&node.local)
}

/// Scans `tree` against the stored `previous` snapshot of device `device`,
/// whose clock reads `clock` (Unix seconds: new version counters are at
/// least this, as the store's `ScanOptions::clock`).
pub fn scan(
    tree: &Tree,
    previous: &Snapshot,
    device: ShortId,
    clock: u64,
    policy: HashPolicy,
) -> Snapshot {
    let mut out = Snapshot {
        sequence: previous.sequence,
        last_counter: previous.last_counter,
        ..Snapshot::default()
    };
    // The store's `TreeMeta::clock`: never below a counter issued before.
    let clock = clock.max(previous.last_counter + 1);
    for (path, node) in &tree.nodes {
        let prev = previous.index.get(path);
        let prev_local = previous.local.get(path);
        let hash_now = node.kind == FileKind::File
            && match policy {
                HashPolicy::All => true,
                HashPolicy::Deferred => false,
                HashPolicy::Changed => {
                    !prev.is_some_and(|p| matches(node, p, prev_local) && p.content.is_some())
                }
            };
        let fresh = hash_now.then(|| node.content.as_deref().cloned().expect("files are hashed"));
        if let Some(p) = prev
            && matches(node, p, prev_local)
            && (fresh.is_none() || fresh == p.content)
        {
            out.index.insert(path.clone(), p.clone());
            out.local.insert(path.clone(), node.local);
            continue;
        }
        let mut version = prev.map(|p| p.version.clone()).unwrap_or_default();
        let content = fresh.or_else(|| {
            // Only mode or ctime moved: the bytes are the same.
            prev.filter(|p| {
                p.is_live()
                    && p.kind == node.kind
                    && p.size == node.size()
                    && p.mtime == node.mtime
                    && prev_local.map(|l| l.inode) == Some(node.local.inode)
            })
            .and_then(|p| p.content.clone())
        });
        let content_same = prev.is_some_and(|p| {
            p.is_live()
                && p.kind == node.kind
                && p.permissions == node.permissions()
                && p.symlink_target == node.symlink_target()
                && (node.kind == FileKind::Directory
                    || (p.size == node.size()
                        && content.is_some()
                        && p.content.as_ref().map(|c| c.hash) == content.as_ref().map(|c| c.hash)
                        && p.mtime == node.mtime))
        });
        let sequence = if content_same {
            prev.expect("content_same implies prev").sequence
        } else {
            out.last_counter = out.last_counter.max(version.bump_at(device, clock));
            out.sequence += 1;
            out.sequence
        };
        out.index.insert(
            path.clone(),
            FileEntry {
                path: path.clone(),
                kind: node.kind,
                size: node.size(),
                mtime: node.mtime,
                permissions: node.permissions(),
                symlink_target: node.symlink_target(),
                content,
                version,
                deleted: false,
                sequence,
            },
        );
        out.local.insert(path.clone(), node.local);
    }
    for (path, prev) in &previous.index {
        if tree.nodes.contains_key(path) {
            continue;
        }
        if prev.deleted {
            out.index.insert(path.clone(), prev.clone());
            continue;
        }
        let mut tomb = prev.clone();
        tomb.deleted = true;
        tomb.content = None;
        tomb.size = 0;
        out.last_counter = out.last_counter.max(tomb.version.bump_at(device, clock));
        out.sequence += 1;
        tomb.sequence = out.sequence;
        out.index.insert(path.clone(), tomb);
    }
    out
}
