//! The index database: what each tree held when last scanned or synced.
//!
//! One redb file (`index.redb` in the state directory). Each tree (a folder
//! root) has a table of entries keyed by relative path, and a row in the
//! `trees` table with its id, short id (the version-vector key of its local
//! changes) and the last sequence number it handed out. Values are postcard.
//!
//! Writes are batched: one transaction per sync or scan, because a commit
//! costs an fsync. The database must never claim content that is not on disk:
//! callers commit only after the files they describe are durable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use meshsync_core::entry::FileEntry;
use meshsync_core::ids::ShortId;
use meshsync_core::path::RelPath;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// The database file's name inside the state directory.
pub const DB_FILE: &str = "index.redb";

/// redb's page cache (reads and the write buffer together). redb's own
/// default is a 1 GiB ceiling, and every page a sync writes stays in it:
/// with 20,000 files, 5 MiB of a daemon's memory that nothing reads back
/// (the index lives in memory; the database is read once, at start). At
/// 1 MiB a large transaction writes its excess pages to the file before
/// the commit (no extra fsync): no difference in a pull's time.
const CACHE_BYTES: usize = 1 << 20;

const TREES: TableDefinition<&str, &[u8]> = TableDefinition::new("trees");

/// A database failure, with the file it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// redb could not open, read or write the file.
    #[error("index database {path}: {source}")]
    Redb {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        #[source]
        source: redb::Error,
    },
    /// A stored value did not decode: the file is damaged or from another version.
    #[error(
        "index database {path}: a stored record does not decode ({detail}); remove the file to rebuild the index"
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

/// What the store knows about a file on its own disk, beyond the entry: used
/// to skip unchanged files without reading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LocalStat {
    /// Inode number.
    pub inode: u64,
    /// Status-change time (seconds, nanoseconds): changes on any write or chmod.
    pub ctime: (i64, u32),
}

/// An entry as stored: the shared record plus local stat data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEntry {
    /// The record peers see.
    pub entry: FileEntry,
    /// Local facts; `None` for tombstones.
    pub local: Option<LocalStat>,
}

impl AsRef<FileEntry> for StoredEntry {
    fn as_ref(&self) -> &FileEntry {
        &self.entry
    }
}

/// A tree's bookkeeping row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeMeta {
    /// The canonical root path.
    pub root: PathBuf,
    /// The version-vector key of changes made in this tree.
    pub short_id: ShortId,
    /// The last sequence number handed out.
    pub sequence: u64,
    /// Synced two-way before: its `.meshsync` marker must be there.
    pub two_way: bool,
    /// The largest version counter this tree ever issued: the next change
    /// gets a larger one, even after a crash lost an index record.
    pub last_counter: u64,
}

impl TreeMeta {
    /// The clock to scan with: the wall clock, but never below a counter
    /// issued before.
    pub fn clock(&self, now_unix_secs: i64) -> u64 {
        (now_unix_secs.max(0) as u64).max(self.last_counter + 1)
    }
}

/// An open index database.
pub struct IndexDb {
    pub(crate) db: redb::Database,
    path: PathBuf,
}

/// A tree's stored index: entries by path.
pub type StoredIndex = BTreeMap<RelPath, StoredEntry>;

impl IndexDb {
    /// Opens (or creates) the database in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, DbError> {
        let path = state_dir.join(DB_FILE);
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| DbError::Redb {
                path: path.clone(),
                source: e.into(),
            })?;
        Ok(IndexDb { db, path })
    }

    pub(crate) fn err(&self, e: impl Into<redb::Error>) -> DbError {
        DbError::Redb {
            path: self.path.clone(),
            source: e.into(),
        }
    }

    pub(crate) fn corrupt(&self, detail: impl ToString) -> DbError {
        DbError::Corrupt {
            path: self.path.clone(),
            detail: detail.to_string(),
        }
    }

    /// A tree's row, if it was ever synced.
    pub fn tree(&self, tree_id: &str) -> Result<Option<TreeMeta>, DbError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = match txn.open_table(TREES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        match table.get(tree_id).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(
                postcard::from_bytes(v.value()).map_err(|e| self.corrupt(e))?,
            )),
            None => Ok(None),
        }
    }

    /// Every stored entry of a tree.
    pub fn load(&self, tree_id: &str) -> Result<StoredIndex, DbError> {
        let name = entries_table_name(tree_id);
        let def: TableDefinition<&str, &[u8]> = TableDefinition::new(&name);
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = match txn.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(StoredIndex::new()),
            Err(e) => return Err(self.err(e)),
        };
        // Collected, then built in bulk: full nodes (see `insert_batch`).
        let mut rows = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let entry: StoredEntry =
                postcard::from_bytes(v.value()).map_err(|e| self.corrupt(e))?;
            if entry.entry.path.as_str() != k.value() {
                return Err(self.corrupt(format!(
                    "the row {:?} holds the entry of {:?}",
                    k.value(),
                    entry.entry.path.as_str()
                )));
            }
            // The key shares the entry's path.
            rows.push((entry.entry.path.clone(), entry));
        }
        Ok(rows.into_iter().collect())
    }

    /// Writes a batch of changes to trees in one transaction (one fsync).
    pub fn commit(&self, batches: &[TreeUpdate<'_>]) -> Result<(), DbError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut trees = txn.open_table(TREES).map_err(|e| self.err(e))?;
            for b in batches {
                let meta = postcard::to_stdvec(b.meta).map_err(|e| self.corrupt(e))?;
                trees
                    .insert(b.tree_id, meta.as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        for b in batches {
            let name = entries_table_name(b.tree_id);
            let def: TableDefinition<&str, &[u8]> = TableDefinition::new(&name);
            let mut table = txn.open_table(def).map_err(|e| self.err(e))?;
            let mut buf = Vec::new();
            for e in b.upserts {
                buf.clear();
                let bytes = postcard::to_extend(e, std::mem::take(&mut buf))
                    .map_err(|e| self.corrupt(e))?;
                table
                    .insert(e.entry.path.as_str(), bytes.as_slice())
                    .map_err(|e| self.err(e))?;
                buf = bytes;
            }
            for p in b.removals {
                table.remove(p.as_str()).map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }
}

/// Changes to one tree, for [`IndexDb::commit`].
pub struct TreeUpdate<'a> {
    /// Which tree.
    pub tree_id: &'a str,
    /// Its bookkeeping row (sequence number advanced).
    pub meta: &'a TreeMeta,
    /// Entries to insert or replace.
    pub upserts: &'a [&'a StoredEntry],
    /// Paths to forget entirely (not tombstones: those are upserts).
    pub removals: &'a [RelPath],
}

fn entries_table_name(tree_id: &str) -> String {
    format!("entries:{tree_id}")
}

/// The id of the tree rooted at `canonical_root`: 32 hex digits of its BLAKE3.
pub fn tree_id_for(canonical_root: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let h = blake3::hash(canonical_root.as_os_str().as_bytes());
    h.to_hex()[..32].to_string()
}

/// A tree's version-vector key, derived from its id.
pub fn short_id_for(tree_id: &str) -> ShortId {
    let h = blake3::hash(tree_id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    ShortId(u64::from_be_bytes(b))
}
