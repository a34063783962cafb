//! Unit tests of the state machine's rules, one or more per rule. The
//! two-machine exchange over the public API is in `tests/pair.rs`.

use meshsync_core::entry::{ChunkRef, Content, FileKind, Timestamp};
use meshsync_core::ids::{Hash, ShortId};
use meshsync_core::keys::ReadWriteKey;
use meshsync_core::version::VersionVector;

use super::*;
use crate::batch::BatchError;
use crate::limits::MAX_BATCH_ENTRIES;
use crate::message::{Hello, IndexBatch, PROTOCOL_VERSION, SUPPORTED_VERSIONS, VersionRange};
use crate::patch::PatchProblem;

const BINDING: [u8; 32] = [0xaa; 32];
const A: [u8; 32] = [1; 32];
const B: [u8; 32] = [2; 32];

fn folder() -> ReadWriteKey {
    ReadWriteKey::from_secret(&[9; 32])
}

fn share() -> ShareId {
    folder().share_id()
}

fn rw() -> FolderKey {
    FolderKey::ReadWrite(folder())
}

fn ro() -> FolderKey {
    FolderKey::ReadOnly(folder().read_only())
}

fn enc() -> FolderKey {
    FolderKey::Encrypted(folder().encrypted())
}

fn initiator() -> Connection {
    Connection::new(
        ProofRole::Initiator,
        LocalInfo::new(DeviceId::from_bytes(A), "a", "test/1"),
        BINDING,
        DeviceId::from_bytes(B),
    )
}

fn responder() -> Connection {
    Connection::new(
        ProofRole::Responder,
        LocalInfo::new(DeviceId::from_bytes(B), "b", "test/1"),
        BINDING,
        DeviceId::from_bytes(A),
    )
}

/// Moves every queued frame from `from` to `to`; returns `to`'s results.
fn deliver<K: FolderKeys + ?Sized>(
    from: &mut Connection,
    to: &mut Connection,
    keys: &K,
) -> Result<(), ProtocolError> {
    while let Some(frame) = from.poll_transmit() {
        to.handle_bytes(&frame, keys)?;
    }
    Ok(())
}

fn events(connection: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| connection.poll_event()).collect()
}

fn sent(connection: &mut Connection) -> Vec<Message> {
    std::iter::from_fn(|| connection.poll_transmit())
        .map(|frame| Message::decode(&frame[HEADER_LEN..]).unwrap())
        .collect()
}

/// Both Hellos exchanged; queues and events drained.
fn negotiated() -> (Connection, Connection) {
    let (mut a, mut b) = (initiator(), responder());
    let none: [FolderKey; 0] = [];
    deliver(&mut a, &mut b, &none[..]).unwrap();
    deliver(&mut b, &mut a, &none[..]).unwrap();
    events(&mut a);
    events(&mut b);
    (a, b)
}

/// The folder open between `a` (holding `a_key`, the peer under test) and
/// `b` (holding a read-write key), with `a` announcing `a_max` changes.
fn open_pair(a_key: &FolderKey, a_max: u64) -> (Connection, Connection) {
    let (mut a, mut b) = negotiated();
    a.open_folder(a_key, FolderOffer::fresh(100, a_max))
        .unwrap();
    b.open_folder(&rw(), FolderOffer::fresh(200, 0)).unwrap();
    deliver(&mut a, &mut b, &[rw()][..]).unwrap();
    deliver(&mut b, &mut a, &[a_key.clone()][..]).unwrap();
    assert!(a.is_open(&share()) && b.is_open(&share()));
    events(&mut a);
    events(&mut b);
    (a, b)
}

fn entry(path: &str, sequence: u64) -> FileEntry {
    let mut version = VersionVector::new();
    version.bump(ShortId(1));
    FileEntry {
        path: RelPath::new(path).unwrap(),
        kind: FileKind::File,
        size: 4,
        mtime: Timestamp { secs: 5, nanos: 0 },
        permissions: 0o644,
        symlink_target: None,
        content: Some(Content {
            hash: Hash::of(b"data"),
            chunk_avg: 65536,
            chunks: vec![ChunkRef {
                hash: Hash::of(b"data"),
                len: 4,
            }],
        }),
        version,
        deleted: false,
        sequence,
    }
}

fn batch(first: u64, last: u64, complete: bool, entries: Vec<FileEntry>) -> IndexBatch {
    IndexBatch {
        share: share(),
        first_sequence: first,
        last_sequence: last,
        complete,
        entries,
        signature: None,
    }
}

/// `batch` signed as device A's index generation 100 would sign it.
fn signed(mut batch: IndexBatch) -> IndexBatch {
    batch.signature = Some(sign_for_test(
        &folder(),
        &DeviceId::from_bytes(A),
        100,
        &batch,
    ));
    batch
}

fn frame(message: Message) -> Vec<u8> {
    message.to_frame().unwrap()
}

/// Feeds `bytes` to `b` (holding the read-write key) and expects it to
/// close with `code`; returns the error.
fn expect_close(b: &mut Connection, bytes: &[u8], code: CloseCode) -> ProtocolError {
    let err = b.handle_bytes(bytes, &[rw()][..]).unwrap_err();
    assert_eq!(err.close_code(), code, "{err}");
    assert!(b.is_closed());
    let events = events(b);
    assert!(
        matches!(events.last(), Some(Event::Closed { code: c, by: Side::Local, .. }) if *c == code),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::IndexReceived { .. } | Event::Progress { .. })),
        "a rejected message delivers nothing: {events:?}"
    );
    let close = sent(b).pop();
    assert!(
        matches!(&close, Some(Message::Close(c)) if c.code == code),
        "{close:?}"
    );
    err
}

// --- Hello and negotiation -------------------------------------------------

#[test]
fn hello_is_queued_at_creation() {
    let mut a = initiator();
    let sent = sent(&mut a);
    assert!(
        matches!(&sent[..], [Message::Hello(h)] if h.versions == SUPPORTED_VERSIONS && h.device_name == "a")
    );
}

#[test]
fn nothing_but_hello_before_negotiation() {
    for early in [
        Message::Ping(message::Ping { nonce: 1 }),
        Message::IndexBatch(batch(1, 1, false, vec![])),
        Message::FolderRefused(message::FolderRefused {
            share: share(),
            reason: RefuseReason::Refused,
        }),
    ] {
        let mut b = responder();
        sent(&mut b);
        let err = expect_close(&mut b, &frame(early), CloseCode::UnexpectedMessage);
        assert!(matches!(
            err,
            ProtocolError::UnexpectedMessage {
                phase: Phase::AwaitingHello,
                ..
            }
        ));
    }
}

#[test]
fn commands_wait_for_negotiation() {
    let mut a = initiator();
    assert_eq!(
        a.open_folder(&rw(), FolderOffer::fresh(1, 0)),
        Err(UsageError::NotNegotiated)
    );
    assert_eq!(a.ping(1), Err(UsageError::NotNegotiated));
}

#[test]
fn a_second_hello_is_unexpected() {
    let (mut a, mut b) = negotiated();
    let hello = Message::Hello(Hello {
        versions: SUPPORTED_VERSIONS,
        client: "x".into(),
        device_name: "y".into(),
    });
    expect_close(&mut b, &frame(hello), CloseCode::UnexpectedMessage);
    let _ = a.poll_transmit();
}

