//! Entry points for fuzz targets (`cargo fuzz`, which sets `cfg(fuzzing)`):
//! each feeds arbitrary bytes to a decoder or to the connection state machine
//! and must never panic. Also compiled for this crate's unit tests, which run
//! them on random input.
//!
//! This module must never be used by the daemon: it builds connections with
//! fixed keys and channel bindings.

use meshsync_core::ids::DeviceId;
use meshsync_core::keys::{FolderKey, ProofRole, ReadWriteKey};

use crate::chunk::{ChunkRequest, ChunkResponse, ChunkRunRequest, ChunkVerifier};
use crate::connection::{Connection, FolderOffer, LocalInfo};
use crate::frame::FrameDecoder;
use crate::limits::MAX_FRAME_LEN;
use crate::message::Message;

/// The channel binding of every fuzzed connection.
const BINDING: [u8; 32] = [0x5a; 32];

/// Feeds `data` to the control stream of a connection. The first byte picks
/// where the connection stands first (mod 4): 0 waiting for the peer's Hello,
/// 1 negotiated, 2 one folder open with a read-only peer, 3 one folder open
/// with a read-write peer (batches must be signed). The rest arrives as the
/// peer's next bytes, in pieces whose sizes the bytes themselves pick.
pub fn control_stream(data: &[u8]) {
    let Some((&scenario, mut rest)) = data.split_first() else {
        return;
    };
    let (mut connection, keys) = connection_at(scenario % 4);
    while !rest.is_empty() && !connection.is_closed() {
        let piece = usize::from(rest[0]).clamp(1, rest.len());
        let (now, later) = rest.split_at(piece);
        let _ = connection.handle_bytes(now, &keys[..]);
        rest = later;
    }
    let _ = connection.handle_stream_end();
    while connection.poll_event().is_some() {}
    while connection.poll_transmit().is_some() {}
}

/// Decodes `data` as one frame payload, and re-encodes what decoded.
pub fn message(data: &[u8]) {
    if let Ok(message) = Message::decode(data) {
        let again = Message::decode(&message.encode());
        assert_eq!(again.as_ref(), Ok(&message), "a decoded message re-encodes");
    }
}

/// Pushes `data` through a [`FrameDecoder`] in pieces.
pub fn frames(data: &[u8]) {
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    for piece in data.chunks(7) {
        if decoder.push(piece).is_err() {
            return;
        }
        while let Ok(Some(_)) = decoder.next_frame() {}
    }
    let _ = decoder.finish();
}

/// Decodes `data` as chunk-stream headers and chunk bytes: a single chunk
/// request, or (first byte 0x04) a run request.
pub fn chunk_stream(data: &[u8]) {
    if data.first() == Some(&crate::chunk::STREAM_KIND_CHUNK_RUN) {
        let (head, rest) = data.split_at(data.len().min(ChunkRunRequest::HEADER_LEN));
        if let Ok((share, count)) = ChunkRunRequest::decode_header(head) {
            let items = rest.len().min(count * ChunkRunRequest::ITEM_LEN);
            if let Ok(run) = ChunkRunRequest::decode_items(share, &rest[..items]) {
                let _ =
                    ChunkResponse::decode(&rest[items..rest.len().min(items + 5)], &run.request(0));
            }
        }
        return;
    }
    let (head, rest) = data.split_at(data.len().min(ChunkRequest::ENCODED_LEN));
    let request = ChunkRequest::decode(head).unwrap_or(ChunkRequest {
        share: meshsync_core::ids::ShareId::from_bytes([0; 32]),
        hash: meshsync_core::ids::Hash([0; 32]),
        len: 16,
    });
    let (head, rest) = rest.split_at(rest.len().min(ChunkResponse::ENCODED_LEN));
    let _ = ChunkResponse::decode(head, &request);
    let mut verifier = ChunkVerifier::new(&request);
    if verifier.update(rest).is_ok() {
        let _ = verifier.finish();
    }
}

/// Decodes `data` as a LAN announcement and checks it against a folder's
/// tag key.
pub fn lan_announcement(data: &[u8]) {
    if let Ok(a) = crate::lan::Announcement::decode(data) {
        let key = meshsync_core::keys::discovery::LanTagKey::new(
            ReadWriteKey::from_secret(&[7; 32]).access_key(),
        );
        let _ = a.matches(&key);
    }
}

/// A connection (the responder) in the scenario's state, and the keys it
/// holds.
fn connection_at(scenario: u8) -> (Connection, Vec<FolderKey>) {
    let folder = ReadWriteKey::from_secret(&[7; 32]);
    let keys = vec![FolderKey::ReadWrite(folder.clone())];
    let ours = DeviceId::from_bytes([1; 32]);
    let theirs = DeviceId::from_bytes([2; 32]);
    let mut local = Connection::new(
        ProofRole::Responder,
        LocalInfo::new(ours, "fuzzed", "meshsync-fuzz/0"),
        BINDING,
        theirs,
    );
    if scenario == 0 {
        drain(&mut local);
        return (local, keys);
    }
    let mut peer = Connection::new(
        ProofRole::Initiator,
        LocalInfo::new(theirs, "peer", "meshsync-fuzz/0"),
        BINDING,
        ours,
    );
    exchange(&mut local, &mut peer, &keys);
    if scenario >= 2 {
        let peer_key = if scenario == 2 {
            FolderKey::ReadOnly(folder.read_only())
        } else {
            FolderKey::ReadWrite(folder)
        };
        let _ = peer.open_folder(&peer_key, FolderOffer::fresh(11, 1_000));
        let _ = local.open_folder(&keys[0], FolderOffer::fresh(22, 0));
        exchange(&mut local, &mut peer, &keys);
    }
    drain(&mut local);
    (local, keys)
}

/// Delivers queued frames both ways until both sides are quiet.
fn exchange(a: &mut Connection, b: &mut Connection, keys: &[FolderKey]) {
    loop {
        let mut moved = false;
        while let Some(frame) = a.poll_transmit() {
            let _ = b.handle_bytes(&frame, keys);
            moved = true;
        }
        while let Some(frame) = b.poll_transmit() {
            let _ = a.handle_bytes(&frame, keys);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::PROTOCOL_VERSION;
    use proptest::prelude::*;

    #[test]
    fn scenarios_reach_their_states() {
        use crate::connection::Phase;
        assert_eq!(connection_at(0).0.phase(), Phase::AwaitingHello);
        assert_eq!(
            connection_at(1).0.phase(),
            Phase::Negotiated {
                version: PROTOCOL_VERSION
            }
        );
        for scenario in [2, 3] {
            let (connection, keys) = connection_at(scenario);
            assert!(
                connection.is_open(&keys[0].share_id()),
                "scenario {scenario}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn control_stream_never_panics(data in prop::collection::vec(any::<u8>(), 0..600)) {
            control_stream(&data);
        }

        /// Random bytes after a valid frame header of a random type reach the
        /// message decoders, not just the framing.
        #[test]
        fn framed_garbage_never_panics(
            scenario in 0u8..4,
            ty in 0u8..11,
            body in prop::collection::vec(any::<u8>(), 0..400),
        ) {
            let mut data = vec![scenario, 255];
            let mut payload = vec![ty];
            payload.extend_from_slice(&body);
            data.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            data.extend_from_slice(&payload);
            control_stream(&data);
            message(&payload);
        }

        #[test]
        fn decoders_never_panic(data in prop::collection::vec(any::<u8>(), 0..300)) {
            message(&data);
            frames(&data);
            chunk_stream(&data);
            lan_announcement(&data);
        }
    }
}
