//! Message encoding: round trips (proptest) for every message type, and
//! golden bytes that pin the wire format.

mod util;

use meshsync_core::entry::{ChunkRef, Content, FileEntry, FileKind, Timestamp};
use meshsync_core::ids::ShortId;
use meshsync_core::keys::{BatchSignature, KeyKind};
use meshsync_core::version::VersionVector;
use meshsync_proto::CloseCode;
use meshsync_proto::frame::{FrameDecoder, HEADER_LEN};
use meshsync_proto::limits::MAX_FRAME_LEN;
use meshsync_proto::message::{
    ChunkSpan, ChunksHeld, Close, DecodeError, DownloadProgress, FolderRefused, Hello, IndexBatch,
    IndexPatch, Message, MessageType, OpenFolder, PatchEntry, PeerAddresses, Peers, Ping, Pong,
    RefuseReason, VersionRange,
};
use meshsync_proto::patch::ListOp;
use proptest::prelude::*;
use util::{arb_entry, arb_path, arb_share};

fn arb_versions() -> impl Strategy<Value = VersionRange> {
    (1u16..100, 0u16..100).prop_map(|(min, extra)| VersionRange::new(min, min + extra).unwrap())
}

fn arb_kind() -> impl Strategy<Value = KeyKind> {
    prop_oneof![
        Just(KeyKind::ReadWrite),
        Just(KeyKind::ReadOnly),
        Just(KeyKind::Encrypted)
    ]
}

fn arb_ops() -> impl Strategy<Value = Vec<ListOp>> {
    prop::collection::vec(
        prop_oneof![
            any::<u32>().prop_map(ListOp::Keep),
            any::<u32>().prop_map(ListOp::Skip),
            prop::collection::vec((any::<[u8; 32]>(), any::<u32>()), 0..3).prop_map(|chunks| {
                ListOp::Insert(
                    chunks
                        .into_iter()
                        .map(|(hash, len)| ChunkRef {
                            hash: meshsync_core::ids::Hash(hash),
                            len,
                        })
                        .collect(),
                )
            }),
        ],
        0..6,
    )
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (arb_versions(), ".{0,20}", ".{0,40}").prop_map(|(versions, client, device_name)| {
            Message::Hello(Hello {
                versions,
                client,
                device_name,
            })
        }),
        (any::<u16>(), ".{0,40}").prop_map(|(code, reason)| Message::Close(Close {
            code: CloseCode::from_u16(code),
            reason
        })),
        any::<u64>().prop_map(|nonce| Message::Ping(Ping { nonce })),
        any::<u64>().prop_map(|nonce| Message::Pong(Pong { nonce })),
        (
            arb_share(),
            any::<[u8; 32]>(),
            any::<Option<[u8; 32]>>(),
            arb_kind(),
            any::<[u64; 4]>()
        )
            .prop_map(|(share, access_proof, read_proof, kind, n)| {
                Message::OpenFolder(OpenFolder {
                    share,
                    access_proof,
                    read_proof,
                    kind,
                    index_id: n[0],
                    max_sequence: n[1],
                    want_index_id: n[2],
                    want_since: n[3],
                })
            }),
        (arb_share(), 0u8..3).prop_map(|(share, reason)| {
            Message::FolderRefused(FolderRefused {
                share,
                reason: RefuseReason::try_from(reason).unwrap(),
            })
        }),
        (
            arb_share(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            prop::collection::vec(arb_entry(), 0..5),
            any::<Option<[u8; 32]>>()
        )
            .prop_map(|(share, first, last, complete, entries, sig)| {
                Message::IndexBatch(IndexBatch {
                    share,
                    first_sequence: first,
                    last_sequence: last,
                    complete,
                    entries,
                    signature: sig.map(|half| {
                        let mut bytes = [0u8; 64];
                        bytes[..32].copy_from_slice(&half);
                        bytes[32..].copy_from_slice(&half);
                        BatchSignature::from_bytes(bytes)
                    }),
                })
            }),
        (
            arb_share(),
            any::<[u64; 2]>(),
            prop::collection::vec(
                (arb_entry(), prop::option::of((any::<u64>(), arb_ops()))),
                0..5
            ),
        )
            .prop_map(|(share, [first, last], entries)| {
                Message::IndexPatch(IndexPatch {
                    share,
                    first_sequence: first,
                    last_sequence: last,
                    complete: false,
                    entries: entries
                        .into_iter()
                        .map(|(entry, patch)| match patch {
                            None => PatchEntry::Whole(entry),
                            Some((base_sequence, ops)) => PatchEntry::Patched {
                                entry,
                                base_sequence,
                                ops,
                            },
                        })
                        .collect(),
                    signature: None,
                })
            }),
        (arb_share(), arb_path(), any::<u64>(), any::<u64>()).prop_map(
            |(share, path, chunks_done, chunks_total)| {
                Message::DownloadProgress(DownloadProgress {
                    share,
                    path,
                    chunks_done,
                    chunks_total,
                })
            }
        ),
        (
            arb_share(),
            prop::collection::vec(
                (
                    any::<[u8; 32]>(),
                    prop::collection::vec(any::<std::net::SocketAddr>(), 0..9)
                ),
                0..33
            )
        )
            .prop_map(|(share, peers)| {
                Message::Peers(Peers {
                    share,
                    peers: peers
                        .into_iter()
                        .map(|(device, addresses)| PeerAddresses {
                            device: meshsync_core::ids::DeviceId::from_bytes(device),
                            // The wire carries no IPv6 flow label or scope.
                            addresses: addresses
                                .into_iter()
                                .map(|a| std::net::SocketAddr::new(a.ip(), a.port()))
                                .collect(),
                        })
                        .collect(),
                })
            }),
        (
            arb_share(),
            arb_path(),
            any::<[u8; 32]>(),
            prop::collection::vec(any::<(u32, u32)>(), 0..5)
        )
            .prop_map(|(share, path, file, spans)| {
                Message::ChunksHeld(ChunksHeld {
                    share,
                    path,
                    file: meshsync_core::ids::Hash(file),
                    // Any runs decode; the rules are the connection's.
                    spans: spans
                        .into_iter()
                        .map(|(first, count)| ChunkSpan { first, count })
                        .collect(),
                })
            }),
    ]
}

