//! Chunk runs: the chunk requests of a pull to one peer, carried several
//! to a stream (protocol version 4, stream kind 0x04, docs/protocol.md).
//!
//! Every chunk the swarm pull wants from a peer goes into that link's
//! [`RunQueue`]. A link keeps at most [`RUN_STREAMS`] run streams open.
//! While one is free, a request leaves at once, alone; while all are busy,
//! requests queue, and each stream that finishes takes everything queued
//! for one folder (up to [`MAX_RUN_CHUNKS`] chunks and [`RUN_BYTES`]) as its
//! next run. So an idle link adds no delay, and a busy one spends one
//! stream on many chunks: on loopback, 1 GiB as 64 KiB streams cost 2.6 s of
//! transport against about 2 s as 1 MiB ones (meshsync-net's
//! `examples/throughput.rs --requests`).
//!
//! The answers arrive in order and each goes to its requester as soon as
//! its bytes are in, unverified: the requester hashes them (pull.rs), so a
//! lying peer is caught there exactly as with single chunk streams. A
//! chunk the peer does not have, or a stream that breaks, fails only the
//! chunks it carried; their requesters try other holders. So does a peer
//! that sends nothing for the stall time ([`Stalled`], `chunk_stall_secs`):
//! its keep-alives would hold the connection, and the pull with it, open
//! for good.
//!
//! This module must never hold more than one run's answers per stream, and
//! never serve a folder the peer has not opened on this connection.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use meshsync_core::entry::ChunkRef;
use meshsync_core::ids::ShareId;
use meshsync_net::PeerConnection;
use meshsync_proto::chunk::{
    ChunkRequest, ChunkResponse, ChunkRunRequest, ChunkStatus, MAX_RUN_CHUNKS,
};
use tokio::sync::oneshot;

use super::Daemon;
use super::peer::PeerLink;

/// Run streams open at once per link: with at most 1 MiB each, 8 MiB in
/// flight to one peer. Not tuned: 8 and 32 were alike on `small` within
/// the noise (docs/benchmarks.md, "Fourth session's build").
const RUN_STREAMS: usize = 8;

/// Bytes one run asks for, at most (a first chunk longer than this goes
/// alone).
const RUN_BYTES: u64 = 1 << 20;

/// How long a chunk request waits for the peer's next bytes by default
/// (`chunk_stall_secs` in the config). Long enough for a blackout a
/// connection survives (tests/impaired_link.rs: 6 s), short enough that a
/// peer that stops answering does not hold a round for the 30 s idle timeout
/// its keep-alives never let expire.
pub const DEFAULT_STALL: Duration = Duration::from_secs(20);

/// A peer sent nothing for the stall time: its chunks are asked of another
/// holder, and the pull asks it nothing more this round.
#[derive(Debug)]
pub struct Stalled(pub Duration);

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the peer sent nothing for {:?}", self.0)
    }
}

impl std::error::Error for Stalled {}

/// `step`, or [`Stalled`] if it takes longer than `stall`.
pub(super) async fn within<T>(
    stall: Duration,
    step: impl Future<Output = T>,
) -> Result<T, Stalled> {
    tokio::time::timeout(stall, step)
        .await
        .map_err(|_| Stalled(stall))
}

/// A chunk someone waits for.
struct Wanted {
    share: ShareId,
    chunk: ChunkRef,
    reply: oneshot::Sender<Result<Vec<u8>>>,
}

#[derive(Default)]
struct QueueState {
    waiting: VecDeque<Wanted>,
    streams: usize,
}

/// The chunk requests to one peer, batched into runs.
#[derive(Default)]
pub struct RunQueue {
    state: Mutex<QueueState>,
}

impl RunQueue {
    /// Fetches `chunk` of `share` from the peer on `conn`: the bytes as the
    /// peer sent them (the caller verifies them).
    pub async fn fetch(
        self: &Arc<Self>,
        conn: &PeerConnection,
        share: ShareId,
        chunk: ChunkRef,
        stall: Duration,
    ) -> Result<Vec<u8>> {
        let (reply, answer) = oneshot::channel();
        let first_run = {
            let mut state = self.state.lock().expect("poisoned");
            state.waiting.push_back(Wanted {
                share,
                chunk,
                reply,
            });
            if state.streams < RUN_STREAMS {
                state.streams += 1;
                Some(take_run(&mut state.waiting))
            } else {
                None
            }
        };
        if let Some(run) = first_run {
            tokio::spawn(drive(Arc::clone(self), conn.clone(), run, stall));
        }
        answer
            .await
            .map_err(|_| anyhow!("the run carrying the chunk was dropped"))?
    }
}

/// The oldest waiting request and every other one for its folder behind it,
/// within the run's limits.
fn take_run(waiting: &mut VecDeque<Wanted>) -> VecDeque<Wanted> {
    let Some(first) = waiting.pop_front() else {
        return VecDeque::new();
    };
    let share = first.share;
    let mut bytes = u64::from(first.chunk.len);
    let mut run = VecDeque::from([first]);
    let mut rest = VecDeque::with_capacity(waiting.len());
    for wanted in waiting.drain(..) {
        let len = u64::from(wanted.chunk.len);
        if run.len() < MAX_RUN_CHUNKS && wanted.share == share && bytes + len <= RUN_BYTES {
            bytes += len;
            run.push_back(wanted);
        } else {
            rest.push_back(wanted);
        }
    }
    *waiting = rest;
    run
}

