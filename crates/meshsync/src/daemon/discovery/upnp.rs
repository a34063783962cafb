//! Asking the home router to forward the QUIC port, so peers on the
//! internet can dial this device: UPnP IGD first (igd-next), then PCP and
//! NAT-PMP (crab_nat) when no IGD answers.
//!
//! The mapping is UDP, external port = the QUIC port when the router allows
//! it (else one it picks), with a lease of [`LEASE`] renewed at half-life.
//! The router's external address and the mapped port are recorded as this
//! device's address (`AddressBook::set_own("upnp", …)`, shown in `status` as
//! `own_addresses`; the DHT announces that port). When the daemon stops the
//! mapping is removed; if the process dies instead, the lease runs out.
//!
//! Never: block the daemon's start (it all runs in the background), ask a
//! router for anything but the one UDP port, or run for a listener on
//! loopback (tests, the demo). A failure is logged at info once, then the
//! search is repeated quietly every [`RETRY`].
//!
//! The SSDP search multicasts on the local network: it is never run in
//! tests except inside a network namespace the test makes (tests/netns_upnp.rs).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use crab_nat::{InternetProtocol, PortMapping, PortMappingOptions, PortMappingType, TimeoutConfig};
use igd_next::aio::Gateway;
use igd_next::aio::tokio::Tokio;
use igd_next::{AddAnyPortError, AddPortError, PortMappingProtocol, SearchOptions};
use meshsync_net::Transport;
use tokio::task::JoinHandle;

use crate::daemon::Daemon;

/// The lease asked for.
pub const LEASE: Duration = Duration::from_secs(60 * 60);
/// With no router found, or a mapping refused, how long until the next try.
pub const RETRY: Duration = Duration::from_secs(10 * 60);
/// How long the SSDP search waits for a gateway's answer.
const SEARCH_TIMEOUT: Duration = Duration::from_secs(3);
/// How long removing the mapping at exit may take.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(3);
/// The description the router shows for the mapping.
const DESCRIPTION: &str = "meshsync";
/// The source name in the address book.
const SOURCE: &str = "upnp";

/// Whether a router could map a port for a listener on `listen` (it could
/// not for loopback or a specific IPv6 address).
pub fn applies_to(listen: SocketAddr) -> bool {
    match listen.ip() {
        IpAddr::V4(ip) => !ip.is_loopback(),
        IpAddr::V6(ip) => ip.is_unspecified(),
    }
}

/// When to renew a lease of `lease` (zero: a permanent mapping, refreshed
/// every half [`LEASE`] all the same).
pub fn renew_after(lease: Duration) -> Duration {
    let lease = if lease.is_zero() { LEASE } else { lease };
    (lease / 2).max(Duration::from_secs(30))
}

/// Starts the port mapping in the background. The returned task ends once
/// the daemon is stopping and the mapping is removed: await it (briefly)
/// before exiting. `None` when the listener cannot be mapped.
pub fn spawn(daemon: &Arc<Daemon>, transport: &Arc<Transport>) -> Option<JoinHandle<()>> {
    let listen = transport.local_addr();
    if !applies_to(listen) {
        tracing::debug!("port mapping: not for a listener on {listen}");
        return None;
    }
    Some(tokio::spawn(run(Arc::clone(daemon), listen)))
}

async fn run(daemon: Arc<Daemon>, listen: SocketAddr) {
    let mut stopping = daemon.stopping.subscribe();
    let mut reported = false;
    loop {
        let attempt = tokio::select! {
            m = map(listen) => m,
            _ = stopping.changed() => return,
        };
        match attempt {
            Ok(mut mapping) => {
                tracing::info!(
                    "port mapping: {} forwards to {} ({}, lease {} s)",
                    mapping.external,
                    mapping.local,
                    mapping.method(),
                    mapping.lease.as_secs()
                );
                reported = false;
                daemon.book.set_own(SOURCE, vec![mapping.external]);
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(renew_after(mapping.lease)) => {}
                        _ = stopping.changed() => {
                            let external = mapping.external;
                            match tokio::time::timeout(REMOVE_TIMEOUT, mapping.remove()).await {
                                Ok(Ok(())) => tracing::info!("port mapping: removed {external}"),
                                Ok(Err(e)) => tracing::info!("port mapping: removing {external}: {e}"),
                                Err(_) => tracing::info!("port mapping: removing {external}: no answer"),
                            }
                            daemon.book.set_own(SOURCE, Vec::new());
                            return;
                        }
                    }
                    match mapping.renew().await {
                        Ok(()) => daemon.book.set_own(SOURCE, vec![mapping.external]),
                        Err(e) => {
                            tracing::info!("port mapping: renewing {}: {e}", mapping.external);
                            daemon.book.set_own(SOURCE, Vec::new());
                            break;
                        }
                    }
                }
                // Lost the mapping: look for the router again at once.
                continue;
            }
            Err(e) if !reported => {
                tracing::info!("port mapping: none ({e}); trying again every {RETRY:?}");
                reported = true;
            }
            Err(e) => tracing::debug!("port mapping: none ({e})"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stopping.changed() => return,
        }
    }
}

