//! The reading side of a sealed link: sealing this device's index for a
//! storage peer, serving it ciphertext, and taking in what it announced.
//!
//! - [`Sealer`] (one per reading folder) turns local entries into signed
//!   sealed entries. Each needs the ciphertext hash of every chunk, which
//!   costs reading and encrypting the chunk, so the pairs (plaintext hash →
//!   ciphertext hash) are kept in memory and in the index database: a chunk
//!   is encrypted for its hash once, not at every index send or restart.
//!   Chunks are encrypted on a few threads, in pieces; after each piece the
//!   chunks of large files known so far go out as hints ([`super::hints`]),
//!   so the storage peer fetches them before the file's entry is complete.
//!   The ciphertexts made on the way wait in the folder's spool
//!   ([`super::spool`]) for the storage peer's requests; a request that
//!   misses it reads and encrypts the chunk again.
//! - [`ReaderView`] (one per storage peer link and folder) holds the
//!   storage peer's entries, opened: per path every version it keeps that no
//!   other dominates, and the ciphertext of each plaintext chunk.
//!
//! Never: a plaintext chunk or name on a sealed link; a ciphertext served
//! for a hash it does not match.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Result;
use meshsync_core::encrypted_index::{
    Admission, CHUNK_TAG_LEN, OpenedEntry, SealedEntry, admit, seal_entry,
};
use meshsync_core::entry::{ChunkRef, FileEntry, FileKind};
use meshsync_core::global::global_index;
use meshsync_core::ids::{Hash, ShareId};
use meshsync_core::keys::{DataKey, FolderKey, VerifyKey};
use meshsync_core::path::RelPath;
use meshsync_core::plan::{EntryMap, Index};
use meshsync_proto::sealed::{ChunkHint, MAX_HINT_CHUNKS};
use meshsync_store::chunkmap::ChunkMap;
use meshsync_store::db::IndexDb;

use super::spool::SharedSpool;

/// Threads that encrypt chunks while sealing.
const SEAL_THREADS: usize = 4;
/// Plaintext encrypted between two rounds of hints.
const PIECE_BYTES: u64 = 16 << 20;
/// Files at least this large are hinted ahead of their sealed entry
/// (smaller ones are sealed and sent within a piece or two anyway).
const HINT_MIN_BYTES: u64 = 16 << 20;

/// A reading folder's encryption state for storage peers.
pub struct Sealer {
    share: ShareId,
    key: FolderKey,
    tree_id: String,
    map: Mutex<CipherMap>,
    spool: SharedSpool,
}

#[derive(Default)]
struct CipherMap {
    loaded: bool,
    by_plain: HashMap<Hash, Hash>,
    by_cipher: HashMap<Hash, Hash>,
}

impl CipherMap {
    fn insert(&mut self, plain: Hash, cipher: Hash) {
        self.by_plain.insert(plain, cipher);
        self.by_cipher.insert(cipher, plain);
    }
}

/// One group of sealed entries, ready to send.
pub struct SealedGroup {
    /// The entries (some local entries may be missing: see `skipped`).
    pub entries: Vec<SealedEntry>,
    /// Local entries that could not be sealed (a name too long to encrypt,
    /// a file changed since it was hashed: its next scan makes a new entry).
    pub skipped: Vec<String>,
}

impl Sealer {
    /// The sealer of folder `share` at `root`, held with `key` (read-write
    /// or read-only).
    pub fn new(share: ShareId, key: FolderKey, root: &Path) -> Self {
        Sealer {
            share,
            key,
            tree_id: format!("share-{share}"),
            map: Mutex::new(CipherMap::default()),
            spool: SharedSpool::open(root),
        }
    }

    /// Loads the known cipher hashes from the database (once).
    pub fn load(&self, db: &IndexDb) -> Result<()> {
        let mut map = self.map.lock().expect("poisoned");
        if map.loaded {
            return Ok(());
        }
        for (plain, cipher) in db.load_cipher_hashes(&self.tree_id)? {
            map.insert(plain, cipher);
        }
        map.loaded = true;
        Ok(())
    }

    /// Whether this device can seal (it holds the read-write key).
    pub fn can_seal(&self) -> bool {
        matches!(self.key, FolderKey::ReadWrite(_))
    }