/// One run stream's life: sends `run`, then the next queued one, until the
/// queue is empty.
async fn drive(
    queue: Arc<RunQueue>,
    conn: PeerConnection,
    mut run: VecDeque<Wanted>,
    stall: Duration,
) {
    loop {
        tracing::trace!(chunks = run.len(), "chunk run");
        let stalled = match send_run(&conn, &mut run, stall).await {
            Ok(()) => false,
            Err(e) => {
                tracing::debug!("chunk run to {}: {e:#}", conn.peer);
                e.downcast_ref::<Stalled>().is_some()
            }
        };
        // Whatever the run did not answer fails, so its requesters move on.
        for wanted in run.drain(..) {
            let _ = wanted.reply.send(Err(if stalled {
                Stalled(stall).into()
            } else {
                anyhow!("the peer's chunk run broke off")
            }));
        }
        let mut state = queue.state.lock().expect("poisoned");
        if state.waiting.is_empty() {
            state.streams -= 1;
            return;
        }
        run = take_run(&mut state.waiting);
    }
}

/// Asks for `run` on a new stream and hands each answer over as it
/// arrives, taking its requester out of `run`.
async fn send_run(
    conn: &PeerConnection,
    run: &mut VecDeque<Wanted>,
    stall: Duration,
) -> Result<()> {
    let request = ChunkRunRequest {
        share: run[0].share,
        chunks: run.iter().map(|w| w.chunk).collect(),
    };
    let (mut send, mut recv) = within(stall, conn.open_chunk_stream()).await??;
    within(stall, send.write_all(&request.encode())).await??;
    send.finish()?;
    for n in 0..request.chunks.len() {
        let mut header = [0u8; ChunkResponse::ENCODED_LEN];
        within(stall, recv.read_exact(&mut header))
            .await?
            .with_context(|| format!("reading answer {n}"))?;
        let response = ChunkResponse::decode(&header, &request.request(n))?;
        let answer = match response.status {
            ChunkStatus::Found => Ok(read_body(&mut recv, response.len, stall)
                .await
                .with_context(|| format!("reading chunk {n}"))?),
            other => Err(anyhow!("peer answered {other:?}")),
        };
        let wanted = run.pop_front().expect("one requester per chunk asked");
        let _ = wanted.reply.send(answer);
    }
    Ok(())
}

/// The chunks of a run split into consecutive groups of at most
/// [`RUN_BYTES`] (a longer chunk is a group alone).
fn read_groups(chunks: &[ChunkRef]) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (n, chunk) in chunks.iter().enumerate() {
        let len = u64::from(chunk.len);
        if n > start && bytes + len > RUN_BYTES {
            groups.push(start..n);
            (start, bytes) = (n, 0);
        }
        bytes += len;
    }
    if start < chunks.len() {
        groups.push(start..chunks.len());
    }
    groups
}

/// A chunk read for serving, and whether it came from a partial download.
pub(super) type Served = Option<(Vec<u8>, bool)>;

/// Reads `chunks` on the blocking pool: from whole files first, then from
/// big files still downloading (both read back and hashed before they are
/// served).
pub(super) fn read_group(
    rt: &super::FolderRuntime,
    chunks: &[ChunkRef],
) -> tokio::task::JoinHandle<Vec<Served>> {
    let map = rt.folder.chunk_map();
    let folder = Arc::clone(&rt.folder);
    let chunks = chunks.to_vec();
    tokio::task::spawn_blocking(move || {
        chunks
            .iter()
            .map(|c| match map.read_chunk(&c.hash, c.len) {
                Some(bytes) => Some((bytes, false)),
                None => folder.held.read(&c.hash, c.len).map(|b| (b, true)),
            })
            .collect()
    })
}

/// Reads the `len` bytes of a found chunk (appended as quinn hands them
/// over: no zeroed buffer first), waiting at most `stall` for each piece.
pub(super) async fn read_body(
    recv: &mut quinn::RecvStream,
    len: u32,
    stall: Duration,
) -> Result<Vec<u8>> {
    let len = len as usize;
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        match within(stall, recv.read_chunk(len - bytes.len(), true)).await?? {
            Some(piece) => bytes.extend_from_slice(&piece.bytes),
            None => bail!("the stream ended after {} of {len} bytes", bytes.len()),
        }
    }
    Ok(bytes)
}

