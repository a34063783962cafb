//! What the index database keeps for storage-only links, beside the
//! plaintext indexes of [`crate::db`]:
//!
//! - on a storage-only peer, its **sealed index**: every kept
//!   [`SealedEntry`] by its own sequence number (`sealed:TREE`), and the last
//!   sequence handed out (`sealed-meta`);
//! - on a device that reads the folder, the **encrypted form of its chunks**:
//!   plaintext chunk hash → ciphertext hash (`cipher:TREE`). Computing one
//!   means reading and encrypting the chunk, so it is done once per distinct
//!   chunk, not at every index send.
//!
//! Values are postcard, as in [`crate::db`]. Writes are batched by the
//! caller (one transaction, one fsync), and a sealed entry is recorded only
//! after the chunks it lists are durable.

use meshsync_core::encrypted_index::SealedEntry;
use meshsync_core::ids::Hash;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::db::{DbError, IndexDb};

const SEALED_META: TableDefinition<&str, u64> = TableDefinition::new("sealed-meta");

fn sealed_table(tree_id: &str) -> String {
    format!("sealed:{tree_id}")
}

fn cipher_table(tree_id: &str) -> String {
    format!("cipher:{tree_id}")
}

/// A storage-only folder's sealed index as stored.
#[derive(Debug, Default, Clone)]
pub struct StoredSealedIndex {
    /// The last sequence number handed out.
    pub last_sequence: u64,
    /// The kept entries, by sequence.
    pub entries: Vec<SealedEntry>,
}

impl IndexDb {
    /// A storage-only folder's sealed index (empty if never stored).
    pub fn load_sealed(&self, tree_id: &str) -> Result<StoredSealedIndex, DbError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let last_sequence = match txn.open_table(SEALED_META) {
            Ok(t) => t
                .get(tree_id)
                .map_err(|e| self.err(e))?
                .map_or(0, |v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(self.err(e)),
        };
        let name = sealed_table(tree_id);
        let def: TableDefinition<u64, &[u8]> = TableDefinition::new(&name);
        let table = match txn.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Ok(StoredSealedIndex {
                    last_sequence,
                    entries: Vec::new(),
                });
            }
            Err(e) => return Err(self.err(e)),
        };
        let mut entries = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let entry: SealedEntry =
                postcard::from_bytes(v.value()).map_err(|e| self.corrupt(e))?;
            if entry.sequence != k.value() {
                return Err(self.corrupt("a sealed entry stored under another sequence"));
            }
            entries.push(entry);
        }
        Ok(StoredSealedIndex {
            last_sequence,
            entries,
        })
    }

    /// Records changes to a sealed index in one transaction: entries kept
    /// (each under its own sequence), entries dropped (by sequence), and the
    /// last sequence handed out.
    pub fn commit_sealed(
        &self,
        tree_id: &str,
        last_sequence: u64,
        upserts: &[&SealedEntry],
        removals: &[u64],
    ) -> Result<(), DbError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut meta = txn.open_table(SEALED_META).map_err(|e| self.err(e))?;
            meta.insert(tree_id, last_sequence)
                .map_err(|e| self.err(e))?;
            let name = sealed_table(tree_id);
            let def: TableDefinition<u64, &[u8]> = TableDefinition::new(&name);
            let mut table = txn.open_table(def).map_err(|e| self.err(e))?;
            for seq in removals {
                table.remove(*seq).map_err(|e| self.err(e))?;
            }
            for e in upserts {
                let bytes = postcard::to_stdvec(e).map_err(|e| self.corrupt(e))?;
                table
                    .insert(e.sequence, bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Every known (plaintext chunk hash, ciphertext hash) pair of a folder.
    pub fn load_cipher_hashes(&self, tree_id: &str) -> Result<Vec<(Hash, Hash)>, DbError> {
        let name = cipher_table(tree_id);
        let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&name);
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = match txn.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.err(e)),
        };
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let (Ok(plain), Ok(cipher)) = (
                <[u8; 32]>::try_from(k.value()),
                <[u8; 32]>::try_from(v.value()),
            ) else {
                return Err(self.corrupt("a cipher hash row is not two hashes"));
            };
            out.push((Hash(plain), Hash(cipher)));
        }
        Ok(out)
    }

    /// Records (plaintext chunk hash, ciphertext hash) pairs (one
    /// transaction).
    pub fn add_cipher_hashes(&self, tree_id: &str, pairs: &[(Hash, Hash)]) -> Result<(), DbError> {
        if pairs.is_empty() {
            return Ok(());
        }
        let name = cipher_table(tree_id);
        let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&name);
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(def).map_err(|e| self.err(e))?;
            for (plain, cipher) in pairs {
                table
                    .insert(&plain.0[..], &cipher.0[..])
                    .map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use meshsync_core::encrypted_index::seal_entry;
    use meshsync_core::entry::{FileEntry, FileKind, Timestamp};
    use meshsync_core::ids::ShortId;
    use meshsync_core::keys::ReadWriteKey;
    use meshsync_core::path::RelPath;
    use meshsync_core::version::VersionVector;

    use super::*;

    fn sealed(name: &str, sequence: u64) -> SealedEntry {
        let mut version = VersionVector::new();
        version.bump(ShortId(1));
        let e = FileEntry {
            path: RelPath::new(name).unwrap(),
            kind: FileKind::Directory,
            size: 0,
            mtime: Timestamp::default(),
            permissions: 0o755,
            symlink_target: None,
            content: None,
            version,
            deleted: false,
            sequence,
        };
        seal_entry(&ReadWriteKey::from_secret(&[3; 32]), &e, |_| None).unwrap()
    }

    #[test]
    fn sealed_entries_and_cipher_hashes_persist() {
        let dir = tempfile::tempdir().unwrap();
        let db = IndexDb::open(dir.path()).unwrap();
        assert_eq!(db.load_sealed("t").unwrap().last_sequence, 0);
        let (a, b) = (sealed("a", 1), sealed("b", 2));
        db.commit_sealed("t", 2, &[&a, &b], &[]).unwrap();
        let c = sealed("c", 3);
        db.commit_sealed("t", 3, &[&c], &[1]).unwrap();
        drop(db);
        let db = IndexDb::open(dir.path()).unwrap();
        let stored = db.load_sealed("t").unwrap();
        assert_eq!(stored.last_sequence, 3);
        assert_eq!(stored.entries, vec![b, c]);
        assert!(db.load_sealed("other").unwrap().entries.is_empty());

        assert!(db.load_cipher_hashes("t").unwrap().is_empty());
        let pairs = [
            (Hash::of(b"p1"), Hash::of(b"c1")),
            (Hash::of(b"p2"), Hash::of(b"c2")),
        ];
        db.add_cipher_hashes("t", &pairs).unwrap();
        let mut got = db.load_cipher_hashes("t").unwrap();
        got.sort();
        let mut want = pairs.to_vec();
        want.sort();
        assert_eq!(got, want);
    }
}
