//! Sealed index streams in the daemon (`meshsync_proto::sealed`): serving
//! this device's sealed index to a peer on a sealed link, and receiving the
//! peer's.
//!
//! Served: a storage-only folder streams the entries it keeps (as received,
//! signatures included, numbered by its own sequence); a read-write folder
//! seals and signs its local entries in groups, so the storage peer starts
//! fetching the first files while later ones are still being encrypted; a
//! read-only or receive-only folder has nothing it may sign and sends
//! nothing. After the
//! whole index, each change follows as the folder's sequence moves.
//!
//! Received: every entry's signature is checked off the runtime before
//! anything is kept. One that fails means the peer is broken or hostile: the
//! stream stops and the peer is not asked for this folder's chunks again on
//! this connection. A reading device opens each entry (path and metadata);
//! a validly signed entry that does not open (a buggy writer) is skipped.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use meshsync_core::encrypted_index::{OpenError, SealedEntry, open_entry, verify_sealed_entry};
use meshsync_core::entry::FileEntry;
use meshsync_core::ids::ShareId;
use meshsync_proto::limits::MAX_BATCH_ENTRIES;
use meshsync_proto::sealed::{
    STREAM_KIND_SEALED_INDEX, SealedBatch, SealedBatchReader, SealedBatchWriter,
    SealedIndexRequest, SealedIndexStatus,
};

use super::super::pull::ChunkSource;
use super::super::{Daemon, FolderRuntime};
use super::FolderStorage;
use super::sealer::Sealer;
use super::store::SealedStore;
use crate::daemon::peer::PeerLink;

/// How long a request waits for its folder to open on this side.
const OPEN_WAIT: Duration = Duration::from_secs(10);
/// Encoded bytes one sealed batch may hold (well under the 16 MiB frame).
const BATCH_BYTES: usize = 4 << 20;
/// Plaintext a read-write device encrypts for one group before sending it.
const GROUP_PLAIN_BYTES: u64 = 32 << 20;

/// A generous estimate of a sealed entry's encoded size.
fn sealed_size(e: &SealedEntry) -> usize {
    160 + e.path.as_str().len()
        + 40 * e.chunks.len()
        + e.metadata.len()
        + 16 * e.version.counters().len()
}