proptest! {
    #[test]
    fn every_message_round_trips(message in arb_message()) {
        let payload = message.encode();
        prop_assert_eq!(Message::decode(&payload), Ok(message.clone()));
        let frame = message.to_frame().unwrap();
        prop_assert_eq!(&frame[..HEADER_LEN], &(payload.len() as u32).to_be_bytes()[..]);
        prop_assert_eq!(&frame[HEADER_LEN..], &payload[..]);
    }

    /// A stream of messages survives framing and any split.
    #[test]
    fn message_streams_round_trip(
        messages in prop::collection::vec(arb_message(), 0..8),
        piece in 1usize..50,
    ) {
        let stream: Vec<u8> = messages.iter().flat_map(|m| m.to_frame().unwrap()).collect();
        let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
        let mut out = Vec::new();
        for bytes in stream.chunks(piece) {
            decoder.push(bytes).unwrap();
            while let Some(payload) = decoder.next_frame().unwrap() {
                out.push(Message::decode(&payload).unwrap());
            }
        }
        prop_assert_eq!(out, messages);
    }

    /// Cutting a message short never decodes as something else silently:
    /// it fails (Hello alone may lose only its trailing extension bytes,
    /// of which it has none here, so it fails too).
    #[test]
    fn truncated_messages_fail(message in arb_message(), cut in any::<prop::sample::Index>()) {
        let payload = message.encode();
        let cut = cut.index(payload.len());
        prop_assert!(Message::decode(&payload[..cut]).is_err());
    }
}

#[test]
fn message_type_numbers_are_pinned() {
    let pinned = [
        (MessageType::Hello, 0),
        (MessageType::Close, 1),
        (MessageType::Ping, 2),
        (MessageType::Pong, 3),
        (MessageType::OpenFolder, 4),
        (MessageType::FolderRefused, 5),
        (MessageType::IndexBatch, 6),
        (MessageType::DownloadProgress, 7),
        (MessageType::Peers, 8),
        (MessageType::ChunksHeld, 9),
        (MessageType::IndexPatch, 10),
    ];
    for (ty, number) in pinned {
        assert_eq!(ty.number(), number);
        assert_eq!(MessageType::from_number(number), Some(ty));
    }
    assert_eq!(MessageType::from_number(11), None);
    assert_eq!(MessageType::IndexPatch.since_version(), 5);
    assert_eq!(MessageType::Peers.since_version(), 2);
    assert_eq!(MessageType::ChunksHeld.since_version(), 3);
    assert_eq!(MessageType::IndexBatch.since_version(), 1);
}

