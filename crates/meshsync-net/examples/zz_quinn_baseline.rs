//! Temporary: raw quinn with defaults, 1 GiB one stream (baseline for comparison).
#![allow(missing_docs)]
use std::sync::Arc;
use std::time::Instant;

fn cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) as f64 / 100.0
}

#[tokio::main]
async fn main() {
    let bufsize: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(0);
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_der = rustls::pki_types::CertificateDer::from(cert.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let server_config = quinn::ServerConfig::with_single_cert(vec![cert_der.clone()], key).unwrap();
    let mk = |server: Option<quinn::ServerConfig>| {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        if bufsize > 0 {
            s.set_recv_buffer_size(bufsize).unwrap();
            s.set_send_buffer_size(bufsize).unwrap();
        }
        s.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        s.set_nonblocking(true).unwrap();
        quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            server,
            s.into(),
            Arc::new(quinn::TokioRuntime),
        )
        .unwrap()
    };
    let server = mk(Some(server_config));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let mut client = mk(None);
    client.set_default_client_config(
        quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap(),
    );
    let addr = server.local_addr().unwrap();
    for _ in 0..3 {
        let (c, s) = tokio::join!(
            async { client.connect(addr, "localhost").unwrap().await.unwrap() },
            async { server.accept().await.unwrap().await.unwrap() }
        );
        let bytes: u64 = 1 << 30;
        let start = Instant::now();
        let cpu0 = cpu();
        let t = tokio::spawn(async move {
            let buf = vec![0x5au8; 1 << 20];
            let (mut send, _r) = c.open_bi().await.unwrap();
            for _ in 0..(bytes >> 20) {
                send.write_all(&buf).await.unwrap();
            }
            send.finish().unwrap();
            send.stopped().await.unwrap();
            c
        });
        let (_s, mut recv) = s.accept_bi().await.unwrap();
        let mut n = 0u64;
        while let Some(ch) = recv.read_chunk(usize::MAX, true).await.unwrap() {
            n += ch.bytes.len() as u64;
        }
        let el = start.elapsed();
        assert_eq!(n, bytes);
        t.await.unwrap();
        let c = cpu() - cpu0;
        println!(
            "raw quinn (buf {bufsize}): {:.2} Gbit/s; CPU {c:.2} s: {:.2} Gbit per CPU-second",
            bytes as f64 * 8.0 / el.as_secs_f64() / 1e9,
            bytes as f64 * 8.0 / c / 1e9
        );
    }
}