    /// Seals `entries` (local entries, in sequence order), encrypting the
    /// chunks whose ciphertext hash is not known yet from `chunks` (each read
    /// verified), and records the new hashes in `db`. The chunks are
    /// encrypted in pieces of [`PIECE_BYTES`]; after each, the chunks of
    /// every entry of at least [`HINT_MIN_BYTES`] whose ciphertext hashes
    /// are known so far go to `hint`, so that the storage peer fetches them
    /// while the rest is encrypted. Blocking.
    pub fn seal(
        &self,
        entries: &[FileEntry],
        chunks: &ChunkMap,
        db: &IndexDb,
        hint: &mut dyn FnMut(ChunkHint),
    ) -> SealedGroup {
        let FolderKey::ReadWrite(key) = &self.key else {
            return SealedGroup {
                entries: Vec::new(),
                skipped: Vec::new(),
            };
        };
        // The chunks never encrypted yet, each once, in file order.
        let mut seen = HashSet::new();
        let todo: Vec<ChunkRef> = entries
            .iter()
            .filter(|e| e.is_live())
            .filter_map(|e| e.content.as_ref())
            .flat_map(|c| c.chunks.iter().copied())
            .filter(|c| self.cipher_hash(&c.hash).is_none() && seen.insert(c.hash))
            .collect();
        let mut hinted: Vec<Hinting> = entries
            .iter()
            .filter(|e| e.is_live() && e.size >= HINT_MIN_BYTES)
            .filter_map(|e| Hinting::new(key.data_key(), e))
            .collect();
        let mut new_pairs = Vec::new();
        let mut unreadable = HashSet::new();
        for piece in pieces(&todo) {
            let (pairs, bad) = self.encrypt_all(piece, key.data_key(), chunks);
            new_pairs.extend(pairs);
            unreadable.extend(bad);
            for h in &mut hinted {
                h.send_known(|c| self.cipher_hash(c), hint);
            }
        }
        let mut out = Vec::with_capacity(entries.len());
        let mut skipped = Vec::new();
        for e in entries {
            let missing = e.is_live()
                && match &e.content {
                    Some(c) => c.chunks.iter().any(|c| unreadable.contains(&c.hash)),
                    None => e.kind == FileKind::File,
                };
            if missing {
                skipped.push(format!("{}: content not readable now", e.path));
                continue;
            }
            match seal_entry(key, e, |c| self.cipher_hash(&c.hash)) {
                Ok(sealed) => out.push(sealed),
                Err(err) => skipped.push(err.to_string()),
            }
        }
        if let Err(e) = db.add_cipher_hashes(&self.tree_id, &new_pairs) {
            tracing::warn!("folder {}: recording cipher hashes: {e:#}", self.share);
        }
        SealedGroup {
            entries: out,
            skipped,
        }
    }

