//! Fuzz targets over `meshsync-proto`, through its public API only, with
//! oracles beyond "no panic":
//!
//! - [`control_stream`]: a connection in one of four states takes the bytes
//!   as the peer's control stream. Whenever it rejects something, it is
//!   closed, the error maps to an error close code, and the last frame it
//!   queued is a Close with that code. Whatever it delivers is safe to use:
//!   every path is a valid, non-internal [`RelPath`], every batch from the
//!   read-write peer is signed, and batches deliver contiguous sequences.
//! - [`message`]: what decodes re-encodes to a message that decodes to the
//!   same value; every path in it is a valid `RelPath`.
//! - [`frames`]: a [`FrameDecoder`] never yields a payload over its limit
//!   and, once failed, stays failed.
//! - [`chunk_stream`]: a chunk accepted by the [`ChunkVerifier`] has exactly
//!   the requested length and hash.
//! - [`lan_announcement`]: what decodes is within every limit, has only
//!   dialable addresses, is exactly its datagram, and matches a folder only
//!   if it carries that folder's tag for its device, window and addresses.
//!
//! The connection states are those of `meshsync_proto::fuzzing` (which
//! exists only under `cfg(fuzzing)`); this module rebuilds them from public
//! calls so that `cargo test` in the main workspace can replay the corpus
//! (`crates/meshsync/tests/security.rs` includes this file). The fuzz
//! binaries run both: upstream's entry point, then this one.

use meshsync_core::entry::FileEntry;
use meshsync_core::ids::{DeviceId, Hash, ShareId};
use meshsync_core::keys::discovery::LanTagKey;
use meshsync_core::keys::{FolderKey, ProofRole, ReadWriteKey};
use meshsync_core::path::RelPath;
use meshsync_proto::chunk::{
    ChunkRequest, ChunkResponse, ChunkRunRequest, ChunkStatus, ChunkVerifier, MAX_RUN_CHUNKS,
    STREAM_KIND_CHUNK_RUN,
};
use meshsync_proto::frame::FrameDecoder;
use meshsync_proto::lan;
use meshsync_proto::limits::{MAX_FRAME_LEN, MAX_REQUEST_LEN, MAX_UNPROVEN_FRAME_LEN};
use meshsync_proto::message::Message;
use meshsync_proto::{Connection, Event, FolderOffer, LocalInfo};

/// The channel binding of every fuzzed connection.
pub const BINDING: [u8; 32] = [0x5a; 32];

/// The device id of the peer of every fuzzed connection (the initiator).
pub fn peer_device() -> DeviceId {
    DeviceId::from_bytes([2; 32])
}

/// The folder secret of every fuzzed connection.
pub const FOLDER_SECRET: [u8; 32] = [7; 32];

/// Where a fuzzed connection stands before the input arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Waiting for the peer's Hello.
    AwaitingHello,
    /// Hellos exchanged, no folder.
    Negotiated,
    /// One folder open with a read-only peer (unsigned batches accepted).
    OpenReadOnlyPeer,
    /// One folder open with a read-write peer (batches must be signed).
    OpenReadWritePeer,
}

impl Scenario {
    /// The scenario a first input byte picks (mod 4), as upstream does.
    pub fn from_byte(b: u8) -> Self {
        match b % 4 {
            0 => Scenario::AwaitingHello,
            1 => Scenario::Negotiated,
            2 => Scenario::OpenReadOnlyPeer,
            _ => Scenario::OpenReadWritePeer,
        }
    }
}

