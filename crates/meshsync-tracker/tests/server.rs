//! The tracker end to end on loopback: introductions, observed addresses,
//! hole-punch timing, relay sessions, and the limits (rate limits, garbage,
//! oversized and unpaired relay streams).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshsync_core::ids::DeviceId;
use meshsync_net::{TRACKER_ALPN, Transport, TransportOptions};
use meshsync_proto::tracker::{
    ClientMessage, DatagramDecoder, MAX_RELAY_DATAGRAM, RefuseReason, RelayToken, ServerMessage,
    encode_datagram,
};
use meshsync_store::identity::DeviceIdentity;
use meshsync_tracker::client::{self, TrackerConnection};
use meshsync_tracker::{RelayOptions, Tracker, TrackerOptions};

const TIMEOUT: Duration = Duration::from_secs(20);

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .expect("timed out")
}

fn start(options: TrackerOptions) -> Arc<Tracker> {
    let tracker = Arc::new(Tracker::bind(SocketAddr::from(([127, 0, 0, 1], 0)), options).unwrap());
    let t = Arc::clone(&tracker);
    tokio::spawn(async move { t.run().await });
    tracker
}

struct Device {
    id: DeviceId,
    transport: Transport,
}

fn device(seed: u8) -> Device {
    let identity = DeviceIdentity::from_seed(&[seed; 32]).unwrap();
    let transport = Transport::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &identity,
        TransportOptions::default(),
    )
    .unwrap();
    Device {
        id: identity.device_id(),
        transport,
    }
}

async fn connect(d: &Device, tracker: &Tracker) -> TrackerConnection {
    within(client::connect(&d.transport, tracker.local_addr()))
        .await
        .unwrap()
}

