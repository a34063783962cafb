//! Multi-host tests in Linux network namespaces: two home networks behind
//! NAT routers and an "internet" with a public server address, built on
//! this machine with `ip netns`, veth pairs, bridges and iptables (see
//! `netns_util` for the topology diagram and the helpers), with real
//! `meshsync` daemons inside.
//!
//! Run them as root (CI does):
//!
//! ```sh
//! cargo test -p meshsync --test netns
//! ```
//!
//! They need `ip` (iproute2) and `iptables`, and for the UPnP test
//! `miniupnpd` and `nft`; `.ci/run` installs them. Without root or the
//! tools a test prints `SKIPPED …` and passes, unless
//! `MESHSYNC_NETNS_REQUIRED=1` (set by `.ci/run`). Nothing leaves the
//! machine: the namespaces are linked only to each other, and every test
//! sends only to addresses inside them. Every namespace and every process
//! in it is removed when the test ends, panics included
//! (`MESHSYNC_NETNS_KEEP=1` keeps them for a look).
//!
//! Every wait is a poll with a deadline (60 s, for a loaded 2-core CI);
//! things that must not happen are checked over a short window after a
//! positive barrier showed the path works.

mod daemon_util;
mod netns_util;
mod util;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use daemon_util::same_trees;
use netns_util::{
    A1, A1_IP, A2, A2_IP, B1, INET, NsDevice, R1_LAN, R1_WAN, R2_WAN, SERVER, TIMEOUT, Topology,
    eventually, no_discovery_flags, udp_ask, v4,
};
use util::{Dir, MIB, random_bytes};

/// Any address, any port (the sending side of a probe).
fn any() -> SocketAddr {
    v4(Ipv4Addr::UNSPECIFIED, 0)
}

/// How long a "cannot reach" check listens, after the positive checks
/// showed the same path works for others.
const NEGATIVE_WINDOW: Duration = Duration::from_secs(2);

/// A fresh probe socket in `host` asks the echo at `dst`: where the echo
/// saw it come from (fresh, so no late answer to an earlier probe counts).
fn ask(t: &Topology, host: &str, dst: SocketAddr, within: Duration) -> Option<SocketAddr> {
    let s = t.udp_socket(host, any());
    udp_ask(&s, dst, within)
}

// ---------------------------------------------------------------------------
// The harness itself