/// The byte layouts given in docs/protocol.md.
#[test]
fn golden_bytes() {
    let hello = Message::Hello(Hello {
        versions: VersionRange::new(1, 2).unwrap(),
        client: "ms/1".into(),
        device_name: "pc".into(),
    });
    assert_eq!(
        hello.to_frame().unwrap(),
        [
            0, 0, 0, 11, 0, 1, 2, 4, b'm', b's', b'/', b'1', 2, b'p', b'c'
        ]
    );
    let ping = Message::Ping(Ping { nonce: 300 });
    assert_eq!(ping.to_frame().unwrap(), [0, 0, 0, 3, 2, 0xac, 0x02]);
    let close = Message::Close(Close {
        code: CloseCode::IncompatibleVersion,
        reason: "v".into(),
    });
    assert_eq!(close.to_frame().unwrap(), [0, 0, 0, 4, 1, 6, 1, b'v']);
    let refused = Message::FolderRefused(FolderRefused {
        share: meshsync_core::ids::ShareId::from_bytes([0xee; 32]),
        reason: RefuseReason::NotAllowed,
    });
    let mut expected = vec![0, 0, 0, 34, 5];
    expected.extend_from_slice(&[0xee; 32]);
    expected.push(1);
    assert_eq!(refused.to_frame().unwrap(), expected);
    let peers = Message::Peers(Peers {
        share: meshsync_core::ids::ShareId::from_bytes([0xee; 32]),
        peers: vec![PeerAddresses {
            device: meshsync_core::ids::DeviceId::from_bytes([0xdd; 32]),
            addresses: vec![
                "192.0.2.1:22000".parse().unwrap(),
                "[2001:db8::1]:300".parse().unwrap(),
            ],
        }],
    });
    let mut expected = vec![0, 0, 0, 94, 8];
    expected.extend_from_slice(&[0xee; 32]);
    expected.push(1); // one peer
    expected.extend_from_slice(&[0xdd; 32]);
    expected.push(2); // two addresses
    expected.extend_from_slice(&[0, 192, 0, 2, 1, 0xf0, 0xab, 0x01]); // V4, port 22000
    expected.extend_from_slice(&[1, 0x20, 0x01, 0x0d, 0xb8]);
    expected.extend_from_slice(&[0; 11]);
    expected.extend_from_slice(&[1, 0xac, 0x02]); // V6, port 300
    assert_eq!(peers.to_frame().unwrap(), expected);
    let held = Message::ChunksHeld(ChunksHeld {
        share: meshsync_core::ids::ShareId::from_bytes([0xee; 32]),
        path: meshsync_core::path::RelPath::new("big.bin").unwrap(),
        file: meshsync_core::ids::Hash([0xcc; 32]),
        spans: vec![
            ChunkSpan { first: 0, count: 3 },
            ChunkSpan {
                first: 300,
                count: 1,
            },
        ],
    });
    let mut expected = vec![0, 0, 0, 79, 9];
    expected.extend_from_slice(&[0xee; 32]);
    expected.push(7);
    expected.extend_from_slice(b"big.bin");
    expected.extend_from_slice(&[0xcc; 32]);
    expected.extend_from_slice(&[2, 0, 3, 0xac, 0x02, 1]); // two runs: 0+3, 300+1
    assert_eq!(held.to_frame().unwrap(), expected);

    // An IndexPatch: one file entry, its chunk list patched from base
    // sequence 1: keep 10, insert one chunk, skip 1, keep 53.
    let file = FileEntry {
        path: meshsync_core::path::RelPath::new("big").unwrap(),
        kind: FileKind::File,
        size: 4_194_304,
        mtime: Timestamp {
            secs: 1_700_000_000,
            nanos: 0,
        },
        permissions: 0o644,
        symlink_target: None,
        content: Some(Content {
            hash: meshsync_core::ids::Hash([0xcc; 32]),
            chunk_avg: 65_536,
            chunks: Vec::new(),
        }),
        version: {
            let mut version = VersionVector::new();
            version.bump(ShortId(0x0102_0304_0506_0708));
            version.bump(ShortId(0x0102_0304_0506_0708));
            version
        },
        deleted: false,
        sequence: 2,
    };
    let patch = Message::IndexPatch(IndexPatch {
        share: meshsync_core::ids::ShareId::from_bytes([0xee; 32]),
        first_sequence: 2,
        last_sequence: 2,
        complete: false,
        entries: vec![PatchEntry::Patched {
            entry: file,
            base_sequence: 1,
            ops: vec![
                ListOp::Keep(10),
                ListOp::Insert(vec![ChunkRef {
                    hash: meshsync_core::ids::Hash([0x11; 32]),
                    len: 65_536,
                }]),
                ListOp::Skip(1),
                ListOp::Keep(53),
            ],
        }],
        signature: None,
    });
    let mut expected = vec![0, 0, 0, 152, 10];
    expected.extend_from_slice(&[0xee; 32]);
    expected.extend_from_slice(&[2, 2, 0]); // first, last, complete
    expected.extend_from_slice(&[1, 1]); // one entry, patched
    expected.extend_from_slice(&[3, b'b', b'i', b'g', 0, 0x80, 0x80, 0x80, 0x02]); // path, file, size
    expected.extend_from_slice(&[0x80, 0xc4, 0x9f, 0xd5, 0x0c, 0, 0xa4, 0x03, 0]); // mtime, mode, no target
    expected.push(1); // content:
    expected.extend_from_slice(&[0xcc; 32]); // hash
    expected.extend_from_slice(&[0x80, 0x80, 0x04, 0]); // chunk_avg, no chunks
    expected.extend_from_slice(&[1, 0x88, 0x8e, 0x98, 0xa8, 0xc0, 0xe0, 0x80, 0x81, 0x01, 2]); // version
    expected.extend_from_slice(&[0, 2]); // not deleted, sequence 2
    expected.extend_from_slice(&[1, 4]); // base sequence 1, four steps:
    expected.extend_from_slice(&[0, 10]); // keep 10
    expected.extend_from_slice(&[2, 1]); // insert one chunk
    expected.extend_from_slice(&[0x11; 32]);
    expected.extend_from_slice(&[0x80, 0x80, 0x04]);
    expected.extend_from_slice(&[1, 1, 0, 53]); // skip 1, keep 53
    expected.push(0); // no signature
    assert_eq!(patch.to_frame().unwrap(), expected);
}