/// Announces `key` and returns the answers (Announced, then Peers).
async fn announce(
    c: &mut TrackerConnection,
    key: [u8; 32],
    addrs: Vec<SocketAddr>,
) -> Vec<ServerMessage> {
    c.sender
        .send(&ClientMessage::Announce {
            keys: vec![key],
            addrs,
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    loop {
        let m = within(c.receiver.recv()).await.unwrap();
        let last = matches!(
            m,
            ServerMessage::Peers { .. } | ServerMessage::Refused { .. }
        );
        out.push(m);
        if last {
            return out;
        }
    }
}

#[tokio::test]
async fn devices_of_a_key_are_introduced_with_their_observed_addresses() {
    let tracker = start(TrackerOptions::default());
    let (a, b, c) = (device(1), device(2), device(3));
    let (mut ca, mut cb, mut cc) = (
        connect(&a, &tracker).await,
        connect(&b, &tracker).await,
        connect(&c, &tracker).await,
    );
    assert_eq!(ca.tracker, tracker.id());
    let answers = announce(&mut ca, [1; 32], vec![a.transport.local_addr()]).await;
    assert_eq!(
        answers,
        vec![
            ServerMessage::Announced {
                observed: a.transport.local_addr(),
                ttl_secs: 300
            },
            ServerMessage::Peers {
                key: [1; 32],
                peers: vec![]
            }
        ]
    );
    announce(&mut cc, [2; 32], vec![]).await;
    let answers = announce(&mut cb, [1; 32], vec![]).await;
    let ServerMessage::Peers { peers, .. } = &answers[1] else {
        panic!("{answers:?}")
    };
    assert_eq!(peers.len(), 1, "a only, not c (another key), not b itself");
    assert_eq!(peers[0].device, a.id);
    assert_eq!(peers[0].observed, a.transport.local_addr());
    assert_eq!(peers[0].addrs, vec![a.transport.local_addr()]);
    assert_eq!(tracker.announcements(), 3);

    // A device that leaves is forgotten.
    drop(ca);
    a.transport.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tracker.announcements(), 2);
    let _ = b;
}

#[tokio::test]
async fn a_punch_is_timed_for_both_and_only_between_devices_of_one_key() {
    let tracker = start(TrackerOptions::default());
    let (a, b, c) = (device(1), device(2), device(3));
    let (mut ca, mut cb, mut cc) = (
        connect(&a, &tracker).await,
        connect(&b, &tracker).await,
        connect(&c, &tracker).await,
    );
    announce(&mut ca, [1; 32], vec![]).await;
    announce(&mut cb, [1; 32], vec![]).await;
    announce(&mut cc, [2; 32], vec![]).await;

    ca.sender
        .send(&ClientMessage::PunchRequest {
            key: [1; 32],
            peer: b.id,
        })
        .await
        .unwrap();
    let ServerMessage::PunchNow { peer, addrs, .. } = within(ca.receiver.recv()).await.unwrap()
    else {
        panic!()
    };
    assert_eq!((peer, addrs), (b.id, vec![b.transport.local_addr()]));
    let ServerMessage::PunchNow { peer, addrs, .. } = within(cb.receiver.recv()).await.unwrap()
    else {
        panic!()
    };
    assert_eq!((peer, addrs), (a.id, vec![a.transport.local_addr()]));

    // c shares no key with a: refused, and a hears nothing.
    cc.sender
        .send(&ClientMessage::PunchRequest {
            key: [1; 32],
            peer: a.id,
        })
        .await
        .unwrap();
    assert_eq!(
        within(cc.receiver.recv()).await.unwrap(),
        ServerMessage::Refused {
            request: 2,
            reason: RefuseReason::UnknownPeer
        }
    );
    cc.sender
        .send(&ClientMessage::RelayRequest {
            key: [2; 32],
            peer: a.id,
        })
        .await
        .unwrap();
    assert_eq!(
        within(cc.receiver.recv()).await.unwrap(),
        ServerMessage::Refused {
            request: 3,
            reason: RefuseReason::UnknownPeer
        }
    );
}

/// a and b ask for a relay session; returns both connections and the token.
async fn relay_pair(
    tracker: &Tracker,
    a: &Device,
    b: &Device,
) -> (TrackerConnection, TrackerConnection, RelayToken) {
    let (mut ca, mut cb) = (connect(a, tracker).await, connect(b, tracker).await);
    announce(&mut ca, [1; 32], vec![]).await;
    announce(&mut cb, [1; 32], vec![]).await;
    ca.sender
        .send(&ClientMessage::RelayRequest {
            key: [1; 32],
            peer: b.id,
        })
        .await
        .unwrap();
    let ServerMessage::RelayOffer { peer, token } = within(ca.receiver.recv()).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(peer, b.id);
    let ServerMessage::RelayOffer {
        peer,
        token: token_b,
    } = within(cb.receiver.recv()).await.unwrap()
    else {
        panic!()
    };
    assert_eq!((peer, token_b), (a.id, token));
    (ca, cb, token)
}

async fn read_datagram(
    recv: &mut quinn::RecvStream,
    decoder: &mut DatagramDecoder,
) -> Option<Vec<u8>> {
    loop {
        if let Some(d) = decoder.next_datagram().ok()? {
            return Some(d.to_vec());
        }
        let chunk = recv.read_chunk(65536, true).await.ok()??;
        decoder.push(&chunk.bytes);
    }
}

#[tokio::test]
async fn the_relay_forwards_datagrams_both_ways_and_refuses_strangers() {
    let tracker = start(TrackerOptions::default());
    let (a, b, c) = (device(1), device(2), device(3));
    let (ca, cb, token) = relay_pair(&tracker, &a, &b).await;

    // A stranger with the token is refused.
    let cc = connect(&c, &tracker).await;
    let (_s, mut r) = within(client::open_relay(&cc.connection, token))
        .await
        .unwrap();
    let mut refused = Vec::new();
    let _ = within(async {
        while let Ok(Some(chunk)) = r.read_chunk(1024, true).await {
            refused.extend_from_slice(&chunk.bytes);
        }
    })
    .await;
    assert!(!refused.is_empty(), "told why");

    let (mut sa, mut ra) = within(client::open_relay(&ca.connection, token))
        .await
        .unwrap();
    let (mut sb, mut rb) = within(client::open_relay(&cb.connection, token))
        .await
        .unwrap();
    let (mut da, mut db) = (DatagramDecoder::new(), DatagramDecoder::new());
    for i in 0..100u32 {
        let mut frame = Vec::new();
        encode_datagram(
            &mut frame,
            &vec![(i % 251) as u8; 1 + (i as usize * 13) % MAX_RELAY_DATAGRAM],
        )
        .unwrap();
        sa.write_all(&frame).await.unwrap();
        let got = within(read_datagram(&mut rb, &mut db)).await.unwrap();
        assert_eq!(got.len(), 1 + (i as usize * 13) % MAX_RELAY_DATAGRAM);
        let mut back = Vec::new();
        encode_datagram(&mut back, &got).unwrap();
        sb.write_all(&back).await.unwrap();
        assert_eq!(within(read_datagram(&mut ra, &mut da)).await.unwrap(), got);
    }
    let stats = tracker.relay_stats().unwrap();
    assert_eq!(stats.paired.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(
        stats
            .refused_joins
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // A side that leaves ends the session for the other.
    sa.finish().unwrap();
    assert!(within(read_datagram(&mut rb, &mut db)).await.is_none());
}

#[tokio::test]
async fn an_oversized_relay_datagram_ends_the_session() {
    let tracker = start(TrackerOptions::default());
    let (a, b) = (device(1), device(2));
    let (ca, cb, token) = relay_pair(&tracker, &a, &b).await;
    let (mut sa, _ra) = within(client::open_relay(&ca.connection, token))
        .await
        .unwrap();
    let (_sb, mut rb) = within(client::open_relay(&cb.connection, token))
        .await
        .unwrap();
    let mut frame = ((MAX_RELAY_DATAGRAM + 1) as u16).to_be_bytes().to_vec();
    frame.extend(vec![0; MAX_RELAY_DATAGRAM + 1]);
    sa.write_all(&frame).await.unwrap();
    let mut decoder = DatagramDecoder::new();
    assert!(within(read_datagram(&mut rb, &mut decoder)).await.is_none());
    let stats = tracker.relay_stats().unwrap();
    assert_eq!(
        stats.oversized.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The tracker still serves.
    let mut c = connect(&device(3), &tracker).await;
    announce(&mut c, [9; 32], vec![]).await;
}

#[tokio::test]
async fn an_unpaired_relay_stream_is_closed_after_the_timeout() {
    let tracker = start(TrackerOptions {
        relay: Some(RelayOptions {
            pair_timeout: Duration::from_millis(500),
            ..RelayOptions::default()
        }),
        ..TrackerOptions::default()
    });
    let (a, b) = (device(1), device(2));
    let (ca, _cb, token) = relay_pair(&tracker, &a, &b).await;
    let (mut sa, mut ra) = within(client::open_relay(&ca.connection, token))
        .await
        .unwrap();
    let mut frame = Vec::new();
    encode_datagram(&mut frame, b"anyone there?").unwrap();
    sa.write_all(&frame).await.unwrap();
    let mut decoder = DatagramDecoder::new();
    assert!(within(read_datagram(&mut ra, &mut decoder)).await.is_none());
    let stats = tracker.relay_stats().unwrap();
    assert_eq!(stats.unpaired.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(
        tracker
            .relay_stats()
            .unwrap()
            .bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn the_relay_paces_a_session_to_its_rate() {
    let rate = 512 << 10;
    let tracker = start(TrackerOptions {
        relay: Some(RelayOptions {
            session_rate: rate,
            ..RelayOptions::default()
        }),
        ..TrackerOptions::default()
    });
    let (a, b) = (device(1), device(2));
    let (ca, cb, token) = relay_pair(&tracker, &a, &b).await;
    let (mut sa, _ra) = within(client::open_relay(&ca.connection, token))
        .await
        .unwrap();
    let (_sb, mut rb) = within(client::open_relay(&cb.connection, token))
        .await
        .unwrap();
    // 1 MiB + the burst (128 KiB) should take about 2 s at 512 KiB/s.
    let total = (1 << 20) + (128 << 10);
    let start = std::time::Instant::now();
    let writer = tokio::spawn(async move {
        let mut frame = Vec::new();
        encode_datagram(&mut frame, &[7; 1024]).unwrap();
        for _ in 0..total / 1024 {
            sa.write_all(&frame).await.unwrap();
        }
        sa
    });
    let mut got = 0;
    let mut decoder = DatagramDecoder::new();
    while got < total {
        got += within(read_datagram(&mut rb, &mut decoder))
            .await
            .unwrap()
            .len();
    }
    let secs = start.elapsed().as_secs_f64();
    assert!(
        (1.6..4.0).contains(&secs),
        "{secs} s for 1.125 MiB at 512 KiB/s"
    );
    let _ = writer.await;
}

#[tokio::test]
async fn a_flood_from_one_source_is_rate_limited_and_others_still_served() {
    let tracker = start(TrackerOptions {
        request_rate: 10.0,
        request_burst: 20.0,
        ..TrackerOptions::default()
    });
    let a = device(1);
    let mut ca = connect(&a, &tracker).await;
    let mut limited = 0;
    for i in 0..40u8 {
        for m in announce(&mut ca, [i; 32], vec![]).await {
            if matches!(
                m,
                ServerMessage::Refused {
                    reason: RefuseReason::RateLimited { .. },
                    ..
                }
            ) {
                limited += 1;
            }
        }
    }
    // 20 in the burst, minus the connection's 4, plus what refilled.
    assert!(limited >= 15, "{limited} of 40 refused");
    assert!(tracker.announcements() <= 25, "{}", tracker.announcements());
    assert!(
        tracker
            .stats()
            .rate_limited
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 15
    );
}

#[tokio::test]
async fn garbage_closes_the_connection_and_the_tracker_lives_on() {
    let tracker = start(TrackerOptions::default());
    let a = device(1);
    let service = within(
        a.transport
            .connect_service(tracker.local_addr(), TRACKER_ALPN, None),
    )
    .await
    .unwrap();
    let (mut send, _recv) = service.connection.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 5, 1, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let closed = within(service.connection.closed()).await;
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
        "{closed:?}"
    );
    // An oversized frame header too.
    let b = device(2);
    let service = within(
        b.transport
            .connect_service(tracker.local_addr(), TRACKER_ALPN, None),
    )
    .await
    .unwrap();
    let (mut send, _recv) = service.connection.open_bi().await.unwrap();
    send.write_all(&[0x7f, 0xff, 0xff, 0xff]).await.unwrap();
    within(service.connection.closed()).await;
    assert_eq!(
        tracker
            .stats()
            .bad_messages
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );

    let mut c = connect(&device(3), &tracker).await;
    announce(&mut c, [1; 32], vec![]).await;
}

#[tokio::test]
async fn a_tracker_without_relay_says_so() {
    let tracker = start(TrackerOptions {
        relay: None,
        ..TrackerOptions::default()
    });
    let (a, b) = (device(1), device(2));
    let (mut ca, mut cb) = (connect(&a, &tracker).await, connect(&b, &tracker).await);
    announce(&mut ca, [1; 32], vec![]).await;
    announce(&mut cb, [1; 32], vec![]).await;
    ca.sender
        .send(&ClientMessage::RelayRequest {
            key: [1; 32],
            peer: b.id,
        })
        .await
        .unwrap();
    assert_eq!(
        within(ca.receiver.recv()).await.unwrap(),
        ServerMessage::Refused {
            request: 3,
            reason: RefuseReason::RelayDisabled
        }
    );
}