/// Answers `request` with what [`read_group`] read for it (Found and the
/// bytes, or NotFound), and counts the bytes sent.
pub(super) async fn send_served(
    daemon: &Daemon,
    link: &PeerLink,
    send: &mut quinn::SendStream,
    request: &ChunkRequest,
    served: Served,
) -> Result<()> {
    let Some((bytes, partial)) = served else {
        send.write_all(&ChunkResponse::not_found().encode()).await?;
        return Ok(());
    };
    send.write_all(&ChunkResponse::found(request).encode())
        .await?;
    let len = bytes.len() as u64;
    daemon.peers.send_limit.write_limited(send, bytes).await?;
    if partial {
        daemon
            .counters
            .partial_bytes_sent
            .fetch_add(len, Ordering::Relaxed);
    }
    link.bytes_out.fetch_add(len, Ordering::Relaxed);
    daemon.counters.bytes_sent.fetch_add(len, Ordering::Relaxed);
    Ok(())
}

/// Serves one run request (its kind byte already read from `recv`).
pub(super) async fn serve(
    daemon: Arc<Daemon>,
    link: Arc<PeerLink>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<()> {
    let mut header = [0u8; ChunkRunRequest::HEADER_LEN];
    header[0] = meshsync_proto::chunk::STREAM_KIND_CHUNK_RUN;
    recv.read_exact(&mut header[1..]).await?;
    let (share, count) = ChunkRunRequest::decode_header(&header)?;
    let mut items = vec![0u8; count * ChunkRunRequest::ITEM_LEN];
    recv.read_exact(&mut items).await?;
    let request = ChunkRunRequest::decode_items(share, &items)?;
    let open = link.folders.lock().expect("poisoned").contains(&share);
    // Runs carry plaintext only: a sealed folder's chunks go one per stream,
    // encrypted (storage module).
    let folder = daemon
        .folder(&share)
        .filter(|_| open && !link.sealed.is_sealed(&share));
    let Some(rt) = folder else {
        for _ in 0..count {
            send.write_all(&ChunkResponse::refused().encode()).await?;
        }
        send.finish()?;
        return Ok(());
    };
    // Chunks are read in groups of up to RUN_BYTES on the blocking pool,
    // the next group while this one is sent: one thread hand-off per
    // group, not per chunk (a fifth of the server's CPU time went to
    // hand-offs when each chunk had its own).
    let groups = read_groups(&request.chunks);
    let mut reading = groups
        .first()
        .map(|g| read_group(&rt, &request.chunks[g.clone()]));
    for (k, group) in groups.iter().enumerate() {
        let read = reading.take().expect("a read per group").await?;
        if let Some(next) = groups.get(k + 1) {
            reading = Some(read_group(&rt, &request.chunks[next.clone()]));
        }
        for (n, served) in group.clone().zip(read) {
            send_served(&daemon, &link, &mut send, &request.request(n), served).await?;
        }
    }
    send.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use meshsync_core::ids::Hash;

    use super::*;

    fn wanted(share: u8, len: u32) -> (Wanted, oneshot::Receiver<Result<Vec<u8>>>) {
        let (reply, rx) = oneshot::channel();
        let chunk = ChunkRef {
            hash: Hash::of(&len.to_be_bytes()),
            len,
        };
        (
            Wanted {
                share: ShareId::from_bytes([share; 32]),
                chunk,
                reply,
            },
            rx,
        )
    }

    #[test]
    fn a_run_takes_one_folders_requests_in_order_within_its_limits() {
        let mut waiting = VecDeque::new();
        let mut receivers = Vec::new();
        for (share, len) in [(1, 100), (2, 5), (1, 200), (1, 1 << 20), (1, 300)] {
            let (w, rx) = wanted(share, len);
            waiting.push_back(w);
            receivers.push(rx);
        }
        let run = take_run(&mut waiting);
        let lens: Vec<u32> = run.iter().map(|w| w.chunk.len).collect();
        assert_eq!(
            lens,
            [100, 200, 300],
            "the 1 MiB chunk would pass RUN_BYTES"
        );
        let left: Vec<u32> = waiting.iter().map(|w| w.chunk.len).collect();
        assert_eq!(left, [5, 1 << 20], "the rest keeps its order");
        assert_eq!(take_run(&mut waiting).len(), 1);
        let alone = take_run(&mut waiting);
        assert_eq!(alone[0].chunk.len, 1 << 20, "a big chunk goes alone");
        assert!(take_run(&mut waiting).is_empty());
    }

    #[test]
    fn chunks_are_read_in_groups_of_at_most_run_bytes() {
        let chunk = |len: u32| ChunkRef {
            hash: Hash::of(b"x"),
            len,
        };
        let half = (RUN_BYTES / 2) as u32;
        let chunks = [
            chunk(half),
            chunk(half),
            chunk(1),
            chunk(3 * half),
            chunk(5),
        ];
        assert_eq!(read_groups(&chunks), [0..2, 2..3, 3..4, 4..5]);
        assert!(read_groups(&[]).is_empty());
    }

    #[test]
    fn a_run_holds_at_most_max_run_chunks() {
        let mut waiting = VecDeque::new();
        let mut receivers = Vec::new();
        for _ in 0..MAX_RUN_CHUNKS + 3 {
            let (w, rx) = wanted(1, 10);
            waiting.push_back(w);
            receivers.push(rx);
        }
        assert_eq!(take_run(&mut waiting).len(), MAX_RUN_CHUNKS);
        assert_eq!(waiting.len(), 3);
    }
}
