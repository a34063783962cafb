//! This machine's network interfaces and their addresses, as LAN discovery
//! needs them: which interfaces can carry multicast and broadcast, their
//! index (to join a group and pick the outgoing interface), and their
//! IPv4 broadcast addresses.
//!
//! Read with `getifaddrs(3)` (Linux), so it needs no extra crate; the list
//! is cheap to read and is polled to notice network changes.

use std::ffi::CStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One address of one interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterfaceAddr {
    /// The interface's name (`eth0`).
    pub name: String,
    /// The interface's index (for IPv6 scopes and multicast membership).
    pub index: u32,
    /// The address.
    pub ip: IpAddr,
    /// The IPv4 broadcast address of the address's subnet, when the
    /// interface can broadcast.
    pub broadcast: Option<Ipv4Addr>,
    /// The interface is up and running.
    pub up: bool,
    /// The interface is a loopback interface.
    pub loopback: bool,
    /// The interface can carry multicast.
    pub multicast: bool,
}

/// Every IPv4 and IPv6 address of every interface, sorted.
pub fn list() -> io::Result<Vec<InterfaceAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs(3) writes a list head we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive
        // until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        // SAFETY: the address, when present, is a sockaddr of the family it
        // names, alive with the list.
        let Some(ip) = (unsafe { sockaddr_ip(ifa.ifa_addr) }) else {
            continue;
        };
        if ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a NUL-terminated name, alive with the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: the same name as a C string.
        let index = unsafe { libc::if_nametoindex(ifa.ifa_name) };
        let flags = ifa.ifa_flags;
        let has = |flag: libc::c_int| flags & (flag as libc::c_uint) != 0;
        let broadcast = if has(libc::IFF_BROADCAST) && ip.is_ipv4() {
            // SAFETY: with IFF_BROADCAST the union holds the broadcast
            // address (a sockaddr or null), alive with the list.
            match unsafe { sockaddr_ip(ifa.ifa_ifu) } {
                Some(IpAddr::V4(b)) if !b.is_unspecified() => Some(b),
                _ => None,
            }
        } else {
            None
        };
        out.push(InterfaceAddr {
            name: name.to_string_lossy().into_owned(),
            index,
            ip,
            broadcast,
            up: has(libc::IFF_UP) && has(libc::IFF_RUNNING),
            loopback: has(libc::IFF_LOOPBACK),
            multicast: has(libc::IFF_MULTICAST),
        });
    }
    // SAFETY: the head getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    Ok(out)
}

/// The IP address in a `sockaddr_in` or `sockaddr_in6`; `None` for a null
/// pointer or another family.
///
/// # Safety
///
/// `sa` is null or points to a sockaddr whose `sa_family` says its real
/// type.
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: the caller promises a valid sockaddr; the family says which.
    unsafe {
        match i32::from((*sa).sa_family) {
            libc::AF_INET => {
                let sin = &*(sa as *const libc::sockaddr_in);
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))))
            }
            libc::AF_INET6 => {
                let sin6 = &*(sa as *const libc::sockaddr_in6);
                Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed() {
        let all = list().unwrap();
        let lo = all
            .iter()
            .find(|a| a.ip == IpAddr::V4(Ipv4Addr::LOCALHOST))
            .expect("127.0.0.1 on some interface");
        assert!(lo.loopback);
        assert!(lo.index > 0);
        assert!(lo.broadcast.is_none());
    }
}