#[test]
fn negotiation_picks_the_highest_common_version() {
    let mut a = Connection::new(
        ProofRole::Initiator,
        LocalInfo::new(DeviceId::from_bytes(A), "a", "t")
            .with_versions(VersionRange::new(1, 3).unwrap()),
        BINDING,
        DeviceId::from_bytes(B),
    );
    let mut b = Connection::new(
        ProofRole::Responder,
        LocalInfo::new(DeviceId::from_bytes(B), "b", "t")
            .with_versions(VersionRange::new(2, 5).unwrap()),
        BINDING,
        DeviceId::from_bytes(A),
    );
    deliver(&mut a, &mut b, &[rw()][..]).unwrap();
    deliver(&mut b, &mut a, &[rw()][..]).unwrap();
    for side in [&mut a, &mut b] {
        assert_eq!(side.negotiated_version(), Some(3));
        assert!(matches!(
            events(side)[..],
            [Event::HelloReceived { negotiated: 3, .. }]
        ));
        // Version 3: partial-file chunks yes, chunk runs no.
        assert!(side.has_held_chunks() && !side.has_chunk_runs());
    }
}

#[test]
fn no_common_version_closes_with_incompatible_version() {
    let mut a = Connection::new(
        ProofRole::Initiator,
        LocalInfo::new(DeviceId::from_bytes(A), "a", "t")
            .with_versions(VersionRange::new(6, 7).unwrap()),
        BINDING,
        DeviceId::from_bytes(B),
    );
    let mut b = responder();
    sent(&mut b);
    let hello = a.poll_transmit().unwrap();
    let err = expect_close(&mut b, &hello, CloseCode::IncompatibleVersion);
    assert_eq!(
        err,
        ProtocolError::IncompatibleVersion {
            local: SUPPORTED_VERSIONS,
            peer: VersionRange::new(6, 7).unwrap(),
        }
    );
}

#[test]
fn an_invalid_version_range_is_malformed() {
    // Hello { versions: (3, 1), … } written by hand: type 0, min 3, max 1.
    let payload = [0u8, 3, 1, 0, 0];
    let mut b = responder();
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&payload);
    expect_close(&mut b, &bytes, CloseCode::Malformed);
}

#[test]
fn hello_text_is_limited_and_free_of_control_characters() {
    let long = Message::Hello(Hello {
        versions: SUPPORTED_VERSIONS,
        client: "c".into(),
        device_name: "n".repeat(crate::limits::MAX_DEVICE_NAME_LEN + 1),
    });
    expect_close(&mut responder(), &frame(long), CloseCode::LimitExceeded);
    let escape = Message::Hello(Hello {
        versions: SUPPORTED_VERSIONS,
        client: "c".into(),
        device_name: "evil\u{1b}[2J".into(),
    });
    expect_close(&mut responder(), &frame(escape), CloseCode::Malformed);
}

#[test]
fn hello_ignores_trailing_fields_of_later_versions() {
    let mut bytes = Message::Hello(Hello {
        versions: SUPPORTED_VERSIONS,
        client: "future/9".into(),
        device_name: "n".into(),
    })
    .encode();
    bytes.extend_from_slice(&[1, 2, 3]);
    let mut b = responder();
    b.handle_frame(&bytes, &[rw()][..]).unwrap();
    assert_eq!(b.negotiated_version(), Some(PROTOCOL_VERSION));
}

#[test]
fn unknown_message_type_closes_with_unknown_message() {
    let (_, mut b) = negotiated();
    let payload = [42u8, 0, 0];
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&payload);
    let err = expect_close(&mut b, &bytes, CloseCode::UnknownMessage);
    assert_eq!(
        err,
        ProtocolError::Decode(crate::message::DecodeError::UnknownType { number: 42 })
    );
}

#[test]
fn trailing_bytes_are_malformed() {
    let (_, mut b) = negotiated();
    let mut payload = Message::Ping(message::Ping { nonce: 1 }).encode();
    payload.push(0);
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&payload);
    expect_close(&mut b, &bytes, CloseCode::Malformed);
}

#[test]
fn close_before_hello_is_accepted() {
    let mut b = responder();
    let close = Message::Close(message::Close {
        code: CloseCode::IncompatibleVersion,
        reason: "bye\nnow".into(),
    });
    b.handle_bytes(&frame(close), &[rw()][..]).unwrap();
    assert!(b.is_closed());
    assert_eq!(
        events(&mut b),
        vec![Event::Closed {
            code: CloseCode::IncompatibleVersion,
            reason: "bye\u{fffd}now".into(),
            by: Side::Peer
        }]
    );
    // Later frames are ignored.
    let ping = frame(Message::Ping(message::Ping { nonce: 1 }));
    b.handle_bytes(&ping, &[rw()][..]).unwrap();
    assert!(events(&mut b).is_empty());
}

// --- Ping ------------------------------------------------------------------

#[test]
fn ping_is_answered_and_pong_matched() {
    let (mut a, mut b) = negotiated();
    a.ping(77).unwrap();
    deliver(&mut a, &mut b, &[rw()][..]).unwrap();
    assert_eq!(events(&mut b), vec![Event::PingReceived { nonce: 77 }]);
    deliver(&mut b, &mut a, &[rw()][..]).unwrap();
    assert_eq!(events(&mut a), vec![Event::PongReceived { nonce: 77 }]);
}

#[test]
fn unsolicited_pong_is_unexpected() {
    let (_, mut b) = negotiated();
    let pong = frame(Message::Pong(message::Pong { nonce: 5 }));
    expect_close(&mut b, &pong, CloseCode::UnexpectedMessage);
}

#[test]
fn outstanding_pings_are_limited() {
    let (mut a, _) = negotiated();
    for nonce in 0..crate::limits::MAX_OUTSTANDING_PINGS as u64 {
        a.ping(nonce).unwrap();
    }
    assert!(matches!(a.ping(99), Err(UsageError::TooManyPings { .. })));
}

// --- Folder open -------------------------------------------------------------

#[test]
fn folder_opens_when_both_sides_offer() {
    let (mut a, mut b) = negotiated();
    a.open_folder(&rw(), FolderOffer::fresh(100, 5)).unwrap();
    deliver(&mut a, &mut b, &[rw()][..]).unwrap();
    let requested = events(&mut b);
    assert!(matches!(
        &requested[..],
        [Event::FolderRequested { peer, .. }] if peer.kind == KeyKind::ReadWrite && peer.read_proven && peer.max_sequence == 5
    ));
    assert_eq!(b.folder_status(&share()), Some(FolderStatus::PeerOffered));
    assert!(!b.is_open(&share()));
    b.open_folder(&rw(), FolderOffer::fresh(200, 0)).unwrap();
    assert!(b.is_open(&share()));
    assert!(matches!(
        events(&mut b)[..],
        [Event::FolderOpened {
            send_from: 1,
            receive_from: 1,
            peer_index_complete: false,
            ..
        }]
    ));
    deliver(&mut b, &mut a, &[rw()][..]).unwrap();
    assert!(matches!(
        events(&mut a)[..],
        [Event::FolderOpened {
            send_from: 1,
            receive_from: 1,
            peer_index_complete: true,
            ..
        }]
    ));
    assert!(a.is_open(&share()));
}

#[test]
fn simultaneous_offers_open_without_a_request() {
    let (a, b) = open_pair(&rw(), 0);
    assert!(a.is_open(&share()) && b.is_open(&share()));
}

#[test]
fn incremental_exchange_starts_after_what_the_peer_holds() {
    let (mut a, mut b) = negotiated();
    // a holds b's generation 200 up to 30; b holds a's generation 100 up to 8.
    a.open_folder(
        &rw(),
        FolderOffer {
            index_id: 100,
            max_sequence: 10,
            want_index_id: 200,
            want_since: 30,
        },
    )
    .unwrap();
    b.open_folder(
        &rw(),
        FolderOffer {
            index_id: 200,
            max_sequence: 30,
            want_index_id: 100,
            want_since: 8,
        },
    )
    .unwrap();
    deliver(&mut a, &mut b, &[rw()][..]).unwrap();
    assert!(matches!(
        events(&mut b)[..],
        [Event::FolderOpened {
            send_from: 31,
            receive_from: 9,
            peer_index_complete: false,
            ..
        }]
    ));
}