/// A port forwarded by the router.
struct Mapping {
    /// The router's external address and port.
    external: SocketAddr,
    /// Where it forwards to (this device's LAN address, the QUIC port).
    local: SocketAddr,
    /// The lease granted (zero: permanent).
    lease: Duration,
    by: Mapper,
}

enum Mapper {
    Igd(Gateway<Tokio>),
    PcpOrPmp(PortMapping),
}

impl Mapping {
    fn method(&self) -> &'static str {
        match &self.by {
            Mapper::Igd(_) => "UPnP IGD",
            Mapper::PcpOrPmp(m) => match m.mapping_type() {
                PortMappingType::NatPmp => "NAT-PMP",
                PortMappingType::Pcp { .. } => "PCP",
            },
        }
    }

    async fn renew(&mut self) -> Result<(), String> {
        match &mut self.by {
            Mapper::Igd(gw) => {
                let lease = self.lease.as_secs() as u32;
                gw.add_port(
                    PortMappingProtocol::UDP,
                    self.external.port(),
                    self.local,
                    lease,
                    DESCRIPTION,
                )
                .await
                .map_err(|e| format!("UPnP IGD: {e}"))
            }
            Mapper::PcpOrPmp(m) => {
                m.renew().await.map_err(|e| e.to_string())?;
                self.external.set_port(m.external_port().get());
                self.lease = Duration::from_secs(m.lifetime().into());
                Ok(())
            }
        }
    }

    async fn remove(self) -> Result<(), String> {
        match self.by {
            Mapper::Igd(gw) => gw
                .remove_port(PortMappingProtocol::UDP, self.external.port())
                .await
                .map_err(|e| e.to_string()),
            Mapper::PcpOrPmp(m) => m.try_drop().await.map_err(|(e, _)| e.to_string()),
        }
    }
}

/// Maps the QUIC port: UPnP IGD, else PCP / NAT-PMP.
async fn map(listen: SocketAddr) -> Result<Mapping, String> {
    let igd = match map_igd(listen).await {
        Ok(m) => return Ok(m),
        Err(e) => e,
    };
    match map_pcp_or_pmp(listen).await {
        Ok(m) => Ok(m),
        Err(pmp) => Err(format!("UPnP IGD: {igd}; PCP/NAT-PMP: {pmp}")),
    }
}

/// This device's address on the way to `gateway` (the address the router
/// must forward to): the listener's own when it is a specific IPv4 address,
/// else the one the kernel picks for that route (no packet is sent).
fn local_ip_towards(listen: SocketAddr, gateway: SocketAddr) -> Result<Ipv4Addr, String> {
    if let IpAddr::V4(ip) = listen.ip()
        && !ip.is_unspecified()
    {
        return Ok(ip);
    }
    let probe = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| e.to_string())?;
    probe.connect(gateway).map_err(|e| e.to_string())?;
    match probe.local_addr().map_err(|e| e.to_string())?.ip() {
        IpAddr::V4(ip) => Ok(ip),
        IpAddr::V6(ip) => Err(format!("no IPv4 address towards the router ({ip})")),
    }
}

async fn map_igd(listen: SocketAddr) -> Result<Mapping, String> {
    let mut options = SearchOptions::default();
    options.timeout = Some(SEARCH_TIMEOUT);
    options.single_search_timeout = Some(SEARCH_TIMEOUT);
    if let IpAddr::V4(ip) = listen.ip() {
        options.bind_addr = SocketAddr::from((ip, 0));
    }
    let gw = igd_next::aio::tokio::search_gateway(options)
        .await
        .map_err(|e| format!("no gateway ({e})"))?;
    let local = SocketAddr::from((local_ip_towards(listen, gw.addr)?, listen.port()));
    let external_ip = match gw.get_external_ip().await {
        Ok(IpAddr::V4(ip)) if !ip.is_unspecified() => ip,
        Ok(ip) => {
            return Err(format!(
                "the gateway at {} reports external address {ip}",
                gw.addr
            ));
        }
        Err(e) => {
            return Err(format!(
                "the gateway at {} has no external address ({e})",
                gw.addr
            ));
        }
    };
    let mut lease = LEASE.as_secs() as u32;
    let port = listen.port();
    let mapped = match gw
        .add_port(PortMappingProtocol::UDP, port, local, lease, DESCRIPTION)
        .await
    {
        Ok(()) => Ok(port),
        Err(AddPortError::OnlyPermanentLeasesSupported) => {
            lease = 0;
            gw.add_port(PortMappingProtocol::UDP, port, local, 0, DESCRIPTION)
                .await
                .map(|()| port)
                .map_err(|e| e.to_string())
        }
        Err(_) => match gw
            .add_any_port(PortMappingProtocol::UDP, local, lease, DESCRIPTION)
            .await
        {
            Err(AddAnyPortError::OnlyPermanentLeasesSupported) => {
                lease = 0;
                gw.add_any_port(PortMappingProtocol::UDP, local, 0, DESCRIPTION)
                    .await
                    .map_err(|e| e.to_string())
            }
            other => other.map_err(|e| e.to_string()),
        },
    };
    let external_port = mapped.map_err(|e| format!("the gateway at {} refused: {e}", gw.addr))?;
    Ok(Mapping {
        external: SocketAddr::from((external_ip, external_port)),
        local,
        lease: Duration::from_secs(lease.into()),
        by: Mapper::Igd(gw),
    })
}

