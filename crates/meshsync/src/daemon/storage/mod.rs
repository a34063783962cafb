//! Storage-only (encrypted-key) peers in the daemon: both ends of a link on
//! which one side holds only a folder's encrypted key.
//!
//! A link is **sealed** for a folder when the peer did not prove it can read
//! it (no read proof: it holds the encrypted key, or this device does and
//! cannot check). On a sealed link nothing plaintext is ever sent: no index
//! batch on the control stream, no chunk by its plaintext hash. Instead:
//!
//! - **Index**: each side that wants the other's index opens a sealed index
//!   stream (`meshsync_proto::sealed`) and receives
//!   [`SealedEntry`](meshsync_core::encrypted_index::SealedEntry)s, each
//!   signed by a read-write device ([`stream`]). A read-write device streams
//!   its local index sealed and signed ([`sealer`]); a storage-only device
//!   streams what it keeps, signatures as received ([`store`]); a read-only
//!   device cannot sign and is not asked.
//! - **Hints**: while it seals a large file, a read-write device sends the
//!   storage peer the chunks encrypted so far, unsigned, ahead of the entry
//!   ([`hints`]), so that the storage peer fetches them at once; they count
//!   only where the signed entry agrees.
//! - **Chunks**: requested by ciphertext hash and length. A storage-only
//!   device serves them from its blob store; a reading device maps the
//!   ciphertext hash to the plaintext chunk, reads it (verified) and encrypts
//!   it on the fly ([`sealer`]). A reading device fetching from a storage
//!   peer asks for the ciphertext of each plaintext chunk it needs, checks its
//!   hash, decrypts it and checks the plaintext hash.
//!
//! On a storage-only device ([`store`]), the folder never scans its
//! directory and holds ciphertext only: one pack of encrypted chunks per
//! entry version under `.meshsync/blobs/` (docs/store.md says why not one
//! file per chunk), sealed entries in the index database. It keeps every
//! version of a path that no other dominates, fetches their chunks from the
//! peers that announced them, and relays them to every peer.
//!
//! Rules: a storage-only device must never believe an entry whose signature
//! does not verify, and never resolves a conflict; a reading device must
//! never send plaintext on a sealed link, and never write a chunk it did not
//! decrypt and check.

pub mod hints;
pub mod sealer;
pub mod spool;
pub mod store;
pub mod stream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow};
use meshsync_core::entry::ChunkRef;
use meshsync_core::ids::{DeviceId, ShareId};
use meshsync_core::keys::{FolderKey, KeyKind};
use meshsync_proto::chunk::{ChunkRequest, ChunkResponse};
use meshsync_store::db::IndexDb;

use super::folder::Folder;
use super::peer::PeerLink;
use super::{Daemon, FolderRuntime};
use sealer::{ReaderView, Sealer};
use store::SealedStore;

/// What a folder needs for storage-only links: a storage-only folder's
/// store, or a reading folder's sealer.
pub enum FolderStorage {
    /// This device holds the encrypted key: the folder is ciphertext only.
    Store(Arc<SealedStore>),
    /// This device reads the folder (read-write or read-only key).
    Reader(Arc<Sealer>),
}

impl FolderStorage {
    /// Opens what `folder` needs: the blob store and sealed index of a
    /// storage-only folder (loaded from `db`), or a reader's sealer (its
    /// cipher-hash cache is loaded on the first sealed link).
    pub fn open(folder: &Folder, db: &Arc<IndexDb>) -> Result<Self> {
        Ok(match &folder.key {
            FolderKey::Encrypted(key) => FolderStorage::Store(Arc::new(SealedStore::open(
                folder,
                key.verify_key().clone(),
                db,
            )?)),
            key => FolderStorage::Reader(Arc::new(Sealer::new(
                folder.share,
                key.clone(),
                &folder.root,
            ))),
        })
    }

    /// The store, on a storage-only folder.
    pub fn store(&self) -> Option<&Arc<SealedStore>> {
        match self {
            FolderStorage::Store(s) => Some(s),
            FolderStorage::Reader(_) => None,
        }
    }

    /// Live files and their bytes (ciphertext on a storage-only folder),
    /// when they are not the folder's local index.
    pub fn local_counts(&self) -> Option<(u64, u64)> {
        self.store().map(|s| s.local_counts())
    }

    /// Forgets what `peer` announced (it disconnected).
    pub fn forget_peer(&self, peer: &DeviceId) {
        if let FolderStorage::Store(s) = self {
            s.forget_peer(peer);
        }
    }
}

/// Which folders are sealed on one link, and for a reading device, what the
/// storage peer announced.
#[derive(Default)]
pub struct SealedLinks {
    folders: Mutex<HashMap<ShareId, Option<Arc<ReaderView>>>>,
}