#[test]
fn a_reset_index_is_sent_whole() {
    let (mut a, mut b) = negotiated();
    // b holds a's generation 99, but a's index is now generation 100.
    a.open_folder(&rw(), FolderOffer::fresh(100, 3)).unwrap();
    b.open_folder(
        &rw(),
        FolderOffer {
            index_id: 200,
            max_sequence: 0,
            want_index_id: 99,
            want_since: 50,
        },
    )
    .unwrap();
    deliver(&mut a, &mut b, &[rw()][..]).unwrap();
    assert!(matches!(
        events(&mut b)[..],
        [Event::FolderOpened {
            receive_from: 1,
            ..
        }]
    ));
}

/// A stranger names a share this device does not have: refused, nothing
/// else, and the connection goes on.
#[test]
fn unknown_share_is_refused_and_nothing_else() {
    let (mut a, mut b) = negotiated();
    let other = FolderKey::ReadWrite(ReadWriteKey::from_secret(&[1; 32]));
    a.open_folder(&other, FolderOffer::fresh(1, 0)).unwrap();
    deliver(&mut a, &mut b, &[rw()][..]).unwrap();
    assert_eq!(
        events(&mut b),
        vec![Event::FolderRejected {
            share: other.share_id(),
            reason: RejectReason::UnknownFolder
        }]
    );
    assert_eq!(
        sent(&mut b),
        vec![Message::FolderRefused(message::FolderRefused {
            share: other.share_id(),
            reason: RefuseReason::Refused
        })]
    );
    assert!(!b.is_closed());
}

fn offer_with(mutate: impl FnOnce(&mut message::OpenFolder)) -> Vec<u8> {
    let (mut a, _) = negotiated();
    a.open_folder(&rw(), FolderOffer::fresh(1, 0)).unwrap();
    let Some(Message::OpenFolder(mut offer)) = sent(&mut a).pop() else {
        panic!("no offer");
    };
    mutate(&mut offer);
    frame(Message::OpenFolder(offer))
}

fn expect_rejected(bytes: &[u8], keys: &[FolderKey], reason: RejectReason) {
    let (_, mut b) = negotiated();
    b.handle_bytes(bytes, keys).unwrap();
    assert_eq!(
        events(&mut b),
        vec![Event::FolderRejected {
            share: share(),
            reason
        }]
    );
    assert_eq!(
        sent(&mut b),
        vec![Message::FolderRefused(message::FolderRefused {
            share: share(),
            reason: RefuseReason::Refused
        })],
        "the same answer as for an unknown share"
    );
    assert_eq!(
        b.folder_status(&share()),
        Some(FolderStatus::Refused { by: Side::Local })
    );
}

#[test]
fn wrong_access_proof_is_refused() {
    let forged = offer_with(|offer| offer.access_proof[0] ^= 1);
    expect_rejected(&forged, &[rw()], RejectReason::BadAccessProof);
}

#[test]
fn proof_replayed_from_another_connection_is_refused() {
    let mut elsewhere = Connection::new(
        ProofRole::Initiator,
        LocalInfo::new(DeviceId::from_bytes(A), "a", "t"),
        [0xbb; 32],
        DeviceId::from_bytes(B),
    );
    let mut peer = responder();
    deliver(&mut elsewhere, &mut peer, &[rw()][..]).unwrap();
    deliver(&mut peer, &mut elsewhere, &[rw()][..]).unwrap();
    elsewhere
        .open_folder(&rw(), FolderOffer::fresh(1, 0))
        .unwrap();
    let replayed = elsewhere.poll_transmit().unwrap();
    expect_rejected(&replayed, &[rw()], RejectReason::BadAccessProof);
}

#[test]
fn reflected_proof_is_refused() {
    // The responder's own offer sent back to it as the initiator's.
    let (_, mut b) = negotiated();
    b.open_folder(&rw(), FolderOffer::fresh(1, 0)).unwrap();
    let reflected = b.poll_transmit().unwrap();
    b.handle_bytes(&reflected, &[rw()][..]).unwrap();
    assert!(matches!(
        events(&mut b)[..],
        [Event::FolderRejected {
            reason: RejectReason::BadAccessProof,
            ..
        }]
    ));
    assert!(!b.is_open(&share()));
}

#[test]
fn storage_only_peer_cannot_claim_to_read() {
    // Holds the encrypted key (so its access proof is good) but claims
    // read-only with a made-up read proof.
    let (mut a, _) = negotiated();
    a.open_folder(&enc(), FolderOffer::fresh(1, 0)).unwrap();
    let Some(Message::OpenFolder(mut offer)) = sent(&mut a).pop() else {
        panic!("no offer");
    };
    offer.kind = KeyKind::ReadOnly;
    offer.read_proof = Some([3; 32]);
    expect_rejected(
        &frame(Message::OpenFolder(offer.clone())),
        &[rw()],
        RejectReason::BadReadProof,
    );
    offer.read_proof = None;
    expect_rejected(
        &frame(Message::OpenFolder(offer)),
        &[ro()],
        RejectReason::MissingReadProof,
    );
}

#[test]
fn storage_only_claim_with_a_read_proof_is_refused() {
    let bytes = offer_with(|offer| offer.kind = KeyKind::Encrypted);
    expect_rejected(&bytes, &[rw()], RejectReason::UnexpectedReadProof);
}

#[test]
fn read_claims_are_proven_only_where_they_can_be_checked() {
    let (mut a, mut b) = negotiated();
    a.open_folder(&ro(), FolderOffer::fresh(1, 0)).unwrap();
    deliver(&mut a, &mut b, &[enc()][..]).unwrap();
    assert!(matches!(
        events(&mut b)[..],
        [Event::FolderRequested { peer, .. }] if peer.kind == KeyKind::ReadOnly && !peer.read_proven
    ));
}

#[test]
fn a_folder_offered_twice_is_unexpected() {
    let (mut a, mut b) = negotiated();
    a.open_folder(&rw(), FolderOffer::fresh(1, 0)).unwrap();
    let offer = a.poll_transmit().unwrap();
    b.handle_bytes(&offer, &[rw()][..]).unwrap();
    expect_close(&mut b, &offer, CloseCode::UnexpectedMessage);
}

#[test]
fn refusal_of_a_folder_never_offered_is_unexpected() {
    let (_, mut b) = negotiated();
    let refusal = frame(Message::FolderRefused(message::FolderRefused {
        share: share(),
        reason: RefuseReason::NotAllowed,
    }));
    expect_close(&mut b, &refusal, CloseCode::UnexpectedMessage);
}

#[test]
fn driver_refusal_reaches_the_peer() {
    let (mut a, mut b) = negotiated();
    a.open_folder(&rw(), FolderOffer::fresh(1, 0)).unwrap();
    deliver(&mut a, &mut b, &[rw()][..]).unwrap();
    events(&mut b);
    b.refuse_folder(share(), RefuseReason::NotAllowed).unwrap();
    assert!(matches!(
        b.open_folder(&rw(), FolderOffer::fresh(2, 0)),
        Err(UsageError::FolderState { .. })
    ));
    deliver(&mut b, &mut a, &[rw()][..]).unwrap();
    assert_eq!(
        events(&mut a),
        vec![Event::FolderRefused {
            share: share(),
            reason: RefuseReason::NotAllowed
        }]
    );
    assert_eq!(
        a.folder_status(&share()),
        Some(FolderStatus::Refused { by: Side::Peer })
    );
    // A side that offered cannot refuse.
    assert!(matches!(
        a.refuse_folder(share(), RefuseReason::NotAllowed),
        Err(UsageError::FolderState { .. })
    ));
}

