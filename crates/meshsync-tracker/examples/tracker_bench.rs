//! Tracker and relay throughput on loopback.
//!
//! ```sh
//! cargo run --release -p meshsync-tracker --example tracker_bench
//! cargo run --release -p meshsync-tracker --example tracker_bench -- --clients 64 --secs 5 --relay-mib 512
//! ```
//!
//! - **directory**: `Directory::announce` + `peers` in a loop, no I/O (the
//!   tracker's bookkeeping alone, one core).
//! - **announces**: the tracker on one thread (a current-thread Tokio
//!   runtime: one core), `--clients` devices on another thread, each keeping
//!   `--window` one-key announces in flight over QUIC (every key is shared
//!   by two devices, so each answer names one peer). Counts answered
//!   announces per second.
//! - **relay**: two devices paired on the relay (no rate caps), one sends
//!   `--relay-mib` MiB as 1,200-byte datagrams (a QUIC packet's size), the
//!   other reads them; MiB/s of datagram payload.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use meshsync_core::ids::DeviceId;
use meshsync_net::{Transport, TransportOptions};
use meshsync_proto::tracker::{ClientMessage, DatagramDecoder, ServerMessage, encode_datagram};
use meshsync_store::identity::DeviceIdentity;
use meshsync_tracker::directory::{Directory, DirectoryLimits};
use meshsync_tracker::{RelayOptions, Tracker, TrackerOptions, client};

struct Options {
    clients: usize,
    window: usize,
    secs: f64,
    relay_mib: usize,
}

fn options() -> Options {
    let mut o = Options {
        clients: 32,
        window: 16,
        secs: 5.0,
        relay_mib: 256,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).map(String::as_str).unwrap_or_default();
        match pair[0].as_str() {
            "--clients" => o.clients = value.parse().expect("--clients N"),
            "--window" => o.window = value.parse().expect("--window N"),
            "--secs" => o.secs = value.parse().expect("--secs S"),
            "--relay-mib" => o.relay_mib = value.parse().expect("--relay-mib N"),
            other => panic!("unknown option {other}"),
        }
    }
    o
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn device(n: u32) -> (DeviceId, Transport) {
    let mut seed = [0u8; 32];
    seed[..4].copy_from_slice(&n.to_le_bytes());
    seed[4] = 1;
    let identity = DeviceIdentity::from_seed(&seed).expect("identity");
    let transport =
        Transport::bind(loopback(), &identity, TransportOptions::default()).expect("bind");
    (identity.device_id(), transport)
}

fn key(pair: usize, j: usize) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&(pair as u64).to_le_bytes());
    k[8..16].copy_from_slice(&(j as u64).to_le_bytes());
    k
}

fn bench_directory(secs: f64) {
    let mut dir = Directory::new(DirectoryLimits::default());
    let now = Instant::now();
    let devices: Vec<DeviceId> = (0..1000u32)
        .map(|n| {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&n.to_le_bytes());
            DeviceId::from_bytes(b)
        })
        .collect();
    let observed =
        |d: usize| SocketAddr::from(([198, 51, (d / 256) as u8, (d % 256) as u8], 22000));
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..1000 {
            let d = (done % 1000) as usize;
            let k = key(d / 2, (done / 1000 % 100) as usize);
            dir.announce(now, devices[d], observed(d), &[k], &[observed(d)]);
            std::hint::black_box(dir.peers(now, &k, devices[d]));
            done += 1;
        }
    }
    let rate = done as f64 / start.elapsed().as_secs_f64();
    println!(
        "directory (no I/O, one core): {:.0} announce+peers/s ({} entries)",
        rate,
        dir.len()
    );
}

fn bench_options() -> TrackerOptions {
    TrackerOptions {
        directory: DirectoryLimits {
            max_entries_per_source: usize::MAX,
            ..DirectoryLimits::default()
        },
        request_rate: 1e12,
        request_burst: 1e12,
        max_connections_per_source: 100_000,
        relay: Some(RelayOptions {
            session_rate: 0,
            total_rate: 0,
            ..RelayOptions::default()
        }),
        ..TrackerOptions::default()
    }
}

/// Runs the tracker on its own thread with a current-thread runtime (one
/// core); returns its address.
fn start_tracker(stop: Arc<AtomicBool>) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let tracker = Arc::new(Tracker::bind(loopback(), bench_options()).unwrap());
            tx.send(tracker.local_addr()).unwrap();
            let t = Arc::clone(&tracker);
            tokio::spawn(async move { t.run().await });
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tracker.close().await;
        });
    });
    rx.recv().unwrap()
}

