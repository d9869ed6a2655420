//! Network facts the launcher needs about hosts: which local address they reach us on,
//! and whether a host still answers.

use crate::error::{ErrorKind, NetError, Result};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

/// The address to give ranks on `hosts` for the rendezvous: the local address of the route
/// to the first host that is not this machine (the kernel's choice for a UDP "connect",
/// which sends nothing), so it is reachable from every host on that network; 127.0.0.1
/// when every host is this machine. Never 127.0.0.1 for a remote rank.
///
/// Decision: one address for all hosts. Hosts behind different interfaces of the head node
/// need `--advertise` with an address every one of them routes to.
pub fn advertise_address(hosts: &[String]) -> Result<IpAddr> {
    let mut last_err = None;
    for h in hosts {
        match source_address_to(h) {
            Ok(ip) if !ip.is_loopback() => return Ok(ip),
            Ok(_) => {}
            Err(e) => last_err = Some(e),
        }
    }
    match last_err {
        // Not one host resolved: the engine would fail on them anyway; say which.
        Some(e) if hosts.iter().all(|h| source_address_to(h).is_err()) => Err(e),
        _ => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    }
}

/// Why `ip` cannot be the rendezvous address given to the ranks, `None` when it can: the
/// unspecified address (`0.0.0.0`, `::`: each remote rank would dial itself), a multicast
/// or the broadcast address (nothing accepts a connection there).
pub fn unusable_advertise(ip: IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("the unspecified address cannot be dialled (each rank would dial itself)");
    }
    if ip.is_multicast() {
        return Some("a multicast address cannot accept a connection");
    }
    if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        return Some("the broadcast address cannot accept a connection");
    }
    None
}

/// The machine `host` names: `user@host` (ssh's login form) is `host`, the part after the
/// last `@`; anything else is itself. What is resolved, and what a rank is told its host is.
pub fn host_part(host: &str) -> &str {
    host.rsplit_once('@').map_or(host, |(_, h)| h)
}

/// The local address the kernel would use to reach `host` (`user@host` for ssh: the
/// host part is resolved).
fn source_address_to(host: &str) -> Result<IpAddr> {
    let name = host_part(host);
    let target = (name, 9)
        .to_socket_addrs()
        .map_err(|e| NetError::io(format!("resolving host {host}"), e))?
        .next()
        .ok_or_else(|| NetError::new(ErrorKind::Config, format!("host {host} has no address")))?;
    let any: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().map_err(|_| bad_literal())?
    } else {
        "[::]:0".parse().map_err(|_| bad_literal())?
    };
    let s = UdpSocket::bind(any).map_err(|e| NetError::io("routing probe socket", e))?;
    s.connect(target)
        .map_err(|e| NetError::io(format!("no route to host {host} ({target})"), e))?;
    let ip = s
        .local_addr()
        .map_err(|e| NetError::io("routing probe address", e))?
        .ip();
    // A host that resolves to this machine's own non-loopback address is local too.
    if ip == target.ip() {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    Ok(ip)
}

fn bad_literal() -> NetError {
    NetError::new(ErrorKind::Config, "bad address literal")
}

/// True when something at `addr`'s host answers within `timeout`: a connection accepted or
/// refused (a live host with a dead process refuses). Times out (or is unreachable) when
/// the host is down or cut off. The probe sends no data: an accepted connection is closed
/// at once (the rank logs a refused handshake).
pub fn probe_host(addr: SocketAddr, timeout: Duration) -> bool {
    match TcpStream::connect_timeout(&addr, timeout) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review #13: unspecified, multicast and broadcast addresses are refused.
    #[test]
    fn unspecified_multicast_and_broadcast_cannot_be_advertised() {
        for bad in ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"] {
            assert!(unusable_advertise(bad.parse().unwrap()).is_some(), "{bad}");
        }
        for good in ["127.0.0.1", "10.1.2.3", "::1", "fe80::1"] {
            assert!(
                unusable_advertise(good.parse().unwrap()).is_none(),
                "{good}"
            );
        }
    }

    /// Review #5: an ssh host `user@host` was resolved whole (and failed); the host part
    /// is resolved.
    #[test]
    fn user_at_host_resolves_the_host_part() {
        let ip = advertise_address(&["alice@127.0.0.1".into()]).unwrap();
        assert!(ip.is_loopback());
        let ip = advertise_address(&["a@b@127.0.0.1".into()]).unwrap();
        assert!(ip.is_loopback());
    }

    /// Review: the supervisor told a rank placed on `alice@n1` that its host was
    /// `alice@n1`, which the levels refuse as a directory name; it now exports this.
    #[test]
    fn the_host_part_of_a_login_is_the_machine() {
        assert_eq!(host_part("alice@n1"), "n1");
        assert_eq!(host_part("a@b@n1.example.org"), "n1.example.org");
        assert_eq!(host_part("n1"), "n1");
        assert_eq!(host_part("10.0.0.1"), "10.0.0.1");
    }

    #[test]
    fn local_hosts_advertise_loopback_and_probes_tell_refused_from_silent() {
        let ip = advertise_address(&["127.0.0.1".into(), "localhost".into()]).unwrap();
        assert!(ip.is_loopback());
        assert!(advertise_address(&["no-such-host.invalid".into()]).is_err());
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = l.local_addr().unwrap();
        assert!(probe_host(open, Duration::from_secs(1)));
        drop(l);
        // Nothing listens any more: refused, yet the host answers.
        assert!(probe_host(open, Duration::from_secs(1)));
    }
}