#[test]
fn too_many_folders_is_a_limit() {
    let (mut a, mut b) = negotiated();
    let keys: Vec<FolderKey> = (0..=MAX_FOLDERS_PER_CONNECTION as u32)
        .map(|i| {
            let mut secret = [0u8; 32];
            secret[..4].copy_from_slice(&i.to_be_bytes());
            FolderKey::Encrypted(ReadWriteKey::from_secret(&secret).encrypted())
        })
        .collect();
    let mut frames = Vec::new();
    for key in &keys[..MAX_FOLDERS_PER_CONNECTION] {
        a.open_folder(key, FolderOffer::fresh(1, 0)).unwrap();
        frames.push(a.poll_transmit().unwrap());
    }
    assert!(matches!(
        a.open_folder(&keys[MAX_FOLDERS_PER_CONNECTION], FolderOffer::fresh(1, 0)),
        Err(UsageError::TooManyFolders { .. })
    ));
    let none: [FolderKey; 0] = [];
    for frame in &frames {
        b.handle_bytes(frame, &none[..]).unwrap();
    }
    // The next offer is one too many (even for an unknown share).
    let mut extra = negotiated().0;
    extra
        .open_folder(&keys[MAX_FOLDERS_PER_CONNECTION], FolderOffer::fresh(1, 0))
        .unwrap();
    let one_more = extra.poll_transmit().unwrap();
    events(&mut b);
    sent(&mut b);
    expect_close(&mut b, &one_more, CloseCode::LimitExceeded);
}

// --- Frame limits --------------------------------------------------------------

#[test]
fn large_frames_wait_for_an_open_folder() {
    let (_, mut b) = negotiated();
    let header = (MAX_UNPROVEN_FRAME_LEN + 1).to_be_bytes();
    expect_close(&mut b, &header, CloseCode::FrameTooLarge);

    let (_, mut b) = open_pair(&rw(), 0);
    assert_eq!(b.max_frame_len(), MAX_FRAME_LEN);
    b.handle_bytes(&header, &[rw()][..]).unwrap();
    assert!(!b.is_closed());
}

#[test]
fn truncated_stream_is_malformed() {
    let (_, mut b) = negotiated();
    let ping = frame(Message::Ping(message::Ping { nonce: 1 }));
    b.handle_bytes(&ping[..ping.len() - 1], &[rw()][..])
        .unwrap();
    let err = b.handle_stream_end().unwrap_err();
    assert_eq!(err.close_code(), CloseCode::Malformed);
}

// --- Index batches ---------------------------------------------------------------

#[test]
fn signed_batches_from_a_read_write_peer_are_delivered() {
    let (mut a, mut b) = open_pair(&rw(), 3);
    a.send_index_batch(share(), 1, 2, &[entry("x", 1), entry("y", 2)])
        .unwrap();
    a.send_index_batch(share(), 3, 3, &[entry("z", 3)]).unwrap();
    deliver(&mut a, &mut b, &[rw()][..]).unwrap();
    let received = events(&mut b);
    assert!(matches!(
        &received[..],
        [
            Event::IndexReceived { batch: first, .. },
            Event::IndexReceived { batch: second, .. },
        ] if first.signed && !first.complete && first.entries.len() == 2
            && second.signed && second.complete && second.first_sequence == 3
    ));
}

#[test]
fn unsigned_batch_from_a_read_write_peer_is_rejected() {
    let (_, mut b) = open_pair(&rw(), 1);
    let unsigned = frame(Message::IndexBatch(batch(1, 1, true, vec![entry("x", 1)])));
    let err = expect_close(&mut b, &unsigned, CloseCode::BadSignature);
    assert!(matches!(err, ProtocolError::MissingSignature { .. }));
}

#[test]
fn badly_signed_batches_are_rejected() {
    let good = signed(batch(1, 1, true, vec![entry("x", 1)]));
    // Sanity: the good one passes.
    let (_, mut b) = open_pair(&rw(), 1);
    b.handle_bytes(&frame(Message::IndexBatch(good.clone())), &[rw()][..])
        .unwrap();

    let mut tampered = good.clone();
    tampered.entries[0].permissions = 0o777;
    let mut as_other_author = batch(1, 1, true, vec![entry("x", 1)]);
    as_other_author.signature = Some(sign_for_test(
        &folder(),
        &DeviceId::from_bytes([3; 32]),
        100,
        &as_other_author,
    ));
    let mut other_generation = batch(1, 1, true, vec![entry("x", 1)]);
    other_generation.signature = Some(sign_for_test(
        &folder(),
        &DeviceId::from_bytes(A),
        99,
        &other_generation,
    ));
    let mut other_folder = batch(1, 1, true, vec![entry("x", 1)]);
    other_folder.signature = Some(sign_for_test(
        &ReadWriteKey::from_secret(&[1; 32]),
        &DeviceId::from_bytes(A),
        100,
        &other_folder,
    ));
    for bad in [tampered, as_other_author, other_generation, other_folder] {
        let (_, mut b) = open_pair(&rw(), 1);
        let err = expect_close(
            &mut b,
            &frame(Message::IndexBatch(bad)),
            CloseCode::BadSignature,
        );
        assert!(matches!(err, ProtocolError::BadSignature { .. }));
    }
}

#[test]
fn read_only_peer_batches_are_availability_only() {
    let (mut a, mut b) = open_pair(&ro(), 1);
    a.send_index_batch(share(), 1, 1, &[entry("x", 1)]).unwrap();
    deliver(&mut a, &mut b, &[rw()][..]).unwrap();
    assert!(matches!(
        &events(&mut b)[..],
        [Event::IndexReceived { batch, .. }] if !batch.signed && batch.complete
    ));
}

#[test]
fn a_signature_from_a_read_only_peer_must_still_verify() {
    let (_, mut b) = open_pair(&ro(), 1);
    let mut forged = batch(1, 1, true, vec![entry("x", 1)]);
    forged.signature = Some(meshsync_core::keys::BatchSignature::from_bytes([7; 64]));
    expect_close(
        &mut b,
        &frame(Message::IndexBatch(forged)),
        CloseCode::BadSignature,
    );
}

#[test]
fn batch_for_a_folder_not_open_is_rejected() {
    // Never mentioned.
    let (_, mut b) = negotiated();
    let bytes = frame(Message::IndexBatch(signed(batch(1, 1, true, vec![]))));
    let err = expect_close(&mut b, &bytes, CloseCode::FolderNotOpen);
    assert!(matches!(err, ProtocolError::FolderNotOpen { .. }));
    // Offered by this side only.
    let (_, mut b) = negotiated();
    b.open_folder(&rw(), FolderOffer::fresh(1, 0)).unwrap();
    expect_close(&mut b, &bytes, CloseCode::FolderNotOpen);
    // Offered by the peer, not yet accepted.
    let (mut a, mut b) = negotiated();
    a.open_folder(&rw(), FolderOffer::fresh(100, 1)).unwrap();
    deliver(&mut a, &mut b, &[rw()][..]).unwrap();
    expect_close(&mut b, &bytes, CloseCode::FolderNotOpen);
    // Progress likewise.
    let (_, mut b) = negotiated();
    let progress = frame(Message::DownloadProgress(message::DownloadProgress {
        share: share(),
        path: RelPath::new("x").unwrap(),
        chunks_done: 1,
        chunks_total: 2,
    }));
    expect_close(&mut b, &progress, CloseCode::FolderNotOpen);
}

