//! The executor, as `meshsync-store`'s `local_sync.rs` runs a plan, over two
//! in-memory [`Tree`]s.
//!
//! Every action first checks that the disk is still what the scan recorded
//! (the store's `check_unchanged`: kind, size, mtime, mode, inode, ctime),
//! so a change made after the scan is refused, never overwritten. Index
//! updates are collected per side and committed by the caller after the run
//! (or lost, if the device "crashes"): the target records the source's entry
//! with the action's version, the source side records that version too.
//! `KeepConflictCopy` renames the loser (no-replace) and forgets its old name
//! until the winner's copy lands there.

use std::collections::{BTreeMap, BTreeSet};

use meshsync_core::entry::{Content, FileEntry, FileKind, Timestamp};
use meshsync_core::path::RelPath;
use meshsync_core::plan::{Action, Plan, Side};
use meshsync_core::version::VersionVector;

use crate::sim::fs::{LocalStat, Node, Tree};
use crate::sim::scan::{Snapshot, matches};

/// What a run did to the indexes, per side (0 = A, 1 = B).
#[derive(Debug, Default)]
pub struct Outcome {
    /// Entries to record.
    pub updates: [BTreeMap<RelPath, (FileEntry, Option<LocalStat>)>; 2],
    /// Paths to forget (the old names of conflict losers).
    pub forgotten: [BTreeSet<RelPath>; 2],
    /// Each side's last sequence number after the run.
    pub sequences: [u64; 2],
    /// Actions that failed, with the reason (the run goes on, as the store's does).
    pub errors: Vec<String>,
    /// How many actions were attempted.
    pub attempted: usize,
    /// Paths whose disk the run changed, per side.
    pub written: [BTreeSet<RelPath>; 2],
}

impl Outcome {
    /// Applies this run's updates to `snap`, the scan of side `side`.
    pub fn commit_into(&self, side: usize, snap: &mut Snapshot) {
        for (path, (entry, local)) in &self.updates[side] {
            snap.index.insert(path.clone(), entry.clone());
            match local {
                Some(l) => snap.local.insert(path.clone(), *l),
                None => snap.local.remove(path),
            };
        }
        for path in &self.forgotten[side] {
            snap.index.remove(path);
            snap.local.remove(path);
        }
        snap.sequence = self.sequences[side];
    }
}

