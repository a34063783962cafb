//! Single-stream throughput of the transport on loopback (127.0.0.1): two
//! transports in one process, 1 GiB written on the control stream, the rate
//! measured at the receiver from the first write to the last byte.
//!
//! ```text
//! cargo run --release -p meshsync-net --example throughput -- \
//!     [--bytes N] [--runs N] [--socket-buffer N] [--stream-window N] \
//!     [--window N] [--send-window N] [--bbr]
//! ```
//!
//! Sizes accept a `K`, `M` or `G` suffix (powers of 1024); 0 for
//! `--socket-buffer` leaves the operating system's default.

use std::net::SocketAddr;
use std::time::Instant;

use meshsync_net::{CongestionControl, Transport, TransportOptions};
use meshsync_store::identity::DeviceIdentity;

const WRITE_SIZE: usize = 1 << 20;

/// This process's CPU time (user + system) in seconds, from
/// `/proc/self/stat`; `None` where that does not exist. Bytes per CPU-second
/// is a figure that stays comparable when other work shares the machine.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields, in clock ticks (100 per second on Linux).
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

struct Args {
    /// `Some((size, in_flight))`: request/response streams of `size` bytes.
    requests: Option<(u64, usize)>,
    bytes: u64,
    runs: usize,
    options: TransportOptions,
}