#[test]
fn sequence_gap_and_replay_are_rejected() {
    let (_, mut b) = open_pair(&rw(), 10);
    let gap = frame(Message::IndexBatch(signed(batch(2, 3, false, vec![]))));
    let err = expect_close(&mut b, &gap, CloseCode::InvalidSequence);
    assert!(matches!(
        err,
        ProtocolError::Batch {
            error: BatchError::Gap {
                expected: 1,
                first: 2
            },
            ..
        }
    ));

    let (_, mut b) = open_pair(&rw(), 10);
    let first = frame(Message::IndexBatch(signed(batch(1, 3, false, vec![]))));
    b.handle_bytes(&first, &[rw()][..]).unwrap();
    events(&mut b);
    let err = expect_close(&mut b, &first, CloseCode::InvalidSequence);
    assert!(matches!(
        err,
        ProtocolError::Batch {
            error: BatchError::Replay { expected: 4, .. },
            ..
        }
    ));
}

#[test]
fn wrong_complete_flag_is_rejected() {
    let (_, mut b) = open_pair(&rw(), 5);
    let early = frame(Message::IndexBatch(signed(batch(1, 3, true, vec![]))));
    expect_close(&mut b, &early, CloseCode::InvalidSequence);
}

#[test]
fn entry_with_an_invalid_path_fails_decoding() {
    let (_, mut b) = open_pair(&ro(), 1);
    let good = Message::IndexBatch(batch(1, 1, true, vec![entry("qq/file", 1)]));
    let mut payload = good.encode();
    let at = payload
        .windows(2)
        .position(|w| w == b"qq")
        .expect("path in the encoding");
    payload[at..at + 2].copy_from_slice(b"..");
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&payload);
    let err = expect_close(&mut b, &bytes, CloseCode::Malformed);
    assert!(matches!(err, ProtocolError::Decode(_)));
}

#[test]
fn internal_paths_are_invalid_entries() {
    let (_, mut b) = open_pair(&ro(), 1);
    let mut marker = entry(".meshsync/folder", 1);
    marker.content = None;
    let bytes = frame(Message::IndexBatch(batch(1, 1, true, vec![marker])));
    expect_close(&mut b, &bytes, CloseCode::InvalidEntry);
}

#[test]
fn an_oversized_entry_count_is_refused_before_decoding() {
    // One entry over the limit, each of them well-formed: were they decoded
    // first, the batch rules would refuse the count (LimitExceeded); the
    // decoder refuses it from the count alone (Malformed).
    let entries = (0..=MAX_BATCH_ENTRIES as u64)
        .map(|i| entry(&format!("f{i}"), i + 1))
        .collect();
    let payload =
        Message::IndexBatch(batch(1, MAX_BATCH_ENTRIES as u64 + 1, true, entries)).encode();
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&payload);
    let (_, mut b) = open_pair(&ro(), 1);
    expect_close(&mut b, &bytes, CloseCode::Malformed);

    // A count far beyond what the frame holds fails on the first missing
    // entry, without reserving for the count.
    let mut payload = postcard::to_allocvec(&(6u32, share(), 1u64, 1u64, true)).unwrap();
    payload.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&payload);
    let (_, mut b) = open_pair(&ro(), 1);
    expect_close(&mut b, &bytes, CloseCode::Malformed);
}

#[test]
fn progress_is_delivered_and_checked() {
    let (mut a, mut b) = open_pair(&rw(), 0);
    let path = RelPath::new("big.iso").unwrap();
    a.send_progress(share(), path.clone(), 3, 10).unwrap();
    assert!(matches!(
        a.send_progress(share(), path.clone(), 11, 10),
        Err(UsageError::BadProgress { .. })
    ));
    deliver(&mut a, &mut b, &[rw()][..]).unwrap();
    assert_eq!(
        events(&mut b),
        vec![Event::Progress {
            share: share(),
            path: path.clone(),
            chunks_done: 3,
            chunks_total: 10
        }]
    );
    let bad = frame(Message::DownloadProgress(message::DownloadProgress {
        share: share(),
        path,
        chunks_done: 11,
        chunks_total: 10,
    }));
    expect_close(&mut b, &bad, CloseCode::Malformed);
}

// --- What the sending side refuses to send ---------------------------------------

#[test]
fn send_refuses_batches_the_peer_would_reject() {
    let (mut a, _) = open_pair(&rw(), 5);
    assert!(matches!(
        a.send_index_batch(share(), 2, 3, &[]),
        Err(UsageError::Batch {
            error: BatchError::Gap { .. },
            ..
        })
    ));
    assert!(matches!(
        a.send_index_batch(share(), 1, 3, &[entry("a", 3), entry("b", 2)]),
        Err(UsageError::Batch {
            error: BatchError::OutOfOrder { .. },
            ..
        })
    ));
    // Nothing was sent, and the cursor did not move.
    assert!(a.poll_transmit().is_none());
    a.send_index_batch(share(), 1, 5, &[entry("a", 5)]).unwrap();
    let Some(Message::IndexBatch(sent)) = sent(&mut a).pop() else {
        panic!("no batch");
    };
    assert!(
        sent.complete,
        "the machine sets complete at the announced end"
    );
    assert!(sent.signature.is_some(), "a read-write side signs");
}

#[test]
fn send_needs_an_open_folder() {
    let (mut a, _) = negotiated();
    assert!(matches!(
        a.send_index_batch(share(), 1, 1, &[]),
        Err(UsageError::FolderState {
            state: "not offered",
            ..
        })
    ));
}

#[test]
fn borrowed_batch_encoding_matches_the_message() {
    let entries = vec![entry("a", 1), entry("b", 2)];
    let mut message = batch(1, 2, true, entries.clone());
    message.signature = Some(meshsync_core::keys::BatchSignature::from_bytes([4; 64]));
    let by_ref = batch_frame(
        MessageType::IndexBatch,
        &IndexBatchRef {
            share: &message.share,
            first_sequence: 1,
            last_sequence: 2,
            complete: true,
            entries: &entries,
            signature: Some(SignatureRef([4; 64])),
        },
    )
    .unwrap();
    assert_eq!(by_ref, Message::IndexBatch(message).to_frame().unwrap());

    let ops = vec![
        crate::patch::ListOp::Keep(3),
        crate::patch::ListOp::Insert(vec![ChunkRef {
            hash: Hash::of(b"new"),
            len: 9,
        }]),
    ];
    let by_ref = batch_frame(
        MessageType::IndexPatch,
        &IndexBatchRef {
            share: &share(),
            first_sequence: 1,
            last_sequence: 2,
            complete: true,
            entries: &[
                PatchEntryRef::Whole(&entries[0]),
                PatchEntryRef::Patched {
                    entry: &entries[1],
                    base_sequence: 1,
                    ops: &ops,
                },
            ],
            signature: None,
        },
    )
    .unwrap();
    let owned = Message::IndexPatch(message::IndexPatch {
        share: share(),
        first_sequence: 1,
        last_sequence: 2,
        complete: true,
        entries: vec![
            message::PatchEntry::Whole(entries[0].clone()),
            message::PatchEntry::Patched {
                entry: entries[1].clone(),
                base_sequence: 1,
                ops,
            },
        ],
        signature: None,
    });
    assert_eq!(by_ref, owned.to_frame().unwrap());
}

// --- Close -------------------------------------------------------------------------

#[test]
fn local_close_is_sent_and_reported_once() {
    let (mut a, mut b) = negotiated();
    a.close(CloseCode::Shutdown, "bye");
    a.close(CloseCode::Internal, "again");
    assert_eq!(
        events(&mut a),
        vec![Event::Closed {
            code: CloseCode::Shutdown,
            reason: "bye".into(),
            by: Side::Local
        }]
    );
    assert_eq!(a.ping(1), Err(UsageError::Closed));
    deliver(&mut a, &mut b, &[rw()][..]).unwrap();
    assert_eq!(
        events(&mut b),
        vec![Event::Closed {
            code: CloseCode::Shutdown,
            reason: "bye".into(),
            by: Side::Peer
        }]
    );
}