impl SealedLinks {
    /// Whether `share` is sealed on this link (never send it plaintext).
    pub fn is_sealed(&self, share: &ShareId) -> bool {
        self.folders.lock().expect("poisoned").contains_key(share)
    }

    /// The storage peer's announced index, on a reading device.
    pub fn reader_view(&self, share: &ShareId) -> Option<Arc<ReaderView>> {
        self.folders
            .lock()
            .expect("poisoned")
            .get(share)
            .cloned()
            .flatten()
    }
}

/// A folder opened on `link` without the peer's read proof: marks it sealed
/// and starts receiving the peer's sealed index if the peer can have one (a
/// read-write or storage-only peer; a read-only one cannot sign). Returns
/// `false` when this device has no such folder running.
pub fn open_link(
    daemon: &Arc<Daemon>,
    link: &Arc<PeerLink>,
    share: ShareId,
    kind: KeyKind,
) -> bool {
    let Some(rt) = daemon.folder(&share) else {
        return false;
    };
    let view = match &rt.storage {
        FolderStorage::Store(_) => None,
        FolderStorage::Reader(sealer) => {
            let (Some(data), verify) = (rt.folder.key.data_key(), rt.folder.key.verify_key())
            else {
                return false;
            };
            if let Err(e) = sealer.load(&daemon.db) {
                tracing::warn!("folder {share}: loading chunk cipher hashes: {e:#}");
            }
            Some(Arc::new(ReaderView::new(data.clone(), verify.clone())))
        }
    };
    link.sealed
        .folders
        .lock()
        .expect("poisoned")
        .insert(share, view);
    tracing::info!(
        "peer {} holds folder {share} without its data key: sealed link (ciphertext only)",
        link.device
    );
    if kind != KeyKind::ReadOnly {
        let (d, l) = (Arc::clone(daemon), Arc::clone(link));
        tokio::spawn(async move {
            if let Err(e) = stream::receive(&d, &l, share).await {
                tracing::info!("sealed index of {share} from {}: {e:#}", l.device);
            }
        });
    }
    true
}

/// Fetches plaintext chunk `chunk` from a storage peer: its ciphertext by
/// the hash the peer announced, checked, decrypted and checked again.
pub async fn fetch_from_store(
    link: &PeerLink,
    share: ShareId,
    chunk: ChunkRef,
    view: &ReaderView,
    stall: std::time::Duration,
) -> Result<Vec<u8>> {
    let cipher = view.cipher_of(&chunk.hash).ok_or_else(|| {
        anyhow!(
            "the storage peer did not announce chunk {}",
            chunk.hash.to_hex()
        )
    })?;
    let ciphertext = super::peer::fetch_chunk(&link.conn, share, cipher, stall).await?;
    let plain_hash = chunk.hash;
    let data = view.data_key().clone();
    tokio::task::spawn_blocking(move || {
        if meshsync_core::ids::Hash::of(&ciphertext) != cipher.hash {
            return Err(anyhow!(
                "encrypted chunk {} from the storage peer does not match its hash",
                cipher.hash.to_hex()
            ));
        }
        data.decrypt_chunk(&plain_hash, &ciphertext)
            .map_err(|e| anyhow!("encrypted chunk {}: {e}", cipher.hash.to_hex()))
    })
    .await?
}

/// Serves a chunk request on a sealed link: ciphertext only, by its hash.
pub async fn serve_chunk(
    rt: Arc<FolderRuntime>,
    request: ChunkRequest,
    send: &mut quinn::SendStream,
    limit: &super::bandwidth::Bandwidth,
) -> Result<u64> {
    let bytes = match &rt.storage {
        FolderStorage::Store(store) => {
            let s = Arc::clone(store);
            let bytes =
                tokio::task::spawn_blocking(move || s.read_chunk(&request.hash, request.len))
                    .await?;
            if bytes.is_none() && store.needs_repair() {
                // A damaged chunk was dropped: fetch it again if a peer has it.
                rt.wake.notify_one();
            }
            bytes
        }
        FolderStorage::Reader(sealer) => {
            let sealer = Arc::clone(sealer);
            let map = rt.folder.chunk_map();
            tokio::task::spawn_blocking(move || sealer.serve(&request.hash, request.len, &map))
                .await?
        }
    };
    match bytes {
        Some(bytes) => {
            send.write_all(&ChunkResponse::found(&request).encode())
                .await?;
            let len = bytes.len() as u64;
            limit.write_limited(send, bytes).await?;
            send.finish()?;
            Ok(len)
        }
        None => {
            send.write_all(&ChunkResponse::not_found().encode()).await?;
            send.finish()?;
            Ok(0)
        }
    }
}