/// Serves a sealed index stream whose kind byte was read already.
pub async fn serve(
    daemon: Arc<Daemon>,
    link: Arc<PeerLink>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<()> {
    let mut header = [STREAM_KIND_SEALED_INDEX; SealedIndexRequest::ENCODED_LEN];
    recv.read_exact(&mut header[1..]).await?;
    let share = SealedIndexRequest::decode(&header)?.share;
    // When both sides offered at once, the peer may see the folder open (and
    // ask) before this side has read its OpenFolder: wait for it a while.
    let deadline = tokio::time::Instant::now() + OPEN_WAIT;
    let open = loop {
        let open = link.folders.lock().expect("poisoned").contains(&share)
            && link.sealed.is_sealed(&share);
        if open
            || tokio::time::Instant::now() >= deadline
            || link.conn.connection.close_reason().is_some()
        {
            break open;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let Some(rt) = daemon.folder(&share).filter(|_| open) else {
        send.write_all(&[SealedIndexStatus::Refused.to_byte()])
            .await?;
        send.finish()?;
        return Ok(());
    };
    send.write_all(&[SealedIndexStatus::Streaming.to_byte()])
        .await?;
    let mut writer = SealedBatchWriter::new();
    let result = match &rt.storage {
        FolderStorage::Store(store) => serve_store(store, &link, &mut send, &mut writer).await,
        FolderStorage::Reader(sealer) if sealer.can_seal() && rt.folder.announces_changes() => {
            serve_reader(&daemon, &rt, sealer, &link, &mut send, &mut writer).await
        }
        FolderStorage::Reader(_) => {
            // Nothing this device could sign, or a receive-only folder whose
            // changes stay local: the stream stays empty.
            link.conn.connection.closed().await;
            Ok(())
        }
    };
    let _ = send.finish();
    result
}

/// Writes `entries` (sorted by sequence) as batches that end at `last`.
async fn write_batches(
    send: &mut quinn::SendStream,
    writer: &mut SealedBatchWriter,
    entries: Vec<SealedEntry>,
    last: u64,
) -> Result<()> {
    let mut batch: Vec<SealedEntry> = Vec::new();
    let mut bytes = 0;
    for e in entries {
        let size = sealed_size(&e);
        if !batch.is_empty() && (batch.len() >= MAX_BATCH_ENTRIES || bytes + size > BATCH_BYTES) {
            let end = batch.last().map_or(last, |b| b.sequence);
            send.write_all(&writer.frame(end, std::mem::take(&mut batch))?)
                .await?;
            bytes = 0;
        }
        bytes += size;
        batch.push(e);
    }
    if last >= writer.next() {
        send.write_all(&writer.frame(last, batch)?).await?;
    }
    Ok(())
}

async fn serve_store(
    store: &SealedStore,
    link: &PeerLink,
    send: &mut quinn::SendStream,
    writer: &mut SealedBatchWriter,
) -> Result<()> {
    let mut changed = store.sequence.subscribe();
    let mut sent = 0;
    loop {
        let (entries, last) = store.changes_since(sent);
        if last > sent {
            write_batches(send, writer, entries, last).await?;
            sent = last;
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return Ok(()) },
            _ = link.conn.connection.closed() => return Ok(()),
        }
    }
}

async fn serve_reader(
    daemon: &Arc<Daemon>,
    rt: &Arc<FolderRuntime>,
    sealer: &Arc<Sealer>,
    link: &Arc<PeerLink>,
    send: &mut quinn::SendStream,
    writer: &mut SealedBatchWriter,
) -> Result<()> {
    let hints = super::hints::sender(Arc::clone(link), rt.folder.share);
    let mut changed = rt.sequence.subscribe();
    let mut sent = 0;
    loop {
        // The maximum first: every entry up to it is in the index by then.
        let max = rt.folder.max_sequence();
        if max > sent {
            let mut entries = rt.folder.changes_since(sent);
            entries.retain(|e| e.sequence <= max);
            for (group, last) in groups(entries, max) {
                let (s, db) = (Arc::clone(sealer), Arc::clone(&daemon.db));
                let chunks = rt.folder.chunk_map();
                let started = std::time::Instant::now();
                let count = group.len();
                let tx = hints.clone();
                let sealed = tokio::task::spawn_blocking(move || {
                    s.seal(&group, &chunks, &db, &mut |h| {
                        let _ = tx.send(h);
                    })
                })
                .await?;
                tracing::debug!(
                    "folder {}: sealed {} of {count} entries up to {last} in {:?}",
                    rt.folder.share,
                    sealed.entries.len(),
                    started.elapsed()
                );
                for why in &sealed.skipped {
                    tracing::debug!("folder {}: not sealed for now: {why}", rt.folder.share);
                }
                write_batches(send, writer, sealed.entries, last).await?;
            }
            sent = max;
            let (hits, misses) = sealer.recent_stats();
            tracing::debug!(
                "folder {}: sealed index sent to {} up to {max} (ciphertext served from memory {hits}, encrypted again {misses})",
                rt.folder.share,
                link.device
            );
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return Ok(()) },
            _ = link.conn.connection.closed() => {
                let (hits, misses) = sealer.recent_stats();
                tracing::debug!(
                    "folder {}: link to {} closed (ciphertext served from memory {hits}, encrypted again {misses})",
                    rt.folder.share,
                    link.device
                );
                return Ok(());
            }
        }
    }
}

/// Splits local entries into groups to seal one after the other (bounded by
/// count and by the plaintext to encrypt), each with the sequence its batch
/// ends at (the last group's is `max`).
fn groups(entries: Vec<FileEntry>, max: u64) -> Vec<(Vec<FileEntry>, u64)> {
    let mut out: Vec<(Vec<FileEntry>, u64)> = Vec::new();
    let mut group = Vec::new();
    let mut bytes = 0u64;
    for e in entries {
        if !group.is_empty() && (group.len() >= MAX_BATCH_ENTRIES || bytes >= GROUP_PLAIN_BYTES) {
            let end = group.last().map_or(max, |g: &FileEntry| g.sequence);
            out.push((std::mem::take(&mut group), end));
            bytes = 0;
        }
        if e.is_live() {
            bytes += e.size;
        }
        group.push(e);
    }
    out.push((group, max));
    out
}

/// Receives the peer's sealed index of `share` until the connection ends.
pub async fn receive(daemon: &Arc<Daemon>, link: &Arc<PeerLink>, share: ShareId) -> Result<()> {
    let (mut send, mut recv) = link.conn.open_chunk_stream().await?;
    send.write_all(&SealedIndexRequest { share }.encode())
        .await?;
    send.finish()?;
    let mut status = [0u8; 1];
    recv.read_exact(&mut status).await?;
    if SealedIndexStatus::from_byte(status[0])? == SealedIndexStatus::Refused {
        bail!("the peer refused to send its sealed index");
    }
    let mut reader = SealedBatchReader::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match recv.read(&mut buf).await? {
            None => {
                reader.finish()?;
                return Ok(());
            }
            Some(n) => reader.push(&buf[..n])?,
        }
        while let Some(batch) = reader.next_batch()? {
            let Some(rt) = daemon.folder(&share) else {
                return Ok(());
            };
            if let Err(e) = take_batch(link, &rt, batch).await {
                let _ = recv.stop(quinn::VarInt::from(
                    meshsync_proto::CloseCode::BadSignature.to_u16(),
                ));
                daemon.peers.mark_bad(link.device, share);
                return Err(e);
            }
        }
    }
}

