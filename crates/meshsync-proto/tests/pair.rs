//! Two connections wired back to back through the public API: the whole
//! life of a connection, and the ways the peers may differ (key kinds,
//! reconnection with incremental exchange, stream splitting).

mod util;

use meshsync_core::keys::{FolderKey, KeyKind};
use meshsync_core::path::RelPath;
use meshsync_proto::chunk::{ChunkRequest, ChunkResponse, ChunkStatus, ChunkVerifier};
use meshsync_proto::message::RefuseReason;
use meshsync_proto::{CloseCode, Event, FolderOffer, FolderStatus, Phase, Side};
use util::{Pair, file_entry, folder_key};

/// Handshake → open folder → index batches both ways → incremental update →
/// progress → ping → close.
#[test]
fn full_life_of_a_connection() {
    let key = FolderKey::ReadWrite(folder_key(1));
    let share = key.share_id();
    let mut pair = Pair::new(vec![key.clone()], vec![key.clone()]);

    // Hello both ways.
    pair.drive().unwrap();
    let (client, server) = pair.take_events();
    for (events, name) in [(&client, "server"), (&server, "laptop")] {
        assert!(matches!(
            &events[..],
            [Event::HelloReceived { negotiated: 5, device_name, client, .. }]
                if device_name == name && client == "meshsync-test/1"
        ));
    }
    assert_eq!(pair.client.phase(), Phase::Negotiated { version: 5 });

    // The client offers; the server is asked, accepts.
    pair.client
        .open_folder(&key, FolderOffer::fresh(0xc1, 3))
        .unwrap();
    pair.drive().unwrap();
    let (_, server) = pair.take_events();
    let [Event::FolderRequested { share: asked, peer }] = &server[..] else {
        panic!("{server:?}");
    };
    assert_eq!(*asked, share);
    assert_eq!(peer.kind, KeyKind::ReadWrite);
    assert!(peer.read_proven);
    pair.server
        .open_folder(&key, FolderOffer::fresh(0x5e, 1))
        .unwrap();
    pair.drive().unwrap();
    let (client, server) = pair.take_events();
    assert!(matches!(
        &client[..],
        [Event::FolderOpened {
            send_from: 1,
            receive_from: 1,
            peer_index_complete: false,
            ..
        }]
    ));
    assert!(matches!(
        &server[..],
        [Event::FolderOpened {
            send_from: 1,
            receive_from: 1,
            peer_index_complete: false,
            ..
        }]
    ));

    // Initial exchange: the client in two batches, the server in one.
    let client_index = [
        file_entry("docs/a.txt", 1, 10, 1),
        file_entry("docs/b.txt", 2, 3, 1),
        file_entry("photo.jpg", 3, 9, 1),
    ];
    pair.client
        .send_index_batch(share, 1, 2, &client_index[..2])
        .unwrap();
    pair.client
        .send_index_batch(share, 3, 3, &client_index[2..])
        .unwrap();
    let server_index = [file_entry("notes.md", 1, 5, 2)];
    pair.server
        .send_index_batch(share, 1, 1, &server_index)
        .unwrap();
    pair.drive().unwrap();
    let (client, server) = pair.take_events();
    let received: Vec<_> = server
        .iter()
        .map(|e| match e {
            Event::IndexReceived { share: s, batch } if *s == share => batch,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(received.len(), 2);
    assert!(received.iter().all(|b| b.signed));
    assert_eq!(
        [&received[0].complete, &received[1].complete],
        [&false, &true]
    );
    let all: Vec<_> = received.iter().flat_map(|b| b.entries.clone()).collect();
    assert_eq!(all, client_index);
    assert!(matches!(
        &client[..],
        [Event::IndexReceived { batch, .. }] if batch.complete && batch.signed && batch.entries == server_index
    ));

    // An incremental update after the initial exchange.
    let update = [file_entry("docs/a.txt", 4, 12, 1)];
    pair.client.send_index_batch(share, 4, 4, &update).unwrap();
    pair.drive().unwrap();
    let (_, server) = pair.take_events();
    assert!(matches!(
        &server[..],
        [Event::IndexReceived { batch, .. }] if !batch.complete && batch.first_sequence == 4 && batch.entries == update
    ));

    // Progress and ping.
    pair.server
        .send_progress(share, RelPath::new("docs/a.txt").unwrap(), 1, 3)
        .unwrap();
    pair.client.ping(9).unwrap();
    pair.drive().unwrap();
    let (client, server) = pair.take_events();
    assert!(matches!(
        &client[..],
        [
            Event::Progress {
                chunks_done: 1,
                chunks_total: 3,
                ..
            },
            Event::PongReceived { nonce: 9 }
        ]
    ));
    assert_eq!(server, vec![Event::PingReceived { nonce: 9 }]);

    // Close.
    pair.client.close(CloseCode::Shutdown, "going to sleep");
    pair.drive().unwrap();
    let (client, server) = pair.take_events();
    assert_eq!(
        client,
        vec![Event::Closed {
            code: CloseCode::Shutdown,
            reason: "going to sleep".into(),
            by: Side::Local
        }]
    );
    assert_eq!(
        server,
        vec![Event::Closed {
            code: CloseCode::Shutdown,
            reason: "going to sleep".into(),
            by: Side::Peer
        }]
    );
    assert!(pair.client.is_closed() && pair.server.is_closed());
    assert!(!pair.server.is_open(&share));
}

/// Frames delivered a byte at a time arrive the same.
#[test]
fn byte_by_byte_delivery() {
    let key = FolderKey::ReadWrite(folder_key(2));
    let share = key.share_id();
    let mut pair = Pair::new(vec![key.clone()], vec![key.clone()]);
    pair.piece = 1;
    pair.drive().unwrap();
    pair.client
        .open_folder(&key, FolderOffer::fresh(1, 2))
        .unwrap();
    pair.server
        .open_folder(&key, FolderOffer::fresh(2, 0))
        .unwrap();
    pair.drive().unwrap();
    let entries = [file_entry("x", 1, 7, 1), file_entry("y", 2, 0, 1)];
    pair.client.send_index_batch(share, 1, 2, &entries).unwrap();
    pair.drive().unwrap();
    let (_, server) = pair.take_events();
    assert!(matches!(
        server.last(),
        Some(Event::IndexReceived { batch, .. }) if batch.entries == entries && batch.complete
    ));
}

/// A second connection between the same devices sends only what changed.
#[test]
fn reconnect_exchanges_only_new_changes() {
    let key = FolderKey::ReadWrite(folder_key(3));
    let share = key.share_id();
    let mut pair = Pair::new(vec![key.clone()], vec![key.clone()]);
    pair.drive().unwrap();
    // The server holds the client's generation 7 up to sequence 40; the
    // client is now at 45.
    pair.client
        .open_folder(
            &key,
            FolderOffer {
                index_id: 7,
                max_sequence: 45,
                want_index_id: 8,
                want_since: 10,
            },
        )
        .unwrap();
    pair.server
        .open_folder(
            &key,
            FolderOffer {
                index_id: 8,
                max_sequence: 10,
                want_index_id: 7,
                want_since: 40,
            },
        )
        .unwrap();
    pair.drive().unwrap();
    let (client, server) = pair.take_events();
    assert!(matches!(
        &client[..],
        [
            ..,
            Event::FolderOpened {
                send_from: 41,
                receive_from: 11,
                peer_index_complete: true,
                ..
            }
        ]
    ));
    assert!(matches!(
        &server[..],
        [
            ..,
            Event::FolderOpened {
                send_from: 11,
                receive_from: 41,
                peer_index_complete: false,
                ..
            }
        ]
    ));
    let changes = [
        file_entry("new.txt", 43, 1, 1),
        file_entry("old.txt", 45, 2, 1),
    ];
    pair.client
        .send_index_batch(share, 41, 45, &changes)
        .unwrap();
    pair.drive().unwrap();
    let (_, server) = pair.take_events();
    assert!(matches!(
        &server[..],
        [Event::IndexReceived { batch, .. }] if batch.complete && batch.first_sequence == 41
    ));
}

/// Read-only and storage-only peers: their batches arrive unsigned
/// (availability only); a reader's claim is proven, a storage-only peer's is
/// not a reading claim at all.
#[test]
fn weaker_keys_send_unsigned_batches() {
    let rw = folder_key(4);
    let share = rw.share_id();
    for (client_key, kind) in [
        (FolderKey::ReadOnly(rw.read_only()), KeyKind::ReadOnly),
        (FolderKey::Encrypted(rw.encrypted()), KeyKind::Encrypted),
    ] {
        let server_key = FolderKey::ReadWrite(rw.clone());
        let mut pair = Pair::new(vec![client_key.clone()], vec![server_key.clone()]);
        pair.drive().unwrap();
        pair.client
            .open_folder(&client_key, FolderOffer::fresh(1, 1))
            .unwrap();
        pair.server
            .open_folder(&server_key, FolderOffer::fresh(2, 1))
            .unwrap();
        pair.drive().unwrap();
        let status = pair.server.folder_status(&share);
        let Some(FolderStatus::Open { peer }) = status else {
            panic!("{status:?}");
        };
        assert_eq!(peer.kind, kind);
        assert_eq!(peer.read_proven, kind == KeyKind::ReadOnly);
        pair.client
            .send_index_batch(share, 1, 1, &[file_entry("a", 1, 1, 1)])
            .unwrap();
        pair.server
            .send_index_batch(share, 1, 1, &[file_entry("b", 1, 1, 2)])
            .unwrap();
        pair.drive().unwrap();
        let (client, server) = pair.take_events();
        assert!(matches!(
            server.last(),
            Some(Event::IndexReceived { batch, .. }) if !batch.signed
        ));
        // Every kind verifies the read-write side's signature.
        assert!(matches!(
            client.last(),
            Some(Event::IndexReceived { batch, .. }) if batch.signed
        ));
    }
}

/// A device without the folder refuses; the offering side hears "refused"
/// and the connection carries on.
#[test]
fn offer_of_an_unknown_folder_is_refused() {
    let key = FolderKey::ReadWrite(folder_key(5));
    let mut pair = Pair::new(vec![key.clone()], vec![]);
    pair.drive().unwrap();
    pair.client
        .open_folder(&key, FolderOffer::fresh(1, 0))
        .unwrap();
    pair.drive().unwrap();
    let (client, _) = pair.take_events();
    assert!(matches!(
        client.last(),
        Some(Event::FolderRefused {
            reason: RefuseReason::Refused,
            ..
        })
    ));
    pair.client.ping(1).unwrap();
    pair.drive().unwrap();
    assert!(!pair.client.is_closed() && !pair.server.is_closed());
}

/// A chunk stream, driven by hand as the daemon would: the server serves
/// only for an open folder; the client verifies the bytes as they arrive.
#[test]
fn chunk_stream_round() {
    let key = FolderKey::ReadWrite(folder_key(6));
    let share = key.share_id();
    let mut pair = Pair::new(vec![key.clone()], vec![key.clone()]);
    pair.drive().unwrap();
    let data = b"the bytes of one chunk";
    let request = ChunkRequest {
        share,
        hash: meshsync_core::ids::Hash::of(data),
        len: data.len() as u32,
    };
    let serve = |pair: &Pair, wire: &[u8]| -> Vec<u8> {
        let request = ChunkRequest::decode(wire).unwrap();
        let mut out = Vec::new();
        if pair.server.is_open(&request.share) {
            out.extend_from_slice(&ChunkResponse::found(&request).encode());
            out.extend_from_slice(data);
        } else {
            out.extend_from_slice(&ChunkResponse::refused().encode());
        }
        out
    };
    // Not open yet: refused.
    let answer = serve(&pair, &request.encode());
    let header = ChunkResponse::decode(&answer[..ChunkResponse::ENCODED_LEN], &request).unwrap();
    assert_eq!(header.status, ChunkStatus::Refused);

    pair.client
        .open_folder(&key, FolderOffer::fresh(1, 0))
        .unwrap();
    pair.server
        .open_folder(&key, FolderOffer::fresh(2, 0))
        .unwrap();
    pair.drive().unwrap();
    let answer = serve(&pair, &request.encode());
    let (head, body) = answer.split_at(ChunkResponse::ENCODED_LEN);
    let header = ChunkResponse::decode(head, &request).unwrap();
    assert_eq!(header.status, ChunkStatus::Found);
    let mut verifier = ChunkVerifier::new(&request);
    for piece in body.chunks(5) {
        verifier.update(piece).unwrap();
    }
    verifier.finish().unwrap();
}