/// Runs `o.clients` announcing devices for a second of warm-up plus
/// `o.secs`.
async fn run_announcers(tracker: SocketAddr, o: &Options) {
    let running = Arc::new(AtomicBool::new(true));
    let mut tasks = Vec::new();
    for i in 0..o.clients {
        let running = Arc::clone(&running);
        let window = o.window;
        tasks.push(tokio::spawn(async move {
            let (_, transport) = device(i as u32);
            let conn = client::connect(&transport, tracker).await.expect("connect");
            let (mut sender, mut receiver) = (conn.sender, conn.receiver);
            // Answers are read (and dropped) so the tracker never waits on us.
            let reader = tokio::spawn(async move { while receiver.recv().await.is_ok() {} });
            let addrs = vec![transport.local_addr()];
            let mut sent = 0usize;
            while running.load(Ordering::Relaxed) {
                for _ in 0..window {
                    let announce = ClientMessage::Announce {
                        keys: vec![key(i / 2, sent % 100)],
                        addrs: addrs.clone(),
                    };
                    sender.send(&announce).await.expect("send");
                    sent += 1;
                }
                tokio::task::yield_now().await;
            }
            transport.close().await;
            reader.abort();
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(1.0 + o.secs + 0.2)).await;
    running.store(false, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
}

/// Measures announces per second by the tracker's own counter.
async fn announce_rate(o: &Options) {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<Arc<Tracker>>();
    let stop2 = Arc::clone(&stop);
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let tracker = Arc::new(Tracker::bind(loopback(), bench_options()).unwrap());
            tx.send(Arc::clone(&tracker)).unwrap();
            let t = Arc::clone(&tracker);
            tokio::spawn(async move { t.run().await });
            while !stop2.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tracker.close().await;
        });
    });
    let tracker = rx.recv().unwrap();
    let addr = tracker.local_addr();
    let counting = {
        let tracker = Arc::clone(&tracker);
        let secs = o.secs;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = tracker.stats().announces.load(Ordering::Relaxed);
            let start = Instant::now();
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            let after = tracker.stats().announces.load(Ordering::Relaxed);
            (after - before) as f64 / start.elapsed().as_secs_f64()
        })
    };
    let clients = run_announcers(addr, o);
    let (rate, ()) = tokio::join!(counting, clients);
    println!(
        "announces (tracker on one core, {} clients x {} in flight, QUIC on loopback): {:.0}/s",
        o.clients,
        o.window,
        rate.unwrap(),
    );
    stop.store(true, Ordering::Relaxed);
    drop(tracker);
    let _ = handle.join();
}

async fn bench_relay(o: &Options) {
    let stop = Arc::new(AtomicBool::new(false));
    let addr = start_tracker(Arc::clone(&stop));
    let (a_id, a) = device(1_000_001);
    let (b_id, b) = device(1_000_002);
    let mut ca = client::connect(&a, addr).await.unwrap();
    let mut cb = client::connect(&b, addr).await.unwrap();
    for c in [&mut ca, &mut cb] {
        c.sender
            .send(&ClientMessage::Announce {
                keys: vec![[9; 32]],
                addrs: vec![],
            })
            .await
            .unwrap();
        for _ in 0..2 {
            c.receiver.recv().await.unwrap();
        }
    }
    ca.sender
        .send(&ClientMessage::RelayRequest {
            key: [9; 32],
            peer: b_id,
        })
        .await
        .unwrap();
    let ServerMessage::RelayOffer { token, .. } = ca.receiver.recv().await.unwrap() else {
        panic!("no relay offer")
    };
    let ServerMessage::RelayOffer { peer, .. } = cb.receiver.recv().await.unwrap() else {
        panic!("no relay offer")
    };
    assert_eq!(peer, a_id);
    let (mut sa, _ra) = client::open_relay(&ca.connection, token).await.unwrap();
    let (_sb, mut rb) = client::open_relay(&cb.connection, token).await.unwrap();
    let datagram = [0x5a; 1200];
    let count = o.relay_mib * (1 << 20) / datagram.len();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let mut batch = Vec::new();
        for _ in 0..64 {
            encode_datagram(&mut batch, &datagram).unwrap();
        }
        for _ in 0..count / 64 {
            sa.write_all(&batch).await.unwrap();
        }
        sa
    });
    let mut decoder = DatagramDecoder::new();
    let mut got = 0usize;
    let want = count / 64 * 64;
    while got < want {
        let chunk = rb.read_chunk(1 << 20, true).await.unwrap().unwrap();
        decoder.push(&chunk.bytes);
        while let Some(d) = decoder.next_datagram().unwrap() {
            got += 1;
            std::hint::black_box(d);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = writer.await;
    println!(
        "relay (one session, uncapped, 1200-byte datagrams, loopback, tracker on one core): {:.0} MiB/s ({} MiB in {:.2} s)",
        (want * 1200) as f64 / (1 << 20) as f64 / secs,
        (want * 1200) >> 20,
        secs
    );
    stop.store(true, Ordering::Relaxed);
}

fn main() {
    let o = options();
    bench_directory(o.secs.min(3.0));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        announce_rate(&o).await;
        bench_relay(&o).await;
    });
}