fn parse_size(text: &str) -> u64 {
    let (digits, unit) = match text.as_bytes().last() {
        Some(b'K' | b'k') => (&text[..text.len() - 1], 1 << 10),
        Some(b'M' | b'm') => (&text[..text.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    digits
        .parse::<u64>()
        .unwrap_or_else(|_| panic!("not a size: {text}"))
        * unit
}

fn parse_args() -> Args {
    let mut args = Args {
        requests: None,
        bytes: 1 << 30,
        runs: 3,
        options: TransportOptions::default(),
    };
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        if flag == "--bbr" {
            args.options.congestion_control = CongestionControl::Bbr;
            continue;
        }
        let value = argv
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--bytes" => args.bytes = parse_size(&value),
            "--runs" => args.runs = value.parse().expect("--runs N"),
            "--requests" => {
                let in_flight = args.requests.map_or(64, |(_, n)| n);
                args.requests = Some((parse_size(&value), in_flight));
            }
            "--in-flight" => {
                let size = args.requests.map_or(64 << 10, |(s, _)| s);
                args.requests = Some((size, value.parse().expect("--in-flight N")));
            }
            "--socket-buffer" => {
                args.options.socket_buffer_bytes = parse_size(&value) as usize;
            }
            "--stream-window" => args.options.stream_receive_window = parse_size(&value),
            "--window" => args.options.receive_window = parse_size(&value),
            "--send-window" => args.options.send_window = parse_size(&value),
            _ => panic!("unknown flag {flag}"),
        }
    }
    args
}

/// `bytes` fetched as `size`-byte responses on one stream each, `in_flight`
/// at once: the shape of chunk requests.
async fn run_requests(
    sender: &Transport,
    receiver: &Transport,
    bytes: u64,
    size: u64,
    in_flight: usize,
) -> (f64, String) {
    let addr = receiver.local_addr();
    let (initiator, responder) = tokio::join!(sender.connect(addr, None), receiver.accept());
    let server = std::sync::Arc::new(initiator.expect("connect"));
    let client = responder.expect("accept").expect("handshake");
    let start = Instant::now();
    let cpu_start = process_cpu_seconds();
    let serving = std::sync::Arc::clone(&server);
    let serve = tokio::spawn(async move {
        let buffer = std::sync::Arc::new(vec![0x5au8; size as usize]);
        while let Ok((mut send, mut recv)) = serving.accept_chunk_stream().await {
            let buffer = std::sync::Arc::clone(&buffer);
            tokio::spawn(async move {
                let mut request = [0u8; 4];
                recv.read_exact(&mut request).await.expect("request");
                send.write_all(&buffer).await.expect("write");
                send.finish().expect("finish");
            });
        }
    });
    let mut tasks = tokio::task::JoinSet::new();
    let mut received = 0u64;
    let count = bytes.div_ceil(size);
    let client = std::sync::Arc::new(client);
    for _ in 0..count {
        while tasks.len() >= in_flight {
            received += tasks.join_next().await.expect("task").expect("join");
        }
        let client = std::sync::Arc::clone(&client);
        tasks.spawn(async move {
            let (mut send, mut recv) = client.open_chunk_stream().await.expect("open");
            send.write_all(&[1, 2, 3, 4]).await.expect("request");
            send.finish().expect("finish");
            let mut body = vec![0u8; size as usize];
            recv.read_exact(&mut body).await.expect("read");
            body.len() as u64
        });
    }
    while let Some(n) = tasks.join_next().await {
        received += n.expect("join");
    }
    let elapsed = start.elapsed();
    let cpu = process_cpu_seconds()
        .zip(cpu_start)
        .map_or(0.0, |(end, start)| end - start);
    server.connection.close(0u32.into(), b"done");
    serve.abort();
    let rate = received as f64 * 8.0 / elapsed.as_secs_f64() / 1e9;
    let detail = format!(
        "{:.2} s; CPU {cpu:.2} s; {count} requests of {size} bytes, {in_flight} in flight",
        elapsed.as_secs_f64()
    );
    (rate, detail)
}

async fn run_once(sender: &Transport, receiver: &Transport, bytes: u64) -> (f64, String) {
    let addr = receiver.local_addr();
    let (initiator, responder) = tokio::join!(sender.connect(addr, None), receiver.accept());
    let initiator = initiator.expect("connect");
    let responder = responder.expect("accept").expect("handshake");

    let start = Instant::now();
    let cpu_start = process_cpu_seconds();
    let send = tokio::spawn(async move {
        let buffer = vec![0x5au8; WRITE_SIZE];
        let (mut stream, _recv) = initiator.open_control_stream().await.expect("open");
        let mut left = bytes;
        while left > 0 {
            let n = left.min(WRITE_SIZE as u64) as usize;
            stream.write_all(&buffer[..n]).await.expect("write");
            left -= n as u64;
        }
        stream.finish().expect("finish");
        stream.stopped().await.expect("stopped");
        initiator
    });
    let (_send, mut recv) = responder.accept_control_stream().await.expect("accept");
    let mut received = 0u64;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await.expect("read") {
        received += chunk.bytes.len() as u64;
    }
    let elapsed = start.elapsed();
    let cpu = process_cpu_seconds()
        .zip(cpu_start)
        .map(|(end, start)| end - start);
    assert_eq!(received, bytes, "short transfer");
    let initiator = send.await.expect("sender task");
    let stats = initiator.connection.stats();
    initiator.connection.close(0u32.into(), b"done");
    let rate = bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9;
    let cpu = cpu.map_or_else(
        || "CPU time unknown".to_owned(),
        |cpu| {
            format!(
                "CPU {cpu:.2} s, {:.2} Gbit per CPU-second",
                bytes as f64 * 8.0 / cpu / 1e9
            )
        },
    );
    let detail = format!(
        "{:.2} s; {cpu}; {} packets lost, {} congestion events",
        elapsed.as_secs_f64(),
        stats.path.lost_packets,
        stats.path.congestion_events
    );
    (rate, detail)
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let a = DeviceIdentity::from_seed(&[1; 32]).expect("identity");
    let b = DeviceIdentity::from_seed(&[2; 32]).expect("identity");
    let sender = Transport::bind(loopback, &a, args.options.clone()).expect("bind");
    let receiver = Transport::bind(loopback, &b, args.options.clone()).expect("bind");
    println!(
        "{} MiB over one stream, {:?}; socket buffers granted {:?}",
        args.bytes >> 20,
        args.options,
        receiver.socket_buffer_sizes()
    );
    let mut rates = Vec::new();
    for run in 1..=args.runs {
        let (rate, detail) = match args.requests {
            Some((size, in_flight)) => {
                run_requests(&sender, &receiver, args.bytes, size, in_flight).await
            }
            None => run_once(&sender, &receiver, args.bytes).await,
        };
        println!("run {run}: {rate:.2} Gbit/s ({detail})");
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "median {:.2} Gbit/s (min {:.2}, max {:.2})",
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1]
    );
    sender.close().await;
    receiver.close().await;
}