#[test]
fn chunks_held_over_the_limit_do_not_decode() {
    use meshsync_proto::limits::MAX_HELD_SPANS;
    let encode = |n: usize| {
        Message::ChunksHeld(ChunksHeld {
            share: meshsync_core::ids::ShareId::from_bytes([0; 32]),
            path: meshsync_core::path::RelPath::new("f").unwrap(),
            file: meshsync_core::ids::Hash([0; 32]),
            spans: (0..n as u32)
                .map(|i| ChunkSpan {
                    first: 2 * i,
                    count: 1,
                })
                .collect(),
        })
        .encode()
    };
    assert!(Message::decode(&encode(MAX_HELD_SPANS)).is_ok());
    assert!(Message::decode(&encode(MAX_HELD_SPANS + 1)).is_err());
}

#[test]
fn peer_lists_over_the_limits_do_not_decode() {
    use meshsync_proto::limits::{MAX_PEX_ADDRESSES, MAX_PEX_PEERS};
    let peer = |n: usize| PeerAddresses {
        device: meshsync_core::ids::DeviceId::from_bytes([1; 32]),
        addresses: vec!["192.0.2.1:1".parse().unwrap(); n],
    };
    let encode = |peers: Vec<PeerAddresses>| {
        Message::Peers(Peers {
            share: meshsync_core::ids::ShareId::from_bytes([0; 32]),
            peers,
        })
        .encode()
    };
    assert!(Message::decode(&encode(vec![peer(1); MAX_PEX_PEERS])).is_ok());
    assert!(Message::decode(&encode(vec![peer(1); MAX_PEX_PEERS + 1])).is_err());
    assert!(Message::decode(&encode(vec![peer(MAX_PEX_ADDRESSES)])).is_ok());
    assert!(Message::decode(&encode(vec![peer(MAX_PEX_ADDRESSES + 1)])).is_err());
    // A count of 2^32 peers in a tiny frame fails on the count, not on memory.
    let mut huge = vec![8u8];
    huge.extend_from_slice(&[0; 32]);
    huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(Message::decode(&huge).is_err());
}

#[test]
fn unknown_enum_values_do_not_decode() {
    // A FolderRefused with reason 9.
    let mut payload = vec![5u8];
    payload.extend_from_slice(&[0; 32]);
    payload.push(9);
    assert!(matches!(
        Message::decode(&payload),
        Err(DecodeError::Malformed {
            message_type: MessageType::FolderRefused,
            ..
        })
    ));
    assert_eq!(Message::decode(&[]), Err(DecodeError::NoType));
    assert_eq!(
        Message::decode(&[0x80, 0x01]),
        Err(DecodeError::UnknownType { number: 128 })
    );
}