/// One run of a plan.
pub struct Run<'a> {
    trees: [&'a mut Tree; 2],
    stored: [&'a Snapshot; 2],
    now: [Timestamp; 2],
    /// Mirror the store exactly: a forgotten old name stays forgotten even
    /// when the winner's copy lands there (see the regression tests).
    forget_wins: bool,
    out: Outcome,
}

fn ix(side: Side) -> usize {
    match side {
        Side::A => 0,
        Side::B => 1,
    }
}

impl<'a> Run<'a> {
    /// A run over trees A and B, whose scans are `stored`.
    pub fn new(
        trees: [&'a mut Tree; 2],
        stored: [&'a Snapshot; 2],
        now: [Timestamp; 2],
        forget_wins: bool,
    ) -> Self {
        let sequences = [stored[0].sequence, stored[1].sequence];
        Run {
            trees,
            stored,
            now,
            forget_wins,
            out: Outcome {
                sequences,
                ..Outcome::default()
            },
        }
    }

    /// Runs the first `limit` actions of `plan` and returns the index updates.
    pub fn execute(mut self, plan: &Plan, limit: usize) -> Outcome {
        for action in plan.actions.iter().take(limit) {
            self.out.attempted += 1;
            if let Err(e) = self.run_one(action) {
                self.out.errors.push(format!("{}: {e}", action.path()));
            }
        }
        self.out
    }

    fn stored_entry(&self, side: usize, path: &RelPath) -> Option<&FileEntry> {
        self.stored[side].index.get(path)
    }

    /// The store's `check_unchanged`: `path` must be exactly as scanned.
    fn check_unchanged(
        &self,
        side: usize,
        path: &RelPath,
        expected: Option<&FileEntry>,
    ) -> Result<(), String> {
        let now = self.trees[side].nodes.get(path);
        let same = match (expected, now) {
            (None, None) => true,
            (Some(e), Some(n)) => matches(n, e, self.stored[side].local.get(path)),
            _ => false,
        };
        if same {
            Ok(())
        } else {
            Err("target changed since the scan".into())
        }
    }

    fn record(&mut self, side: usize, mut entry: FileEntry, local: Option<LocalStat>) {
        self.out.sequences[side] += 1;
        entry.sequence = self.out.sequences[side];
        if !self.forget_wins {
            self.out.forgotten[side].remove(&entry.path);
        }
        self.out.updates[side].insert(entry.path.clone(), (entry, local));
    }

    fn record_version(
        &mut self,
        side: usize,
        path: &RelPath,
        version: &VersionVector,
        content: Option<&Content>,
    ) {
        let current = match self.out.updates[side].get(path) {
            Some((e, l)) => Some((e.clone(), *l)),
            None => self.stored[side]
                .index
                .get(path)
                .map(|e| (e.clone(), self.stored[side].local.get(path).copied())),
        };
        let Some((mut entry, local)) = current else {
            return;
        };
        let content_new = entry.content.is_none() && content.is_some() && entry.is_live();
        if entry.version == *version && !content_new {
            return;
        }
        entry.version = version.clone();
        if content_new {
            entry.content = content.cloned();
        }
        self.record(side, entry, local);
    }

    fn run_one(&mut self, action: &Action) -> Result<(), String> {
        match action {
            Action::KeepConflictCopy { side, entry, to } => {
                self.keep_conflict_copy(ix(*side), entry, to)
            }
            Action::MakeDir { side, entry } => self.make_dir(ix(*side), entry),
            Action::Copy {
                from,
                source,
                replaces,
                version,
            } => self.copy(ix(*from), source, replaces.is_some(), version),
            Action::Symlink {
                from,
                source,
                replaces,
                version,
            } => self.symlink(ix(*from), source, replaces.is_some(), version),
            Action::SetMetadata { side, entry, .. } => self.set_metadata(ix(*side), entry),
            Action::Delete {
                side,
                expected,
                version,
                making_room,
            } => self.delete(ix(*side), expected, version, *making_room),
            Action::RecordVersion { path, version } => {
                self.record_version(0, path, version, None);
                self.record_version(1, path, version, None);
                Ok(())
            }
        }
    }

    fn keep_conflict_copy(
        &mut self,
        side: usize,
        entry: &FileEntry,
        to: &RelPath,
    ) -> Result<(), String> {
        self.check_unchanged(side, &entry.path, self.stored_entry(side, &entry.path))?;
        let tree = &mut *self.trees[side];
        if tree.nodes.contains_key(to) {
            return Err(format!("rename to {to}: exists"));
        }
        let node = tree
            .nodes
            .remove(&entry.path)
            .ok_or("rename: source vanished")?;
        tree.nodes.insert(to.clone(), node);
        tree.touch(to);
        let local = tree.nodes[to].local;
        let mut moved = entry.clone();
        moved.path = to.clone();
        self.record(side, moved, Some(local));
        self.out.forgotten[side].insert(entry.path.clone());
        self.out.written[side].insert(entry.path.clone());
        self.out.written[side].insert(to.clone());
        Ok(())
    }

    fn make_dir(&mut self, side: usize, entry: &FileEntry) -> Result<(), String> {
        let now = self.now[side];
        let tree = &mut *self.trees[side];
        tree.ensure_dirs(entry.path.parent().as_ref(), now)?;
        match tree.nodes.get(&entry.path) {
            Some(n) if n.kind == FileKind::Directory => {}
            Some(_) => return Err("mkdir: exists and is not a directory".into()),
            None => {
                let local = tree.fresh_local();
                tree.nodes.insert(
                    entry.path.clone(),
                    Node {
                        kind: FileKind::Directory,
                        payload: std::rc::Rc::from(&b""[..]),
                        content: None,
                        mode: entry.permissions,
                        mtime: entry.mtime,
                        local,
                        tags: Vec::new(),
                    },
                );
            }
        }
        let node = tree.nodes.get_mut(&entry.path).expect("just made");
        node.mode = entry.permissions;
        tree.touch(&entry.path);
        let local = tree.nodes[&entry.path].local;
        self.record(side, entry.clone(), Some(local));
        self.record_version(1 - side, &entry.path, &entry.version, None);
        self.out.written[side].insert(entry.path.clone());
        Ok(())
    }

    fn copy(
        &mut self,
        from: usize,
        source: &FileEntry,
        replacing: bool,
        version: &VersionVector,
    ) -> Result<(), String> {
        let to = 1 - from;
        let path = &source.path;
        let now = self.now[to];
        self.trees[to].ensure_dirs(path.parent().as_ref(), now)?;
        let expected = if replacing {
            self.stored_entry(to, path).cloned()
        } else {
            None
        };
        // The source must still be what was scanned (size, mtime, inode).
        let src = self.trees[from]
            .nodes
            .get(path)
            .cloned()
            .ok_or("source changed: gone")?;
        let inode_ok = self.stored[from]
            .local
            .get(path)
            .is_none_or(|l| l.inode == src.local.inode);
        if src.kind != FileKind::File
            || src.size() != source.size
            || src.mtime != source.mtime
            || !inode_ok
        {
            return Err("source changed since the scan".into());
        }
        self.check_unchanged(to, path, expected.as_ref())?;
        if self.trees[to]
            .nodes
            .get(path)
            .is_some_and(|n| n.kind == FileKind::Directory)
        {
            return Err("rename over a directory".into());
        }
        let tree = &mut *self.trees[to];
        let local = tree.fresh_local();
        let content = src.content.clone().expect("files are hashed");
        tree.nodes.insert(
            path.clone(),
            Node {
                mode: source.permissions,
                mtime: source.mtime,
                local,
                ..src
            },
        );
        let mut entry = source.clone();
        entry.content = Some((*content).clone());
        entry.version = version.clone();
        self.record_version(from, path, version, Some(&content));
        self.record(to, entry, Some(local));
        self.out.written[to].insert(path.clone());
        Ok(())
    }

    fn symlink(
        &mut self,
        from: usize,
        source: &FileEntry,
        replacing: bool,
        version: &VersionVector,
    ) -> Result<(), String> {
        let to = 1 - from;
        let path = &source.path;
        let now = self.now[to];
        self.trees[to].ensure_dirs(path.parent().as_ref(), now)?;
        let expected = if replacing {
            self.stored_entry(to, path).cloned()
        } else {
            None
        };
        self.check_unchanged(to, path, expected.as_ref())?;
        if self.trees[to]
            .nodes
            .get(path)
            .is_some_and(|n| n.kind == FileKind::Directory)
        {
            return Err("rename over a directory".into());
        }
        let link = source.symlink_target.clone().unwrap_or_default();
        // The writes follow the link text when the source still holds it.
        let tags = self.trees[from]
            .nodes
            .get(path)
            .filter(|n| {
                n.kind == FileKind::Symlink && n.symlink_target().as_deref() == Some(link.as_str())
            })
            .map(|n| n.tags.clone())
            .unwrap_or_default();
        let tree = &mut *self.trees[to];
        let local = tree.fresh_local();
        tree.nodes.insert(
            path.clone(),
            Node {
                kind: FileKind::Symlink,
                payload: std::rc::Rc::from(link.as_bytes()),
                content: None,
                mode: 0o777,
                mtime: source.mtime,
                local,
                tags,
            },
        );
        let mut entry = source.clone();
        entry.version = version.clone();
        self.record(to, entry, Some(local));
        self.record_version(from, path, version, None);
        self.out.written[to].insert(path.clone());
        Ok(())
    }

    fn set_metadata(&mut self, side: usize, entry: &FileEntry) -> Result<(), String> {
        let stored = self.stored_entry(side, &entry.path).cloned();
        self.check_unchanged(side, &entry.path, stored.as_ref())?;
        let tree = &mut *self.trees[side];
        let node = tree.nodes.get_mut(&entry.path).ok_or("gone")?;
        if entry.kind != FileKind::Symlink {
            node.mode = entry.permissions;
        }
        if entry.kind != FileKind::Directory {
            node.mtime = entry.mtime;
        }
        let mtime = node.mtime;
        tree.touch(&entry.path);
        let local = tree.nodes[&entry.path].local;
        let mut recorded = entry.clone();
        if recorded.content.is_none() {
            recorded.content = stored.and_then(|s| s.content);
        }
        if entry.kind == FileKind::Directory {
            recorded.mtime = mtime;
        }
        self.record(side, recorded, Some(local));
        self.record_version(1 - side, &entry.path, &entry.version, None);
        self.out.written[side].insert(entry.path.clone());
        Ok(())
    }

    fn delete(
        &mut self,
        side: usize,
        expected: &FileEntry,
        version: &VersionVector,
        making_room: bool,
    ) -> Result<(), String> {
        let path = &expected.path;
        let stored = self.stored_entry(side, path).cloned();
        self.check_unchanged(side, path, stored.as_ref())?;
        let tree = &mut *self.trees[side];
        if expected.kind == FileKind::Directory && tree.has_children(path) {
            return Err("directory is not empty; left in place".into());
        }
        tree.nodes.remove(path);
        if making_room {
            // As the store: no tombstone, the path is forgotten; the write
            // that follows records it (see `Action::Delete::making_room`).
            self.out.forgotten[side].insert(path.clone());
            self.out.written[side].insert(path.clone());
            return Ok(());
        }
        let mut tomb = expected.clone();
        tomb.deleted = true;
        tomb.content = None;
        tomb.size = 0;
        tomb.version = version.clone();
        self.record(side, tomb, None);
        self.record_version(1 - side, path, version, None);
        self.out.written[side].insert(path.clone());
        Ok(())
    }
}