#[test]
fn close_codes_round_trip_through_u16() {
    for code in 0..=20u16 {
        assert_eq!(CloseCode::from_u16(code).to_u16(), code);
    }
    assert_eq!(CloseCode::from_u16(6), CloseCode::IncompatibleVersion);
    assert_eq!(CloseCode::from_u16(999), CloseCode::Unknown(999));
}

// --- Test vector for docs/protocol.md ("Signed batches") -------------------------

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The batch of the vector: one directory entry, so the encoding stays
/// short.
fn vector_batch() -> IndexBatch {
    let mut version = VersionVector::new();
    version.bump(ShortId(0x0102030405060708));
    let dir = FileEntry {
        path: RelPath::new("docs").unwrap(),
        kind: FileKind::Directory,
        size: 0,
        mtime: Timestamp {
            secs: 1_700_000_000,
            nanos: 0,
        },
        permissions: 0o755,
        symlink_target: None,
        content: None,
        version,
        deleted: false,
        sequence: 1,
    };
    batch(1, 1, true, vec![dir])
}

#[test]
fn signed_batch_vector() {
    let batch = vector_batch();
    let payload = signed_payload(
        &DeviceId::from_bytes(A),
        &batch.share,
        100,
        1,
        1,
        true,
        &batch.entries,
    );
    let signature = sign_for_test(&folder(), &DeviceId::from_bytes(A), 100, &batch);
    assert_eq!(hex(batch.share.as_bytes()), VECTOR_SHARE);
    assert_eq!(hex(&payload), VECTOR_PAYLOAD);
    assert_eq!(hex(&signature.to_bytes()), VECTOR_SIGNATURE);
    let mut message = batch.clone();
    message.signature = Some(signature);
    assert_eq!(
        hex(&Message::IndexBatch(message).to_frame().unwrap()),
        VECTOR_FRAME
    );
}

const VECTOR_SHARE: &str = "6376f102821f9f1ca03a5d65ca8eae64963eb2fea7a38910e0903c13abf3ca62";
const VECTOR_PAYLOAD: &str = "6d65736873796e6320763120696e646578206261746368207061796c6f616400\
    0101010101010101010101010101010101010101010101010101010101010101\
    6376f102821f9f1ca03a5d65ca8eae64963eb2fea7a38910e0903c13abf3ca62\
    6401010101\
    04646f6373010080c49fd50c00ed03000001888e98a8c0e0808101010001";
const VECTOR_SIGNATURE: &str = "32b9e72256ca804a942c7bbc6b4581328a0d43ff507486e75eb4d5d37c2c6dae\
    92dbafe9049f9a78fd4930774e865cb36db5d104abd21e9be725d01fe69ca10f";
const VECTOR_FRAME: &str = "00000084066376f102821f9f1ca03a5d65ca8eae64963eb2fea7a38910e0903c13abf3ca62\
    01010101\
    04646f6373010080c49fd50c00ed03000001888e98a8c0e0808101010001\
    01\
    32b9e72256ca804a942c7bbc6b4581328a0d43ff507486e75eb4d5d37c2c6dae\
    92dbafe9049f9a78fd4930774e865cb36db5d104abd21e9be725d01fe69ca10f";

/// Both sides offer; one side's proof fails at the other. The checking side
/// refuses even though it offered too; the side with the bad proof, which
/// saw a good proof and thinks the folder open, takes the refusal as a
/// violation.
#[test]
fn refusal_after_simultaneous_offers_with_a_bad_proof() {
    let (mut a, mut b) = negotiated();
    a.open_folder(&rw(), FolderOffer::fresh(1, 0)).unwrap();
    b.open_folder(&rw(), FolderOffer::fresh(2, 0)).unwrap();
    let Some(Message::OpenFolder(mut offer)) = sent(&mut a).pop() else {
        panic!("no offer");
    };
    offer.access_proof[5] ^= 0x40;
    b.handle_bytes(&frame(Message::OpenFolder(offer)), &[rw()][..])
        .unwrap();
    assert!(matches!(
        events(&mut b)[..],
        [Event::FolderRejected {
            reason: RejectReason::BadAccessProof,
            ..
        }]
    ));
    assert!(!b.is_open(&share()));
    let err = deliver(&mut b, &mut a, &[rw()][..]).unwrap_err();
    assert_eq!(err, ProtocolError::UnexpectedRefusal { share: share() });
}

// --- Peer exchange (version 2) ----------------------------------------------

fn pex_peer(device: u8, addresses: &[&str]) -> message::PeerAddresses {
    message::PeerAddresses {
        device: DeviceId::from_bytes([device; 32]),
        addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
    }
}

/// A connection of `versions` on `a`'s side, negotiated and with the folder
/// open.
fn open_pair_speaking(versions: VersionRange) -> (Connection, Connection) {
    let mut a = Connection::new(
        ProofRole::Initiator,
        LocalInfo::new(DeviceId::from_bytes(A), "a", "t").with_versions(versions),
        BINDING,
        DeviceId::from_bytes(B),
    );
    let mut b = responder();
    deliver(&mut a, &mut b, &[rw()][..]).unwrap();
    deliver(&mut b, &mut a, &[rw()][..]).unwrap();
    a.open_folder(&rw(), FolderOffer::fresh(1, 0)).unwrap();
    b.open_folder(&rw(), FolderOffer::fresh(2, 0)).unwrap();
    deliver(&mut a, &mut b, &[rw()][..]).unwrap();
    deliver(&mut b, &mut a, &[rw()][..]).unwrap();
    events(&mut a);
    events(&mut b);
    (a, b)
}

#[test]
fn peers_of_an_open_folder_are_delivered() {
    let (mut a, mut b) = open_pair(&rw(), 0);
    assert!(a.has_peer_exchange() && b.has_peer_exchange());
    let list = vec![
        pex_peer(7, &["192.0.2.7:22000", "[2001:db8::7]:22000"]),
        pex_peer(8, &["127.0.0.1:5"]),
    ];
    a.send_peers(share(), list.clone()).unwrap();
    deliver(&mut a, &mut b, &[rw()][..]).unwrap();
    assert_eq!(
        events(&mut b),
        [Event::PeersReceived {
            share: share(),
            peers: list
        }]
    );
    // An empty list is fine too (the last other peer left).
    a.send_peers(share(), Vec::new()).unwrap();
    deliver(&mut a, &mut b, &[rw()][..]).unwrap();
    assert!(
        matches!(&events(&mut b)[..], [Event::PeersReceived { peers, .. }] if peers.is_empty())
    );
}

#[test]
fn peers_need_version_2_both_ways() {
    let (a, mut b) = open_pair_speaking(VersionRange::new(1, 1).unwrap());
    assert_eq!(a.negotiated_version(), Some(1));
    assert!(!a.has_peer_exchange() && !b.has_peer_exchange());
    assert!(matches!(
        b.send_peers(share(), Vec::new()),
        Err(UsageError::NotInVersion { negotiated: 1, .. })
    ));
    // A version-2 side that receives Peers on a version-1 connection treats
    // it as an unknown type.
    let bytes = frame(Message::Peers(message::Peers {
        share: share(),
        peers: Vec::new(),
    }));
    let err = expect_close(&mut b, &bytes, CloseCode::UnknownMessage);
    assert!(matches!(
        err,
        ProtocolError::Decode(message::DecodeError::UnknownType { number: 8 })
    ));
}

