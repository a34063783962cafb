//! Hostile input through the public API: whatever a peer sends, the
//! connection never panics, and anything it rejects closes it with a code.

mod util;

use meshsync_core::keys::FolderKey;
use meshsync_proto::message::Message;
use meshsync_proto::{CloseCode, Event, FolderOffer, Side};
use proptest::prelude::*;
use util::{Pair, file_entry, folder_key};

/// A pair with one folder open both ways; the server's stream is the
/// target.
fn open_pair() -> Pair {
    let key = FolderKey::ReadWrite(folder_key(1));
    let mut pair = Pair::new(vec![key.clone()], vec![key.clone()]);
    pair.drive().unwrap();
    pair.client
        .open_folder(&key, FolderOffer::fresh(1, 5))
        .unwrap();
    pair.server
        .open_folder(&key, FolderOffer::fresh(2, 0))
        .unwrap();
    pair.drive().unwrap();
    pair.take_events();
    pair
}

/// After a rejection the connection is closed, reported once, and has a
/// Close for the peer as its last frame.
fn assert_closed_with_code(pair: &mut Pair) {
    let events: Vec<Event> = std::iter::from_fn(|| pair.server.poll_event()).collect();
    let closes: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, Event::Closed { .. }))
        .collect();
    assert_eq!(closes.len(), 1, "{events:?}");
    let last = std::iter::from_fn(|| pair.server.poll_transmit())
        .last()
        .unwrap();
    let close = Message::decode(&last[4..]).unwrap();
    assert!(matches!(close, Message::Close(c) if c.code.is_error()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random bytes on a fresh connection's stream.
    #[test]
    fn random_bytes_before_hello(bytes in prop::collection::vec(any::<u8>(), 1..2000)) {
        let key = FolderKey::ReadWrite(folder_key(1));
        let mut pair = Pair::new(vec![], vec![key]);
        let result = pair.server.handle_bytes(&bytes, &pair.server_keys[..]);
        if result.is_err() {
            assert_closed_with_code(&mut pair);
        }
    }

    /// Random payloads as frames on a connection with an open folder.
    #[test]
    fn random_frames_on_an_open_folder(frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..10)) {
        let mut pair = open_pair();
        for frame in &frames {
            if pair.server.handle_frame(frame, &pair.server_keys[..]).is_err() {
                assert_closed_with_code(&mut pair);
                break;
            }
        }
    }

    /// A valid batch with one byte flipped: either it still decodes and
    /// passes every check (a flip in a field with no rule), or the
    /// connection closes with a code. It never panics, and a batch whose
    /// signed content changed is never delivered as signed.
    #[test]
    fn bit_flips_in_a_signed_batch(at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut sender = open_pair();
        let share = sender.client_keys[0].share_id();
        sender.client.send_index_batch(share, 1, 5, &[file_entry("a/b", 2, 9, 1), file_entry("c", 5, 0, 1)]).unwrap();
        let mut frame = sender.client.poll_transmit().unwrap();
        let original = frame.clone();
        let at = at.index(frame.len());
        frame[at] ^= 1 << bit;
        let mut pair = open_pair();
        match pair.server.handle_bytes(&frame, &pair.server_keys[..]) {
            Err(_) => assert_closed_with_code(&mut pair),
            Ok(()) => {
                let events: Vec<Event> = std::iter::from_fn(|| pair.server.poll_event()).collect();
                let delivered = events.iter().find_map(|e| match e {
                    Event::IndexReceived { batch, .. } => Some(batch),
                    _ => None,
                });
                if let Some(batch) = delivered {
                    // Every field is covered by the signature, so anything
                    // delivered is exactly what was signed.
                    let payload = Message::decode(&original[4..]).unwrap();
                    let Message::IndexBatch(sent) = payload else { unreachable!() };
                    prop_assert!(batch.signed);
                    prop_assert_eq!(&batch.entries, &sent.entries);
                }
            }
        }
    }
}

#[test]
fn oversized_frame_header_closes_at_once() {
    let mut pair = open_pair();
    let err = pair
        .server
        .handle_bytes(&u32::MAX.to_be_bytes(), &pair.server_keys[..])
        .unwrap_err();
    assert_eq!(err.close_code(), CloseCode::FrameTooLarge);
    assert_closed_with_code(&mut pair);
}

#[test]
fn truncated_frame_then_end_of_stream() {
    let mut pair = open_pair();
    pair.client.ping(1).unwrap();
    let frame = pair.client.poll_transmit().unwrap();
    pair.server
        .handle_bytes(&frame[..frame.len() - 1], &pair.server_keys[..])
        .unwrap();
    assert_eq!(
        pair.server.handle_stream_end().unwrap_err().close_code(),
        CloseCode::Malformed
    );
}

#[test]
fn nothing_is_processed_after_a_violation() {
    let mut pair = open_pair();
    let mut bytes = vec![0, 0, 0, 1, 99];
    pair.client.ping(5).unwrap();
    bytes.extend(pair.client.poll_transmit().unwrap());
    let err = pair
        .server
        .handle_bytes(&bytes, &pair.server_keys[..])
        .unwrap_err();
    assert_eq!(err.close_code(), CloseCode::UnknownMessage);
    let events: Vec<Event> = std::iter::from_fn(|| pair.server.poll_event()).collect();
    assert!(
        matches!(
            &events[..],
            [Event::Closed {
                code: CloseCode::UnknownMessage,
                by: Side::Local,
                ..
            }]
        ),
        "the ping after the bad frame is not answered: {events:?}"
    );
}
