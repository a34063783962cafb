//! Chunk deltas on the wire (stream kind `0x05`, protocol version 5): a
//! chunk fetched as an rsync delta against bytes this device already has
//! (`meshsync_proto::delta` says what the bytes are and why).
//!
//! The requester side is [`fetch`]; the pull decides when a chunk has a
//! base worth a delta (the rule is `meshsync_core::pull::delta_base`, pure;
//! pull.rs reads the region). The responder side is
//! [`serve`]: it reads the chunk as a plain request would (whole files,
//! then files still downloading), makes the delta on the blocking pool,
//! and sends it.
//!
//! Plaintext only: a sealed (storage-only) link never carries a delta,
//! since its chunks are ciphertext and its peer holds no plaintext base.
//! This module must never write a rebuilt chunk anywhere: the caller checks
//! its hash first, like every fetched chunk.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Result, bail};
use meshsync_core::entry::ChunkRef;
use meshsync_core::ids::ShareId;
use meshsync_net::PeerConnection;
use meshsync_proto::chunk::{ChunkResponse, ChunkStatus};
use meshsync_proto::delta::{self, DeltaRequest};

use super::Daemon;
use super::peer::PeerLink;
use super::runs::{read_body, read_group, within};

/// What a delta fetch brought: the rebuilt chunk (not yet verified) and the
/// bytes the delta took on the wire.
pub struct Rebuilt {
    /// The chunk's bytes, to be checked against its hash.
    pub bytes: Vec<u8>,
    /// Bytes of delta received.
    pub wire: u64,
}

/// Asks the peer on `conn` for `chunk` as a delta against `base`; every step
/// waits at most `stall` for the peer.
pub async fn fetch(
    conn: &PeerConnection,
    share: ShareId,
    chunk: ChunkRef,
    base: Vec<u8>,
    stall: Duration,
) -> Result<Rebuilt> {
    let base = Arc::new(base);
    let signature = {
        let base = Arc::clone(&base);
        tokio::task::spawn_blocking(move || delta::signature(&base)).await?
    };
    let request = DeltaRequest {
        share,
        hash: chunk.hash,
        len: chunk.len,
        signature_len: u32::try_from(signature.len())?,
    };
    let (mut send, mut recv) = within(stall, conn.open_chunk_stream()).await??;
    within(stall, send.write_all(&request.encode_header())).await??;
    within(stall, send.write_all(&signature)).await??;
    send.finish()?;
    let mut header = [0u8; ChunkResponse::ENCODED_LEN];
    within(stall, recv.read_exact(&mut header)).await??;
    let response = request.decode_response(&header)?;
    if response.status != ChunkStatus::Found {
        bail!("peer answered {:?}", response.status);
    }
    let delta_bytes = read_body(&mut recv, response.len, stall).await?;
    let wire = delta_bytes.len() as u64;
    let bytes =
        tokio::task::spawn_blocking(move || delta::apply(&base, &delta_bytes, chunk.len)).await??;
    Ok(Rebuilt { bytes, wire })
}

/// Serves one delta request (its kind byte already read from `recv`).
pub async fn serve(
    daemon: Arc<Daemon>,
    link: Arc<PeerLink>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<()> {
    let mut header = [0u8; DeltaRequest::HEADER_LEN];
    header[0] = delta::STREAM_KIND_CHUNK_DELTA;
    recv.read_exact(&mut header[1..]).await?;
    let request = DeltaRequest::decode_header(&header)?;
    let mut signature = vec![0u8; request.signature_len as usize];
    recv.read_exact(&mut signature).await?;
    delta::check_signature(&signature)?;
    let open = link
        .folders
        .lock()
        .expect("poisoned")
        .contains(&request.share);
    let folder = daemon
        .folder(&request.share)
        .filter(|_| open && !link.sealed.is_sealed(&request.share));
    let Some(rt) = folder else {
        send.write_all(&ChunkResponse::refused().encode()).await?;
        send.finish()?;
        return Ok(());
    };
    let chunk = ChunkRef {
        hash: request.hash,
        len: request.len,
    };
    let served = read_group(&rt, &[chunk]).await?.pop().flatten();
    let Some((bytes, _)) = served else {
        send.write_all(&ChunkResponse::not_found().encode()).await?;
        send.finish()?;
        return Ok(());
    };
    let made = tokio::task::spawn_blocking(move || delta::diff(&signature, &bytes)).await??;
    let len = u32::try_from(made.len())?;
    if len > request.max_delta_len() {
        // Cannot happen with librsync's encoding (literal runs cost a few
        // bytes each); refusing keeps the limit a promise.
        send.write_all(&ChunkResponse::not_found().encode()).await?;
        send.finish()?;
        return Ok(());
    }
    send.write_all(&request.found(len).encode()).await?;
    daemon
        .peers
        .send_limit
        .write_limited(&mut send, made)
        .await?;
    send.finish()?;
    link.bytes_out.fetch_add(u64::from(len), Ordering::Relaxed);
    daemon
        .counters
        .bytes_sent
        .fetch_add(u64::from(len), Ordering::Relaxed);
    Ok(())
}