#[test]
fn peers_of_a_folder_not_open_are_refused() {
    let (mut a, mut b) = negotiated();
    assert!(matches!(
        a.send_peers(share(), Vec::new()),
        Err(UsageError::FolderState { .. })
    ));
    let bytes = frame(Message::Peers(message::Peers {
        share: share(),
        peers: Vec::new(),
    }));
    expect_close(&mut b, &bytes, CloseCode::FolderNotOpen);
}

#[test]
fn bad_peer_lists_are_refused_by_both_sides() {
    let me = DeviceId::from_bytes(B);
    let cases: Vec<(Vec<message::PeerAddresses>, PeersProblem)> = vec![
        (vec![pex_peer(2, &["192.0.2.1:1"])], PeersProblem::Receiver),
        (
            vec![pex_peer(7, &["192.0.2.1:1"]), pex_peer(7, &["192.0.2.2:1"])],
            PeersProblem::Duplicate(DeviceId::from_bytes([7; 32])),
        ),
        (
            vec![pex_peer(7, &[])],
            PeersProblem::AddressCount(DeviceId::from_bytes([7; 32])),
        ),
        (
            vec![pex_peer(7, &["192.0.2.1:0"])],
            PeersProblem::Address("192.0.2.1:0".parse().unwrap()),
        ),
        (
            vec![pex_peer(7, &["0.0.0.0:5"])],
            PeersProblem::Address("0.0.0.0:5".parse().unwrap()),
        ),
        (
            vec![pex_peer(7, &["239.1.1.1:5"])],
            PeersProblem::Address("239.1.1.1:5".parse().unwrap()),
        ),
        (
            vec![pex_peer(7, &["[fe80::1]:5"])],
            PeersProblem::Address("[fe80::1]:5".parse().unwrap()),
        ),
    ];
    assert_eq!(check_peers(&cases[0].0, &me), Err(PeersProblem::Receiver));
    for (list, problem) in cases {
        let (mut a, mut b) = open_pair(&rw(), 0);
        assert_eq!(
            a.send_peers(share(), list.clone()),
            Err(UsageError::BadPeers {
                share: share(),
                problem
            })
        );
        assert!(sent(&mut a).is_empty(), "nothing sent");
        let bytes = frame(Message::Peers(message::Peers {
            share: share(),
            peers: list,
        }));
        let err = expect_close(&mut b, &bytes, CloseCode::Malformed);
        assert_eq!(
            err,
            ProtocolError::BadPeers {
                share: share(),
                problem
            }
        );
    }
}

// --- Chunks of partial files (version 3) -------------------------------------

fn span(first: u32, count: u32) -> message::ChunkSpan {
    message::ChunkSpan { first, count }
}

fn held(spans: Vec<message::ChunkSpan>) -> Vec<u8> {
    frame(Message::ChunksHeld(message::ChunksHeld {
        share: share(),
        path: RelPath::new("big.bin").unwrap(),
        file: Hash::of(b"big"),
        spans,
    }))
}

#[test]
fn chunks_held_of_an_open_folder_are_delivered() {
    let (mut a, mut b) = open_pair(&rw(), 0);
    assert!(a.has_held_chunks() && b.has_held_chunks());
    assert!(a.has_chunk_runs() && b.has_chunk_runs());
    let spans = message::ChunkSpan::runs([7, 0, 1, 2, 9, 8, 2]);
    assert_eq!(spans, [span(0, 3), span(7, 3)]);
    let path = RelPath::new("big.bin").unwrap();
    a.send_chunks_held(share(), path.clone(), Hash::of(b"big"), spans.clone())
        .unwrap();
    deliver(&mut a, &mut b, &[rw()][..]).unwrap();
    assert_eq!(
        events(&mut b),
        [Event::ChunksHeld {
            share: share(),
            path,
            file: Hash::of(b"big"),
            spans
        }]
    );
}

#[test]
fn chunks_held_need_version_3_both_ways() {
    let (a, mut b) = open_pair_speaking(VersionRange::new(1, 2).unwrap());
    assert_eq!(a.negotiated_version(), Some(2));
    assert!(!a.has_held_chunks() && !b.has_held_chunks());
    assert!(!a.has_chunk_runs() && !b.has_chunk_runs());
    assert!(matches!(
        b.send_chunks_held(
            share(),
            RelPath::new("f").unwrap(),
            Hash::of(b"f"),
            vec![span(0, 1)]
        ),
        Err(UsageError::NotInVersion { negotiated: 2, .. })
    ));
    let err = expect_close(&mut b, &held(vec![span(0, 1)]), CloseCode::UnknownMessage);
    assert!(matches!(
        err,
        ProtocolError::Decode(message::DecodeError::UnknownType { number: 9 })
    ));
}

#[test]
fn chunks_held_of_a_folder_not_open_are_refused() {
    let (mut a, mut b) = negotiated();
    assert!(matches!(
        a.send_chunks_held(
            share(),
            RelPath::new("f").unwrap(),
            Hash::of(b"f"),
            vec![span(0, 1)]
        ),
        Err(UsageError::FolderState { .. })
    ));
    expect_close(&mut b, &held(vec![span(0, 1)]), CloseCode::FolderNotOpen);
}

#[test]
fn bad_runs_of_chunks_held_are_refused_by_both_sides() {
    let cases = [
        vec![],
        vec![span(0, 0)],
        vec![span(5, 1), span(2, 1)],
        vec![span(0, 3), span(2, 1)],
        vec![span(u32::MAX, 2)],
    ];
    for spans in cases {
        let (mut a, mut b) = open_pair(&rw(), 0);
        assert_eq!(
            a.send_chunks_held(
                share(),
                RelPath::new("f").unwrap(),
                Hash::of(b"f"),
                spans.clone()
            ),
            Err(UsageError::BadChunkSpans { share: share() }),
            "{spans:?}"
        );
        assert!(sent(&mut a).is_empty(), "nothing sent");
        let err = expect_close(&mut b, &held(spans), CloseCode::Malformed);
        assert_eq!(err, ProtocolError::BadChunkSpans { share: share() });
    }
    // Touching runs and the last chunk number are fine.
    let (mut a, _) = open_pair(&rw(), 0);
    a.send_chunks_held(
        share(),
        RelPath::new("f").unwrap(),
        Hash::of(b"f"),
        vec![span(0, 2), span(2, 1), span(u32::MAX, 1)],
    )
    .unwrap();
}

// --- Chunk-list patches (version 5) --------------------------------------------

/// A file entry of `n` chunks numbered from `from`.
fn big(sequence: u64, chunks: impl Iterator<Item = u32>) -> FileEntry {
    let chunks: Vec<ChunkRef> = chunks
        .map(|n| ChunkRef {
            hash: Hash::of(&n.to_le_bytes()),
            len: 65_536,
        })
        .collect();
    let mut file = entry("big.bin", sequence);
    file.size = chunks.iter().map(|c| u64::from(c.len)).sum();
    file.content = Some(Content {
        hash: Hash::of(&sequence.to_le_bytes()),
        chunk_avg: 65_536,
        chunks,
    });
    file
}

/// Sends `entries` as batch `sequence..=sequence` from `a` to `b`; returns
/// the frame's message type and length, and what `b` delivered.
fn send_one(
    a: &mut Connection,
    b: &mut Connection,
    entries: &[FileEntry],
) -> (MessageType, usize, Vec<FileEntry>) {
    let sequence = entries[0].sequence;
    a.send_index_batch(share(), sequence, sequence, entries)
        .unwrap();
    let frame = a.poll_transmit().unwrap();
    assert!(a.poll_transmit().is_none());
    let message_type = Message::decode(&frame[HEADER_LEN..])
        .unwrap()
        .message_type();
    b.handle_bytes(&frame, &[rw()][..]).unwrap();
    let delivered = events(b)
        .into_iter()
        .flat_map(|event| match event {
            Event::IndexReceived { batch, .. } => {
                assert!(batch.signed);
                batch.entries
            }
            other => panic!("{other:?}"),
        })
        .collect();
    (message_type, frame.len(), delivered)
}