    /// Reads (verified) and encrypts `todo` on a few threads, in order;
    /// returns the new (plaintext hash, ciphertext hash) pairs and the
    /// chunks that could not be read.
    fn encrypt_all(
        &self,
        todo: &[ChunkRef],
        data: &DataKey,
        chunks: &ChunkMap,
    ) -> (Vec<(Hash, Hash)>, HashSet<Hash>) {
        let next = AtomicUsize::new(0);
        let pairs = Mutex::new(Vec::with_capacity(todo.len()));
        let unreadable = Mutex::new(HashSet::new());
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, SEAL_THREADS);
        std::thread::scope(|s| {
            for _ in 0..workers.min(todo.len()) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(c) = todo.get(i) else { break };
                        let Some(plain) = chunks.read_chunk(&c.hash, c.len) else {
                            unreadable.lock().expect("poisoned").insert(c.hash);
                            continue;
                        };
                        let enc = data.encrypt_chunk_with_hash(c.hash, &plain);
                        drop(plain);
                        self.map
                            .lock()
                            .expect("poisoned")
                            .insert(c.hash, enc.cipher_hash);
                        pairs
                            .lock()
                            .expect("poisoned")
                            .push((c.hash, enc.cipher_hash));
                        self.spool
                            .insert(enc.cipher_hash, enc.ciphertext, Instant::now());
                    }
                });
            }
        });
        (
            pairs.into_inner().expect("poisoned"),
            unreadable.into_inner().expect("poisoned"),
        )
    }

    fn cipher_hash(&self, plain: &Hash) -> Option<Hash> {
        self.map
            .lock()
            .expect("poisoned")
            .by_plain
            .get(plain)
            .copied()
    }

    /// The ciphertext of the chunk whose ciphertext hash is `hash` and length
    /// `len`, if this device has its plaintext: from the spool, or read
    /// (verified) from `chunks` and encrypted. Blocking.
    pub fn serve(&self, hash: &Hash, len: u32, chunks: &ChunkMap) -> Option<Vec<u8>> {
        if let Some(ct) = self.spool.take(hash, len) {
            return Some(ct);
        }
        let data = self.key.data_key()?;
        let plain_hash = *self.map.lock().expect("poisoned").by_cipher.get(hash)?;
        let plain_len = len.checked_sub(meshsync_core::encrypted_index::CHUNK_TAG_LEN)?;
        let plain = chunks.read_chunk(&plain_hash, plain_len)?;
        let enc = data.encrypt_chunk_with_hash(plain_hash, &plain);
        (enc.cipher_hash == *hash).then_some(enc.ciphertext)
    }

    /// How often a request was served from the spool, and how
    /// often a chunk had to be encrypted again.
    pub fn recent_stats(&self) -> (u64, u64) {
        self.spool.stats()
    }
}

/// Splits chunks to encrypt into pieces of about [`PIECE_BYTES`].
fn pieces(todo: &[ChunkRef]) -> Vec<&[ChunkRef]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, c) in todo.iter().enumerate() {
        bytes += u64::from(c.len);
        if bytes >= PIECE_BYTES {
            out.push(&todo[start..=i]);
            (start, bytes) = (i + 1, 0);
        }
    }
    if start < todo.len() {
        out.push(&todo[start..]);
    }
    out
}

/// An entry being hinted: its encrypted path and how many of its chunks
/// went out in hints.
struct Hinting<'e> {
    entry: &'e FileEntry,
    path: RelPath,
    sent: usize,
}

impl<'e> Hinting<'e> {
    fn new(data: &DataKey, entry: &'e FileEntry) -> Option<Self> {
        let encrypted = data.encrypt_path(entry.path.as_str()).ok()?;
        Some(Hinting {
            entry,
            path: RelPath::new(&encrypted).ok()?,
            sent: 0,
        })
    }

    /// Sends the chunks after the ones sent already whose ciphertext hashes
    /// are known now, in order (up to the first that is not).
    fn send_known(
        &mut self,
        cipher_hash: impl Fn(&Hash) -> Option<Hash>,
        hint: &mut dyn FnMut(ChunkHint),
    ) {
        let Some(content) = &self.entry.content else {
            return;
        };
        while self.sent < content.chunks.len() {
            let known: Vec<ChunkRef> = content.chunks[self.sent..]
                .iter()
                .take(MAX_HINT_CHUNKS)
                .map_while(|c| {
                    cipher_hash(&c.hash).map(|hash| ChunkRef {
                        hash,
                        len: c.len + CHUNK_TAG_LEN,
                    })
                })
                .collect();
            if known.is_empty() {
                return;
            }
            let n = known.len();
            hint(ChunkHint {
                path: self.path.clone(),
                version: self.entry.version.clone(),
                first: self.sent as u32,
                chunks: known,
            });
            self.sent += n;
        }
    }
}

/// What one storage peer announced of a folder, opened with the data key.
pub struct ReaderView {
    data: DataKey,
    verify: VerifyKey,
    state: Mutex<ViewState>,
}

#[derive(Default)]
struct ViewState {
    /// Every version per path that no other dominates.
    versions: HashMap<RelPath, Vec<FileEntry>>,
    /// The ciphertext of each plaintext chunk announced.
    cipher_of: HashMap<Hash, ChunkRef>,
}

impl ReaderView {
    /// An empty view, for a folder held with `data` and `verify`.
    pub fn new(data: DataKey, verify: VerifyKey) -> Self {
        ReaderView {
            data,
            verify,
            state: Mutex::new(ViewState::default()),
        }
    }

