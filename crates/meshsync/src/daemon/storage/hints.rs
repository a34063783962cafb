//! Chunk hints on sealed links (`meshsync_proto::sealed`, stream kind
//! `0x03`): the chunks of a large file a reading device is still sealing,
//! sent to a storage peer ahead of the file's signed entry.
//!
//! Why: a storage peer can fetch nothing of a file before its sealed entry,
//! and the entry lists the ciphertext hash of every chunk, so without hints
//! the sending device encrypts a whole file (0.7–1.3 s for 512 MiB here)
//! before the first byte moves, and keeps all of its ciphertext until it is
//! asked for (on disk: the spool). With hints the sealer announces each
//! piece as it is encrypted ([`super::sealer`]), the storage peer fetches it
//! right behind (into a partial pack of its own, [`super::store`]), and the
//! ciphertext is usually served from memory.
//!
//! A hint is not signed and proves nothing. The storage peer never serves
//! or records what it fetched for one; it counts a fetched chunk for the
//! signed entry only where that entry lists the same chunk at the same
//! place, and drops a hinted pack that no entry claims in time. So a
//! hostile peer holding the access key can make a storage peer download and
//! hold, for a while, a bounded amount of bytes of its choosing, and
//! nothing more.
//!
//! Never: a plaintext name or chunk hash in a hint (it carries the encrypted
//! path and the ciphertext hashes the entry will carry).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, anyhow};
use meshsync_core::ids::ShareId;
use meshsync_proto::sealed::{ChunkHint, ChunkHintReader, ChunkHintsHeader, frame_hint};
use tokio::sync::mpsc;

use super::FolderStorage;
use crate::daemon::Daemon;
use crate::daemon::peer::PeerLink;

/// Starts sending hints for `share` to the storage peer on `link`: hints
/// given to the returned sender go out on one chunk hint stream, opened at
/// the first. A peer that refuses or resets the stream gets no more hints
/// (they are only an optimisation).
pub fn sender(link: Arc<PeerLink>, share: ShareId) -> mpsc::UnboundedSender<ChunkHint> {
    let (tx, mut rx) = mpsc::unbounded_channel::<ChunkHint>();
    tokio::spawn(async move {
        let mut stream: Option<quinn::SendStream> = None;
        while let Some(hint) = rx.recv().await {
            let frame = match frame_hint(&hint) {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!("hint for {share}: {e}");
                    continue;
                }
            };
            let sent = async {
                if stream.is_none() {
                    let (mut send, _recv) = link.conn.open_chunk_stream().await?;
                    send.write_all(&ChunkHintsHeader { share }.encode()).await?;
                    stream = Some(send);
                }
                let send = stream.as_mut().expect("opened above");
                send.write_all(&frame).await?;
                Ok::<_, anyhow::Error>(())
            }
            .await;
            if let Err(e) = sent {
                tracing::debug!("chunk hints of {share} to {}: {e:#}", link.device);
                return;
            }
        }
        if let Some(mut send) = stream {
            let _ = send.finish();
        }
    });
    tx
}

/// Receives a chunk hint stream whose kind byte was read already: on a
/// storage-only folder open and sealed on this link, each hint goes to the
/// store; any other folder's stream is stopped.
pub async fn receive(
    daemon: Arc<Daemon>,
    link: Arc<PeerLink>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<()> {
    let mut header =
        [meshsync_proto::sealed::STREAM_KIND_CHUNK_HINTS; ChunkHintsHeader::ENCODED_LEN];
    recv.read_exact(&mut header[1..]).await?;
    let share = ChunkHintsHeader::decode(&header)?.share;
    let _ = send.finish();
    let open =
        link.folders.lock().expect("poisoned").contains(&share) && link.sealed.is_sealed(&share);
    let rt = daemon.folder(&share).filter(|_| open);
    let Some((rt, store)) = rt.and_then(|rt| match &rt.storage {
        FolderStorage::Store(s) => Some((Arc::clone(&rt), Arc::clone(s))),
        FolderStorage::Reader(_) => None,
    }) else {
        let _ = recv.stop(quinn::VarInt::from(
            meshsync_proto::CloseCode::UnknownMessage.to_u16(),
        ));
        return Ok(());
    };
    let mut reader = ChunkHintReader::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let pushed = match recv.read(&mut buf).await? {
            None => return reader.finish().map_err(|e| anyhow!("{e}")),
            Some(n) => reader.push(&buf[..n]),
        };
        let mut next = pushed.and_then(|()| reader.next_hint());
        loop {
            match next {
                Ok(Some(hint)) => {
                    let (s, peer) = (Arc::clone(&store), link.device);
                    let new =
                        tokio::task::spawn_blocking(move || s.hint(peer, hint, Instant::now()))
                            .await?;
                    if new {
                        rt.wake.notify_one();
                    }
                    next = reader.next_hint();
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = recv.stop(quinn::VarInt::from(
                        meshsync_proto::CloseCode::Malformed.to_u16(),
                    ));
                    return Err(anyhow!("chunk hints from {}: {e}", link.device));
                }
            }
        }
    }
}