/// Verifies a received batch and hands it to the folder.
async fn take_batch(
    link: &Arc<PeerLink>,
    rt: &Arc<FolderRuntime>,
    batch: SealedBatch,
) -> Result<()> {
    let share = rt.folder.share;
    let last = batch.last_sequence;
    match &rt.storage {
        FolderStorage::Store(store) => {
            let s = Arc::clone(store);
            let entries = batch.entries;
            let entries = tokio::task::spawn_blocking(move || {
                for e in &entries {
                    verify_sealed_entry(s.verify_key(), e).map_err(|err| {
                        anyhow!("entry {} (sequence {}): {err}", e.path, e.sequence)
                    })?;
                }
                Ok::<_, anyhow::Error>(entries)
            })
            .await??;
            if store.receive(link.device, entries) > 0 || store.needs_repair() {
                rt.wake.notify_one();
            }
        }
        FolderStorage::Reader(_) => {
            let view = link
                .sealed
                .reader_view(&share)
                .ok_or_else(|| anyhow!("folder {share} is not sealed on this link"))?;
            let v = Arc::clone(&view);
            let entries = batch.entries;
            let opened = tokio::task::spawn_blocking(move || {
                let mut opened = Vec::with_capacity(entries.len());
                for e in &entries {
                    match open_entry(v.verify_key(), v.data_key(), e) {
                        Ok(o) => opened.push(o),
                        Err(OpenError::BadSignature) => {
                            return Err(anyhow!(
                                "entry {} (sequence {}): {}",
                                e.path,
                                e.sequence,
                                OpenError::BadSignature
                            ));
                        }
                        Err(err) => {
                            tracing::warn!("folder {share}: a signed entry does not open: {err}");
                        }
                    }
                }
                Ok(opened)
            })
            .await??;
            let chosen = view.apply(opened);
            rt.folder.receive_index(link.device, chosen, last, true);
            rt.wake.notify_one();
        }
    }
    Ok(())
}