#[test]
fn a_changed_big_file_travels_as_a_patch_and_arrives_whole() {
    let (mut a, mut b) = open_pair(&rw(), 0);
    assert!(a.has_patches() && b.has_patches());
    let first = big(1, 0..1000);
    let (kind, whole_len, delivered) = send_one(&mut a, &mut b, std::slice::from_ref(&first));
    assert_eq!((kind, delivered), (MessageType::IndexBatch, vec![first]));

    // Two chunks rewritten, one inserted: the patch carries three.
    let edited = big(2, (0..10).chain([5000, 5001, 5002]).chain(12..1000));
    let (kind, patch_len, delivered) = send_one(&mut a, &mut b, std::slice::from_ref(&edited));
    assert_eq!((kind, delivered), (MessageType::IndexPatch, vec![edited]));
    assert!(
        patch_len < whole_len / 50,
        "{patch_len} against {whole_len}"
    );

    // The patched version is the next base; a rewrite travels whole.
    let again = big(3, (0..10).chain([5000, 5001, 5002, 6000]).chain(12..1000));
    let (kind, _, delivered) = send_one(&mut a, &mut b, std::slice::from_ref(&again));
    assert_eq!((kind, delivered), (MessageType::IndexPatch, vec![again]));
    let rewritten = big(4, 7000..8000);
    let (kind, _, delivered) = send_one(&mut a, &mut b, std::slice::from_ref(&rewritten));
    assert_eq!(
        (kind, delivered),
        (MessageType::IndexBatch, vec![rewritten])
    );
}

#[test]
fn a_version_4_peer_gets_whole_entries() {
    let (mut a, mut b) = open_pair_speaking(VersionRange::new(1, 4).unwrap());
    assert!(!a.has_patches() && !b.has_patches());
    for (sequence, chunks) in [(1, 0..1000), (2, 1..1000)] {
        let file = big(sequence, chunks);
        let (kind, _, delivered) = send_one(&mut a, &mut b, std::slice::from_ref(&file));
        assert_eq!((kind, delivered), (MessageType::IndexBatch, vec![file]));
    }
    let patch = frame(Message::IndexPatch(message::IndexPatch {
        share: share(),
        first_sequence: 3,
        last_sequence: 3,
        complete: false,
        entries: vec![message::PatchEntry::Whole(big(3, 0..1000))],
        signature: None,
    }));
    let err = expect_close(&mut b, &patch, CloseCode::UnknownMessage);
    assert!(matches!(
        err,
        ProtocolError::Decode(message::DecodeError::UnknownType { number: 10 })
    ));
}

#[test]
fn a_patch_the_receiver_cannot_rebuild_is_refused() {
    let mut stripped = big(2, std::iter::empty());
    stripped.size = 65_536;
    let patch = |base_sequence, ops| {
        frame(Message::IndexPatch(message::IndexPatch {
            share: share(),
            first_sequence: 2,
            last_sequence: 2,
            complete: false,
            entries: vec![message::PatchEntry::Patched {
                entry: stripped.clone(),
                base_sequence,
                ops,
            }],
            signature: None,
        }))
    };
    let keep = |n| vec![crate::patch::ListOp::Keep(n)];
    let cases = [
        (patch(1, keep(1)), PatchProblem::NoBase, false),
        (
            patch(7, keep(1)),
            PatchProblem::WrongBase {
                named: 7,
                recorded: 1,
            },
            true,
        ),
        (
            patch(1, keep(1001)),
            PatchProblem::PastEnd { len: 1000 },
            true,
        ),
    ];
    for (bytes, problem, with_base) in cases {
        let (mut a, mut b) = open_pair(&rw(), 0);
        if with_base {
            send_one(&mut a, &mut b, &[big(1, 0..1000)]);
        } else {
            send_one(&mut a, &mut b, &[entry("other", 1)]);
        }
        let err = expect_close(&mut b, &bytes, CloseCode::InvalidEntry);
        assert_eq!(
            err,
            ProtocolError::Batch {
                share: share(),
                error: BatchError::BadPatch {
                    path: RelPath::new("big.bin").unwrap(),
                    problem,
                },
            }
        );
    }
}

#[test]
fn a_rebuilt_entry_must_still_match_its_signature() {
    // A relay that changes a patch changes the rebuilt entry, and the
    // signature (over whole entries) no longer verifies.
    let (mut a, mut b) = open_pair(&rw(), 0);
    send_one(&mut a, &mut b, &[big(1, 0..1000)]);
    let edited = big(2, (0..10).chain([5000]).chain(11..1000));
    a.send_index_batch(share(), 2, 2, &[edited]).unwrap();
    let frame_bytes = a.poll_transmit().unwrap();
    let Message::IndexPatch(mut patch) = Message::decode(&frame_bytes[HEADER_LEN..]).unwrap()
    else {
        panic!("a patch")
    };
    let message::PatchEntry::Patched { ops, .. } = &mut patch.entries[0] else {
        panic!("a patched entry")
    };
    // Another chunk of the same length in place of the new one.
    assert!(matches!(ops[1], crate::patch::ListOp::Insert(_)));
    ops[1] = crate::patch::ListOp::Insert(vec![ChunkRef {
        hash: Hash::of(b"forged"),
        len: 65_536,
    }]);
    let err = expect_close(
        &mut b,
        &frame(Message::IndexPatch(patch)),
        CloseCode::BadSignature,
    );
    assert!(matches!(err, ProtocolError::BadSignature { .. }), "{err}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]

    /// Whatever a sender's batches hold (big files edited, replaced, shrunk
    /// to one chunk, deleted, bases evicted past the budget), the receiver
    /// delivers exactly the entries sent: both sides keep the same bases.
    #[test]
    fn patched_batches_always_arrive_as_sent(
        steps in proptest::collection::vec(
            (0usize..4, 0u8..5, 0usize..30_000, 0u32..1_000_000),
            1..24,
        ),
    ) {
        let (mut a, mut b) = open_pair(&rw(), 0);
        let paths = ["p0", "p1", "d/p2", "d/p3"];
        let mut current: Vec<Vec<u32>> = vec![Vec::new(); paths.len()];
        for (sequence, (which, action, size, seed)) in steps.into_iter().enumerate() {
            let sequence = sequence as u64 + 1;
            let list = &mut current[which];
            let mut deleted = false;
            match action {
                // A new file of `size` chunks (up to past the budget when
                // several are held).
                0 => *list = (0..size as u32).map(|n| seed.wrapping_add(n)).collect(),
                // An edit: a few chunks replaced, one inserted.
                1 | 2 if !list.is_empty() => {
                    let at = size % list.len();
                    list[at] = seed;
                    list.insert(at / 2, seed ^ 1);
                }
                // Shrunk to one chunk (never a base).
                3 => *list = vec![seed],
                _ => {
                    list.clear();
                    deleted = true;
                }
            }
            let mut entry = big(sequence, list.clone().into_iter());
            entry.path = RelPath::new(paths[which]).unwrap();
            if deleted || list.is_empty() {
                entry.deleted = true;
                entry.size = 0;
                entry.content = None;
            }
            let (_, _, delivered) = send_one(&mut a, &mut b, std::slice::from_ref(&entry));
            proptest::prop_assert_eq!(delivered, vec![entry]);
        }
    }
}