/// The topology is what it claims: a LAN where a1 and a2 reach each other
/// directly (unicast and multicast), a NAT between the LANs and the
/// internet (the server sees a1 as router 1's public address), no path
/// from LAN 2 to LAN 1's private addresses, no unsolicited way in through
/// the NAT, no way out of the namespaces, and nothing left afterwards.
#[test]
fn topology_is_real() {
    let started = Instant::now();
    let Some(t) = Topology::new("topo") else {
        return;
    };
    let built = started.elapsed();
    let group = Ipv4Addr::new(239, 255, 77, 1);

    // Same LAN: a2 sees a1's private address, so no NAT in between.
    let echo_a2 = t.udp_echo(A2, v4(Ipv4Addr::UNSPECIFIED, 7000), Some(group));
    let seen = ask(&t, A1, v4(A2_IP, 7000), TIMEOUT).expect("a1 reaches a2 on the LAN");
    assert_eq!(seen.ip(), A1_IP, "a2 sees a1 unchanged");
    let seen = ask(&t, A1, v4(group, 7000), TIMEOUT).expect("a1's multicast reaches a2");
    assert_eq!(seen.ip(), A1_IP);
    assert!(echo_a2.seen().iter().all(|a| a.ip() == A1_IP));

    // The internet: both LANs reach the server, each as its router.
    let echo_server = t.udp_echo(INET, v4(SERVER, 7000), None);
    let seen = ask(&t, A1, v4(SERVER, 7000), TIMEOUT).expect("a1 reaches the server");
    assert_eq!(seen.ip(), R1_WAN, "the server sees a1 as router 1 (NAT)");
    let seen = ask(&t, A2, v4(SERVER, 7000), TIMEOUT).expect("a2 reaches the server");
    assert_eq!(seen.ip(), R1_WAN, "the server sees a2 as router 1 (NAT)");
    let seen = ask(&t, B1, v4(SERVER, 7000), TIMEOUT).expect("b1 reaches the server");
    assert_eq!(seen.ip(), R2_WAN, "the server sees b1 as router 2 (NAT)");
    drop(echo_server);

    // No way in: b1 cannot reach a1's private address, and nothing from
    // the internet gets through router 1 unasked.
    let echo_a1 = t.udp_echo(A1, v4(Ipv4Addr::UNSPECIFIED, 7100), None);
    std::thread::scope(|s| {
        let from_b1 = s.spawn(|| ask(&t, B1, v4(A1_IP, 7100), NEGATIVE_WINDOW));
        let from_inet = s.spawn(|| ask(&t, INET, v4(R1_WAN, 7100), NEGATIVE_WINDOW));
        assert_eq!(
            from_b1.join().unwrap(),
            None,
            "b1 reached a1's private address"
        );
        assert_eq!(
            from_inet.join().unwrap(),
            None,
            "the internet got through NAT"
        );
    });
    assert_eq!(echo_a1.seen(), vec![], "a1 received unasked traffic");
    drop(echo_a1);

    // No way out: the internet namespace has no default route and only
    // its own bridge; no namespace has a link to the host.
    let routes = t.exec(INET, &["ip", "route", "show", "default"]).ok();
    assert_eq!(
        routes.stdout.trim(),
        "",
        "the internet must not route anywhere"
    );
    for host in [INET, A1, A2, B1] {
        let links = t.exec(host, &["ip", "-o", "link", "show"]).ok().stdout;
        for line in links.lines() {
            let name = line.split(':').nth(1).unwrap_or_default().trim();
            let name = name.split('@').next().unwrap_or_default();
            assert!(
                ["lo", "eth0", "br0", "r1", "r2"].contains(&name),
                "unexpected link {name:?} in {host}: {line}"
            );
        }
    }

    // Programs started through the harness run inside their namespace.
    let mut ip = t.spawn(INET, "ip-addr", &["ip", "-o", "addr", "show", "br0"]);
    let mut version = t.spawn_meshsync(INET, "version", &["--version"]);
    let deadline = Instant::now() + TIMEOUT;
    while (ip.running() || version.running()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        ip.log_text().contains(&format!("{SERVER}/24")),
        "{}",
        ip.log_text()
    );
    assert!(
        version.log_text().starts_with("meshsync "),
        "{}",
        version.log_text()
    );

    let names: Vec<String> = [INET, "r1", "r2", A1, A2, B1].map(|h| t.ns(h)).into();
    let checked = started.elapsed();
    drop(t);
    if std::env::var("MESHSYNC_NETNS_KEEP").as_deref() != Ok("1") {
        for ns in &names {
            assert!(
                !Path::new("/run/netns").join(ns).exists(),
                "namespace {ns} survived its topology"
            );
        }
    }
    eprintln!(
        "topology built in {built:?}, checked in {checked:?}, removed in {:?}",
        started.elapsed() - checked
    );
}

/// Two sockets behind different NATs punch through to each other (each
/// learns its public address from the server, then both send to the
/// other's): until `block_hole_punching`, after which the same attempt
/// fails while the server stays reachable.
#[test]
fn hole_punching_works_until_blocked() {
    let Some(t) = Topology::new("punch") else {
        return;
    };
    let _echo = t.udp_echo(INET, v4(SERVER, 3478), None);
    punch(&t, TIMEOUT).expect("UDP hole punching between the two NATs");
    t.block_hole_punching();
    let err = punch(&t, NEGATIVE_WINDOW).expect_err("hole punching after block_hole_punching");
    eprintln!("blocked as expected: {err}");
}

/// One hole-punching attempt between fresh sockets in a1 and b1, for at
/// most `within` once both know their public addresses; panics if either
/// cannot reach the server.
fn punch(t: &Topology, within: Duration) -> Result<(), String> {
    let server = v4(SERVER, 3478);
    let sa = t.udp_socket(A1, any());
    let sb = t.udp_socket(B1, any());
    let ma = udp_ask(&sa, server, TIMEOUT).expect("a1 reaches the server");
    let mb = udp_ask(&sb, server, TIMEOUT).expect("b1 reaches the server");
    assert_eq!(
        (ma.ip(), mb.ip()),
        (R1_WAN.into(), R2_WAN.into()),
        "public addresses"
    );
    for s in [&sa, &sb] {
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("set_read_timeout");
    }
    let got_from = |s: &UdpSocket, want: SocketAddr| {
        let mut buf = [0u8; 64];
        let mut got = false;
        while let Ok((_, from)) = s.recv_from(&mut buf) {
            got |= from == want;
        }
        got
    };
    let (mut a_heard_b, mut b_heard_a) = (false, false);
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let _ = sa.send_to(b"punch from a1", mb);
        let _ = sb.send_to(b"punch from b1", ma);
        a_heard_b |= got_from(&sa, mb);
        b_heard_a |= got_from(&sb, ma);
        if a_heard_b && b_heard_a {
            return Ok(());
        }
    }
    Err(format!(
        "within {within:?}: a1 ({ma}) heard b1: {a_heard_b}; b1 ({mb}) heard a1: {b_heard_a}"
    ))
}