    /// The data key (for decrypting fetched chunks).
    pub fn data_key(&self) -> &DataKey {
        &self.data
    }

    /// The verify key (for opening entries).
    pub fn verify_key(&self) -> &VerifyKey {
        &self.verify
    }

    /// The ciphertext the storage peer serves for plaintext chunk `plain`.
    pub fn cipher_of(&self, plain: &Hash) -> Option<ChunkRef> {
        self.state
            .lock()
            .expect("poisoned")
            .cipher_of
            .get(plain)
            .copied()
    }

    /// Takes in opened entries; returns, for every path they touched, the
    /// entry that now stands for the storage peer's view of it (among
    /// concurrent versions, the one the global view would pick), to hand to
    /// the folder as the peer's index.
    pub fn apply(&self, opened: Vec<OpenedEntry>) -> Vec<FileEntry> {
        let mut st = self.state.lock().expect("poisoned");
        let mut touched = Vec::new();
        for o in opened {
            if let Some(content) = &o.entry.content {
                for (plain, cipher) in content.chunks.iter().zip(&o.cipher_chunks) {
                    st.cipher_of.insert(plain.hash, *cipher);
                }
            }
            let path = o.entry.path.clone();
            let kept = st.versions.entry(path.clone()).or_default();
            match admit(kept.iter().map(|e| &e.version), &o.entry.version) {
                Admission::Known | Admission::Dominated => continue,
                Admission::Admit { supersedes } => {
                    for i in supersedes.into_iter().rev() {
                        kept.remove(i);
                    }
                    kept.push(o.entry);
                }
            }
            touched.push(path);
        }
        touched.sort();
        touched.dedup();
        touched
            .into_iter()
            .filter_map(|p| preferred(st.versions.get(&p)?))
            .collect()
    }
}

/// The version of a path the global view picks among concurrent ones.
fn preferred(versions: &[FileEntry]) -> Option<FileEntry> {
    let layers: Vec<Index> = versions
        .iter()
        .map(|e| Index::from([(e.path.clone(), e.clone())]))
        .collect();
    let maps: Vec<&dyn EntryMap> = layers.iter().map(|l| l as &dyn EntryMap).collect();
    global_index(&maps).into_values().next()
}

#[cfg(test)]
mod tests {
    use meshsync_core::entry::Timestamp;
    use meshsync_core::ids::ShortId;
    use meshsync_core::keys::ReadWriteKey;
    use meshsync_core::version::VersionVector;

    use super::*;

    fn entry(path: &str, pairs: &[(u64, u64)], mtime: i64) -> OpenedEntry {
        let mut version = VersionVector::new();
        for &(d, c) in pairs {
            let _ = version.bump_at(ShortId(d), c);
        }
        OpenedEntry {
            entry: FileEntry {
                path: RelPath::new(path).unwrap(),
                kind: FileKind::Directory,
                size: 0,
                mtime: Timestamp {
                    secs: mtime,
                    nanos: 0,
                },
                permissions: 0o755,
                symlink_target: None,
                content: None,
                version,
                deleted: false,
                sequence: 1,
            },
            cipher_chunks: Vec::new(),
        }
    }

    #[test]
    fn the_view_keeps_concurrent_versions_and_reports_the_preferred_one() {
        let k = ReadWriteKey::from_secret(&[1; 32]);
        let view = ReaderView::new(k.data_key().clone(), k.verify_key().clone());
        let a = entry("p", &[(1, 5)], 100);
        let b = entry("p", &[(2, 5)], 200);
        assert_eq!(view.apply(vec![a.clone()]), vec![a.entry.clone()]);
        let chosen = view.apply(vec![b.clone()]);
        assert_eq!(chosen.len(), 1);
        assert_eq!(view.state.lock().unwrap().versions[&a.entry.path].len(), 2);
        // An old version changes nothing.
        assert!(view.apply(vec![entry("p", &[(1, 4)], 1)]).is_empty());
        // A resolution replaces both.
        let r = entry("p", &[(1, 5), (2, 6)], 50);
        assert_eq!(view.apply(vec![r.clone()]), vec![r.entry.clone()]);
        assert_eq!(view.state.lock().unwrap().versions[&a.entry.path].len(), 1);
    }
}