/// The responder side of a fuzzed connection in `scenario`, the keys it
/// holds, and the peer (initiator) connection that got it there.
pub fn connection_at(scenario: Scenario) -> (Connection, Vec<FolderKey>, Connection) {
    let folder = ReadWriteKey::from_secret(&FOLDER_SECRET);
    let keys = vec![FolderKey::ReadWrite(folder.clone())];
    let ours = DeviceId::from_bytes([1; 32]);
    let theirs = peer_device();
    let mut local = Connection::new(
        ProofRole::Responder,
        LocalInfo::new(ours, "fuzzed", "meshsync-fuzz/0"),
        BINDING,
        theirs,
    );
    let mut peer = Connection::new(
        ProofRole::Initiator,
        LocalInfo::new(theirs, "peer", "meshsync-fuzz/0"),
        BINDING,
        ours,
    );
    if scenario == Scenario::AwaitingHello {
        drain(&mut local);
        return (local, keys, peer);
    }
    exchange(&mut local, &mut peer, &keys);
    if matches!(
        scenario,
        Scenario::OpenReadOnlyPeer | Scenario::OpenReadWritePeer
    ) {
        let peer_key = if scenario == Scenario::OpenReadOnlyPeer {
            FolderKey::ReadOnly(folder.read_only())
        } else {
            FolderKey::ReadWrite(folder)
        };
        peer.open_folder(&peer_key, FolderOffer::fresh(11, 1_000))
            .expect("the peer offers");
        local
            .open_folder(&keys[0], FolderOffer::fresh(22, 0))
            .expect("we offer");
        exchange(&mut local, &mut peer, &keys);
        assert!(local.is_open(&keys[0].share_id()), "{scenario:?}");
    }
    drain(&mut local);
    (local, keys, peer)
}