// ---------------------------------------------------------------------------
// Daemons

/// a1 and b1 sit behind different NATs and cannot reach each other; a
/// "public" device on the server address can be reached by both. With it
/// as their only static peer, a folder shared from a1 reaches b1 through
/// it, and an edit on b1 comes back to a1: real daemons across NAT.
#[test]
fn static_peers_sync_across_routed_namespaces() {
    let started = Instant::now();
    let Some(t) = Topology::new("static") else {
        return;
    };
    t.block_hole_punching();
    let dir = Dir::new("netns-static");
    let flags = no_discovery_flags();
    let public = v4(SERVER, 22000);
    let any_22000 = v4(Ipv4Addr::UNSPECIFIED, 22000);
    let mut p = NsDevice::new(&t, &dir, "P", INET, public, &flags);
    let mut a1 = NsDevice::new(&t, &dir, "A1", A1, any_22000, &flags);
    let mut b1 = NsDevice::new(&t, &dir, "B1", B1, any_22000, &flags);

    dir.write("a/hello.txt", "hello across two NATs\n");
    dir.write("a/sub/big.bin", random_bytes(8, MIB + 4321));
    let keys = a1.share(&dir.path("a"), &[public]);
    p.join(&keys.read_write, &dir.path("p"), &[]);
    b1.join(&keys.read_write, &dir.path("b"), &[public]);
    p.start();
    a1.start();
    b1.start();

    let all = [&p, &a1, &b1];
    eventually("a1's folder to reach b1 through P", &all, || {
        same_trees(&dir.path("a"), &dir.path("b"))
    });
    dir.write("b/from-b1.txt", "back the other way\n");
    eventually("b1's new file to reach a1 through P", &all, || {
        same_trees(&dir.path("b"), &dir.path("a"))
    });

    // P saw each of them as its router's public address: the NAT is real.
    let peers = p.peers().unwrap();
    let addr_of = |name: &str| {
        peers
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, a, _)| a.parse::<SocketAddr>().expect("a peer address"))
            .unwrap_or_else(|| panic!("P is not connected to {name}: {peers:?}"))
    };
    assert_eq!(addr_of("A1").ip(), R1_WAN);
    assert_eq!(addr_of("B1").ip(), R2_WAN);
    // And a1 and b1 never met: everything went through P.
    for (d, other) in [(&a1, "B1"), (&b1, "A1")] {
        let peers = d.peers().unwrap();
        assert!(
            peers.iter().all(|(n, _, _)| n != other),
            "{} connected to {other} directly: {peers:?}",
            d.name
        );
    }
    eprintln!("synced across NAT in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// UPnP: a real miniupnpd in router 1

/// miniupnpd runs in router 1 as a home router's IGD, and a1 finds it the
/// way a UPnP client does: an SSDP M-SEARCH to 239.255.255.250:1900 on the
/// LAN, then the description at the LOCATION it answers with, then SOAP
/// calls on the WANIPConnection control URL.
///
/// Pinned here, because router 1's WAN address is private (10.200.0.1) and
/// miniupnpd 2.3 refuses port forwarding on a reserved external address:
/// GetExternalIPAddress answers with an empty address and AddPortMapping
/// fails with UPnP error 501 (ActionFailed). A meshsync UPnP test that
/// needs a working mapping must give router 1 a non-reserved WAN address or
/// run miniupnpd with `ext_perform_stun` and a STUN server in the internet
/// namespace.
#[test]
fn miniupnpd_answers_ssdp_and_igd_on_the_lan() {
    let Some(t) = Topology::new("upnp") else {
        return;
    };
    let Some(mut upnpd) = t.start_miniupnpd() else {
        return;
    };
    let location = t.in_ns(A1, || {
        let s = UdpSocket::bind(any()).expect("binding UDP");
        s.set_read_timeout(Some(Duration::from_millis(250)))
            .expect("set_read_timeout");
        let search = "M-SEARCH * HTTP/1.1\r\n\
                      HOST: 239.255.255.250:1900\r\n\
                      MAN: \"ssdp:discover\"\r\n\
                      MX: 1\r\n\
                      ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n";
        let deadline = Instant::now() + TIMEOUT;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            let _ = s.send_to(
                search.as_bytes(),
                v4(Ipv4Addr::new(239, 255, 255, 250), 1900),
            );
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if let Some(loc) = header(&text, "location") {
                    assert_eq!(from.ip(), R1_LAN, "{text}");
                    assert!(text.contains("InternetGatewayDevice"), "{text}");
                    return Some(loc);
                }
            }
        }
        None
    });
    let location = location.unwrap_or_else(|| {
        panic!(
            "no SSDP answer from miniupnpd (running: {})\n{}",
            upnpd.running(),
            upnpd.log_text()
        )
    });
    assert!(
        location.starts_with(&format!("http://{R1_LAN}:5000/")),
        "{location}"
    );

    let http = |method: &str, url: &str, action: Option<(&str, &str)>| {
        t.in_ns(A1, || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .proxy(None)
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .into();
            let mut resp = match action {
                None => agent.get(url).call(),
                Some((soap_action, body)) => agent
                    .post(url)
                    .header("Content-Type", "text/xml; charset=\"utf-8\"")
                    .header("SOAPAction", soap_action)
                    .send(body),
            }
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            (resp.status().as_u16(), body)
        })
    };
    let (code, desc) = http("GET", &location, None);
    assert_eq!(code, 200, "{desc}");
    let (service, control) = wan_ip_connection(&desc)
        .unwrap_or_else(|| panic!("no WANIPConnection service in the description:\n{desc}"));
    let control = format!("http://{R1_LAN}:5000{control}");
    let soap = |action: &str, args: &[(&str, &str)]| {
        let args: String = args
            .iter()
            .map(|(k, v)| format!("<{k}>{v}</{k}>"))
            .collect();
        let body = format!(
            "<?xml version=\"1.0\"?>\
             <s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
             s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\">\
             <s:Body><u:{action} xmlns:u=\"{service}\">{args}</u:{action}></s:Body></s:Envelope>"
        );
        http(
            "POST",
            &control,
            Some((&format!("\"{service}#{action}\""), &body)),
        )
    };

    let (code, body) = soap("GetExternalIPAddress", &[]);
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("<NewExternalIPAddress></NewExternalIPAddress>"),
        "a private WAN address is not reported: {body}"
    );
    let a1_ip = A1_IP.to_string();
    let (code, body) = soap(
        "AddPortMapping",
        &[
            ("NewRemoteHost", ""),
            ("NewExternalPort", "22000"),
            ("NewProtocol", "UDP"),
            ("NewInternalPort", "22000"),
            ("NewInternalClient", &a1_ip),
            ("NewEnabled", "1"),
            ("NewPortMappingDescription", "meshsync netns test"),
            ("NewLeaseDuration", "600"),
        ],
    );
    assert_eq!(code, 500, "{body}");
    assert!(
        body.contains("<errorCode>501</errorCode>"),
        "a mapping on a private WAN address fails with ActionFailed: {body}"
    );
    let log = upnpd.log_text();
    assert!(log.contains("Port forwarding is impossible"), "{log}");
}

/// The value of header `name` (case-insensitive) in an HTTP-like message.
fn header(message: &str, name: &str) -> Option<String> {
    message.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// The WANIPConnection service type and control URL in an IGD description.
fn wan_ip_connection(desc: &str) -> Option<(String, String)> {
    let start = desc.find("<serviceType>urn:schemas-upnp-org:service:WANIPConnection:")?;
    let rest = &desc[start + "<serviceType>".len()..];
    let service = &rest[..rest.find("</serviceType>")?];
    let c = rest.find("<controlURL>")? + "<controlURL>".len();
    let control = &rest[c..c + rest[c..].find("</controlURL>")?];
    Some((service.to_string(), control.to_string()))
}