async fn map_pcp_or_pmp(listen: SocketAddr) -> Result<Mapping, String> {
    let gateway = default_gateway_v4().ok_or("no IPv4 default route")?;
    let client = local_ip_towards(listen, SocketAddr::from((gateway, 5351)))?;
    let internal = NonZeroU16::new(listen.port()).ok_or("listening on port 0")?;
    let timeouts = TimeoutConfig {
        initial_timeout: Duration::from_millis(250),
        max_retries: 3,
        max_retry_timeout: Some(Duration::from_secs(1)),
    };
    let options = PortMappingOptions {
        external_port: Some(internal),
        lifetime_seconds: Some(LEASE.as_secs() as u32),
        timeout_config: Some(timeouts),
    };
    let m = PortMapping::new(
        gateway.into(),
        client.into(),
        InternetProtocol::Udp,
        internal,
        options,
    )
    .await
    .map_err(|e| format!("{gateway}: {e}"))?;
    let external_ip = match m.mapping_type() {
        PortMappingType::Pcp { external_ip, .. } => external_ip,
        PortMappingType::NatPmp => {
            crab_nat::natpmp::external_address(gateway.into(), Some(timeouts))
                .await
                .map_err(|e| format!("{gateway}: external address: {e}"))?
                .into()
        }
    };
    let external_ip = match external_ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    if external_ip.is_unspecified() {
        let _ = m.try_drop().await;
        return Err(format!("{gateway} reports no external address"));
    }
    Ok(Mapping {
        external: SocketAddr::new(external_ip, m.external_port().get()),
        local: SocketAddr::from((client, listen.port())),
        lease: Duration::from_secs(m.lifetime().into()),
        by: Mapper::PcpOrPmp(m),
    })
}

/// The IPv4 default gateway, from the kernel's routing table (Linux).
fn default_gateway_v4() -> Option<Ipv4Addr> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    parse_default_gateway(&table)
}

/// The gateway of the first default route in `/proc/net/route` text
/// (destination 0, flags RTF_UP | RTF_GATEWAY; addresses are little-endian
/// hex).
fn parse_default_gateway(table: &str) -> Option<Ipv4Addr> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (dest, gateway, flags) = (f.get(1)?, f.get(2)?, f.get(3)?);
        let flags = u32::from_str_radix(flags, 16).ok()?;
        if *dest != "00000000" || flags & 0x3 != 0x3 {
            return None;
        }
        let g = u32::from_str_radix(gateway, 16).ok()?;
        Some(Ipv4Addr::from(g.swap_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listeners_a_router_can_reach_are_mapped() {
        assert!(!applies_to("127.0.0.1:22000".parse().unwrap()));
        assert!(!applies_to("[::1]:22000".parse().unwrap()));
        assert!(!applies_to("[2001:db8::1]:22000".parse().unwrap()));
        assert!(applies_to("0.0.0.0:22000".parse().unwrap()));
        assert!(applies_to("192.168.1.10:22000".parse().unwrap()));
        assert!(applies_to("[::]:22000".parse().unwrap()));
    }

    #[test]
    fn leases_are_renewed_at_half_life() {
        assert_eq!(renew_after(LEASE), LEASE / 2);
        assert_eq!(
            renew_after(Duration::ZERO),
            LEASE / 2,
            "permanent: refreshed"
        );
        assert_eq!(
            renew_after(Duration::from_secs(10)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn the_default_gateway_is_read_from_the_route_table() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(
            parse_default_gateway(table),
            Some(Ipv4Addr::new(192, 168, 1, 1))
        );
        assert_eq!(parse_default_gateway("Iface\tDestination\n"), None);
    }

    #[test]
    fn the_local_address_is_the_listeners_when_specific() {
        let gw: SocketAddr = "127.0.0.1:5351".parse().unwrap();
        assert_eq!(
            local_ip_towards("10.1.2.3:22000".parse().unwrap(), gw),
            Ok(Ipv4Addr::new(10, 1, 2, 3))
        );
        // Unspecified: the kernel's choice for the route (loopback here).
        assert_eq!(
            local_ip_towards("0.0.0.0:22000".parse().unwrap(), gw),
            Ok(Ipv4Addr::LOCALHOST)
        );
    }
}