/// Delivers queued frames both ways until both sides are quiet.
fn exchange(a: &mut Connection, b: &mut Connection, keys: &[FolderKey]) {
    loop {
        let mut moved = false;
        while let Some(frame) = a.poll_transmit() {
            b.handle_bytes(&frame, keys).expect("a well-behaved peer");
            moved = true;
        }
        while let Some(frame) = b.poll_transmit() {
            a.handle_bytes(&frame, keys).expect("a well-behaved peer");
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fn drain(connection: &mut Connection) {
    while connection.poll_event().is_some() {}
    while connection.poll_transmit().is_some() {}
}

/// What a connection did with one fuzz input.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The close code, if it rejected something.
    pub rejected: Option<u16>,
    /// Index entries it delivered to its driver.
    pub delivered_entries: usize,
}

/// Feeds `data` to a connection's control stream: the first byte picks the
/// scenario, the rest arrives in pieces whose sizes the bytes pick (as in
/// `meshsync_proto::fuzzing::control_stream`). Panics if an oracle of the
/// module docs fails.
pub fn control_stream(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    feed(Scenario::from_byte(first), rest, true);
}

/// Feeds `stream` to a connection in `scenario`, in pieces (sized by the
/// bytes themselves when `pieces`, else whole), then ends the stream, and
/// checks every oracle.
pub fn feed(scenario: Scenario, mut stream: &[u8], pieces: bool) -> Outcome {
    let (mut connection, keys, _peer) = connection_at(scenario);
    let share = keys[0].share_id();
    let mut outcome = Outcome::default();
    let mut next_sequence = None;
    while !stream.is_empty() && !connection.is_closed() {
        let piece = if pieces {
            usize::from(stream[0]).clamp(1, stream.len())
        } else {
            stream.len()
        };
        let (now, later) = stream.split_at(piece);
        stream = later;
        let result = connection.handle_bytes(now, &keys[..]);
        check_events(
            &mut connection,
            scenario,
            share,
            &mut next_sequence,
            &mut outcome,
        );
        if let Err(e) = result {
            outcome.rejected = Some(check_rejection(&mut connection, e.close_code().to_u16()));
            return outcome;
        }
    }
    if let Err(e) = connection.handle_stream_end() {
        outcome.rejected = Some(check_rejection(&mut connection, e.close_code().to_u16()));
    }
    check_events(
        &mut connection,
        scenario,
        share,
        &mut next_sequence,
        &mut outcome,
    );
    while connection.poll_transmit().is_some() {}
    outcome
}

/// After a rejection: closed, an error code, and a Close with that code as
/// the last frame queued. Returns the code.
fn check_rejection(connection: &mut Connection, code: u16) -> u16 {
    assert!(connection.is_closed(), "rejected but not closed");
    assert!(
        meshsync_proto::CloseCode::from_u16(code).is_error(),
        "code {code}"
    );
    let last = std::iter::from_fn(|| connection.poll_transmit())
        .last()
        .expect("a Close is queued for the peer");
    match Message::decode(&last[4..]) {
        Ok(Message::Close(close)) => assert_eq!(close.code.to_u16(), code),
        other => panic!("the last frame is not a Close: {other:?}"),
    }
    code
}

/// Checks what the connection delivered since the last call.
fn check_events(
    connection: &mut Connection,
    scenario: Scenario,
    share: ShareId,
    next_sequence: &mut Option<u64>,
    outcome: &mut Outcome,
) {
    while let Some(event) = connection.poll_event() {
        match event {
            Event::IndexReceived { share: s, batch } => {
                assert_eq!(s, share, "a batch for a folder that is not open");
                assert!(matches!(
                    scenario,
                    Scenario::OpenReadOnlyPeer | Scenario::OpenReadWritePeer
                ));
                if scenario == Scenario::OpenReadWritePeer {
                    assert!(batch.signed, "an unsigned batch from a read-write peer");
                }
                if let Some(want) = *next_sequence {
                    assert_eq!(batch.first_sequence, want, "batches are contiguous");
                }
                assert!(batch.first_sequence <= batch.last_sequence);
                *next_sequence = Some(batch.last_sequence + 1);
                let mut last = 0;
                for entry in &batch.entries {
                    check_entry(entry);
                    assert!(entry.sequence > last || last == 0);
                    assert!((batch.first_sequence..=batch.last_sequence).contains(&entry.sequence));
                    last = entry.sequence;
                }
                outcome.delivered_entries += batch.entries.len();
            }
            Event::Progress {
                share: s,
                path,
                chunks_done,
                chunks_total,
            } => {
                assert_eq!(s, share);
                // For the UI only: any valid path (meshsync's own names too).
                assert_eq!(RelPath::new(path.as_str()).as_ref(), Ok(&path));
                assert!(chunks_done <= chunks_total);
            }
            Event::HelloReceived {
                client,
                device_name,
                ..
            } => {
                assert!(client.len() <= 64 && !client.chars().any(char::is_control));
                assert!(device_name.len() <= 128 && !device_name.chars().any(char::is_control));
            }
            Event::PeersReceived { share: s, peers } => {
                assert_eq!(s, share, "peers of a folder that is not open");
                assert!(matches!(
                    scenario,
                    Scenario::OpenReadOnlyPeer | Scenario::OpenReadWritePeer
                ));
                assert!(peers.len() <= meshsync_proto::limits::MAX_PEX_PEERS);
                for p in &peers {
                    assert_ne!(
                        p.device,
                        DeviceId::from_bytes([1; 32]),
                        "lists the receiver"
                    );
                    assert!(!p.addresses.is_empty());
                    assert!(p.addresses.len() <= meshsync_proto::limits::MAX_PEX_ADDRESSES);
                    for a in &p.addresses {
                        assert!(a.port() != 0 && meshsync_proto::lan::usable(a.ip()), "{a}");
                    }
                }
            }
            Event::ChunksHeld {
                share: s, spans, ..
            } => {
                assert_eq!(s, share, "chunks held of a folder that is not open");
                assert!(matches!(
                    scenario,
                    Scenario::OpenReadOnlyPeer | Scenario::OpenReadWritePeer
                ));
                assert!(!spans.is_empty() && spans.len() <= meshsync_proto::limits::MAX_HELD_SPANS);
                let mut next = 0u64;
                for span in &spans {
                    assert!(span.count > 0 && u64::from(span.first) >= next, "{spans:?}");
                    next = span.numbers().end;
                }
                assert!(next <= 1 << 32);
            }
            Event::Closed { reason, .. } => {
                assert!(reason.len() <= 256 && !reason.chars().any(char::is_control));
            }
            _ => {}
        }
    }
}

/// A delivered path is valid, normalised and not meshsync's own.
fn check_path(path: &RelPath) {
    assert_eq!(RelPath::new(path.as_str()).as_ref(), Ok(path));
    assert!(!path.is_internal(), "internal path {path} delivered");
}

fn check_entry(entry: &FileEntry) {
    check_path(&entry.path);
    assert!(entry.mtime.nanos < 1_000_000_000);
    if let Some(content) = &entry.content {
        let total: u64 = content.chunks.iter().map(|c| u64::from(c.len)).sum();
        assert_eq!(total, entry.size, "chunks add up to the size");
    }
}

/// Decodes `data` as one frame payload; what decodes re-encodes to itself.
pub fn message(data: &[u8]) {
    let Ok(message) = Message::decode(data) else {
        return;
    };
    let again = Message::decode(&message.encode());
    assert_eq!(again.as_ref(), Ok(&message), "a decoded message re-encodes");
    match &message {
        Message::IndexBatch(batch) => {
            assert!(batch.entries.len() <= meshsync_proto::limits::MAX_BATCH_ENTRIES);
            for entry in &batch.entries {
                assert_eq!(RelPath::new(entry.path.as_str()).as_ref(), Ok(&entry.path));
            }
        }
        Message::IndexPatch(batch) => {
            assert!(batch.entries.len() <= meshsync_proto::limits::MAX_BATCH_ENTRIES);
            for entry in &batch.entries {
                let (meshsync_proto::message::PatchEntry::Whole(entry)
                | meshsync_proto::message::PatchEntry::Patched { entry, .. }) = entry;
                assert_eq!(RelPath::new(entry.path.as_str()).as_ref(), Ok(&entry.path));
            }
        }
        Message::DownloadProgress(p) => {
            assert_eq!(RelPath::new(p.path.as_str()).as_ref(), Ok(&p.path));
        }
        _ => {}
    }
}

/// Pushes `data` through a [`FrameDecoder`] in pieces of 7 bytes; the
/// limit is 64 KiB if the first byte is even, else 16 MiB.
pub fn frames(data: &[u8]) {
    let max = if data.first().is_some_and(|b| b % 2 == 0) {
        MAX_UNPROVEN_FRAME_LEN
    } else {
        MAX_FRAME_LEN
    };
    let mut decoder = FrameDecoder::new(max);
    let mut failed = false;
    for piece in data.chunks(7) {
        if decoder.push(piece).is_err() {
            failed = true;
            break;
        }
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => assert!(frame.len() <= max as usize),
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            break;
        }
    }
    if failed {
        assert!(decoder.push(b"x").is_err(), "a failed decoder stays failed");
        assert!(decoder.next_frame().is_err());
    } else {
        let _ = decoder.finish();
    }
}

/// A run request (version 4): what decodes is 1 to 64 chunks, each of a
/// requestable length, and re-encodes to exactly its bytes.
fn chunk_run_request(data: &[u8]) {
    let head = &data[..data.len().min(ChunkRunRequest::HEADER_LEN)];
    let Ok((share, count)) = ChunkRunRequest::decode_header(head) else {
        return;
    };
    assert!((1..=MAX_RUN_CHUNKS).contains(&count));
    let list = &data[head.len()..];
    let list = &list[..list.len().min(count * ChunkRunRequest::ITEM_LEN)];
    let Ok(run) = ChunkRunRequest::decode_items(share, list) else {
        return;
    };
    assert!(
        run.chunks
            .iter()
            .all(|c| (1..=MAX_REQUEST_LEN).contains(&c.len))
    );
    if run.chunks.len() == count {
        assert_eq!(
            run.encode(),
            &data[..head.len() + list.len()],
            "a run re-encodes"
        );
    }
}

/// A chunk-delta request (version 5) and what a responder and a requester
/// do with it: the header re-encodes; a signature the checks accept goes
/// through the delta encoder without a panic or a hang, and the delta it
/// makes rebuilds the data; bytes taken as a delta apply or fail cleanly,
/// never past the chunk's length.
fn chunk_delta(data: &[u8]) {
    use meshsync_proto::delta::{self, DeltaRequest};
    let Some(head) = data.first_chunk::<{ DeltaRequest::HEADER_LEN }>() else {
        return;
    };
    let Ok(request) = DeltaRequest::decode_header(head) else {
        return;
    };
    assert_eq!(&request.encode_header(), head, "a delta request re-encodes");
    let rest = &data[DeltaRequest::HEADER_LEN..];
    let (signature, tail) = rest.split_at(rest.len().min(request.signature_len as usize));
    // What the responder would do: the rest of the input is its chunk.
    if delta::check_signature(signature).is_ok() {
        let made = delta::diff(signature, tail).expect("a checked signature encodes");
        assert!(made.len() <= tail.len() + tail.len() / 8 + 4096);
    }
    // What the requester would do: the signature's bytes as its base, the
    // rest as a delta from a hostile peer.
    let len = request.len.min(1 << 20);
    if let Ok(rebuilt) = delta::apply(signature, tail, len) {
        assert_eq!(rebuilt.len(), len as usize);
    }
}

/// Decodes `data` as a chunk request header, a response header and chunk
/// bytes; a chunk the verifier accepts is exactly what was requested. Data
/// starting with 0x04 is a run request instead, with 0x05 a delta request.
pub fn chunk_stream(data: &[u8]) {
    if data.first() == Some(&STREAM_KIND_CHUNK_RUN) {
        chunk_run_request(data);
        return;
    }
    if data.first() == Some(&meshsync_proto::delta::STREAM_KIND_CHUNK_DELTA) {
        chunk_delta(data);
        return;
    }
    let (request_head, rest) = data.split_at(data.len().min(ChunkRequest::ENCODED_LEN));
    let (response_head, body) = rest.split_at(rest.len().min(ChunkResponse::ENCODED_LEN));
    let request = match ChunkRequest::decode(request_head) {
        Ok(request) => {
            assert_eq!(&request.encode()[..], request_head, "a request re-encodes");
            assert!((1..=MAX_REQUEST_LEN).contains(&request.len));
            request
        }
        // Not a request: ask for exactly the body, so the verifier's
        // accepting path is reached too.
        Err(_) => ChunkRequest {
            share: ShareId::from_bytes([0; 32]),
            hash: Hash::of(body),
            len: u32::try_from(body.len()).unwrap_or(u32::MAX).max(1),
        },
    };
    if let Ok(response) = ChunkResponse::decode(response_head, &request) {
        let want = if response.status == ChunkStatus::Found {
            request.len
        } else {
            0
        };
        assert_eq!(response.len, want);
    }
    let mut verifier = ChunkVerifier::new(&request);
    for piece in body.chunks(4096) {
        if verifier.update(piece).is_err() {
            return;
        }
    }
    if verifier.finish().is_ok() {
        assert_eq!(body.len(), request.len as usize);
        assert_eq!(
            Hash::of(body),
            request.hash,
            "a chunk that does not hash was accepted"
        );
    }
}

/// The folder secret whose LAN tag key [`lan_announcement`] checks tags
/// against (the same folder as the connections').
pub fn lan_key() -> LanTagKey {
    LanTagKey::new(ReadWriteKey::from_secret(&FOLDER_SECRET).access_key())
}

/// Decodes `data` as a LAN announcement. What decodes has at most
/// [`lan::MAX_ADDRESSES`] usable addresses and 1 to [`lan::MAX_TAGS`] tags,
/// a non-zero port, and is exactly `data`; it matches [`lan_key`]'s folder
/// only if one of its tags is that folder's tag over its device, window and
/// the bytes before the tags.
pub fn lan_announcement(data: &[u8]) {
    let Ok(a) = lan::Announcement::decode(data) else {
        return;
    };
    assert!(data.len() <= lan::MAX_ANNOUNCEMENT_LEN);
    assert!(a.addresses.len() <= lan::MAX_ADDRESSES);
    assert!(!a.tags.is_empty() && a.tags.len() <= lan::MAX_TAGS);
    assert!(a.port != 0);
    assert!(a.addresses.iter().all(|ip| lan::usable(*ip)));
    let covered = data.len() - 1 - 16 * a.tags.len();
    assert_eq!(
        covered,
        lan::MAGIC.len()
            + 1
            + 32
            + 8
            + 2
            + 1
            + a.addresses
                .iter()
                .map(|ip| if ip.is_ipv4() { 5 } else { 17 })
                .sum::<usize>(),
        "the datagram is exactly its fields"
    );
    let key = lan_key();
    let expected = key.tag(&a.device, a.window, &data[..covered]);
    assert_eq!(a.matches(&key), a.tags.contains(&expected));
}

/// A fuzz target: its corpus directory's name and its entry point.
pub type Target = (&'static str, fn(&[u8]));

/// Every proto target, by the name of its `fuzz/corpus/` directory.
pub const TARGETS: &[Target] = &[
    ("control_stream", control_stream),
    ("message", message),
    ("frames", frames),
    ("chunk_stream", chunk_stream),
    ("lan_announcement", lan_announcement),
];
