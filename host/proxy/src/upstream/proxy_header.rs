//! The PROXY protocol header an upstream's connections begin with, before
//! TLS: the client's connection it carries traffic for, or `LOCAL` for the
//! gateway's own (health checks, plugins' calls), which a receiver treats
//! as coming from its peer.

use std::net::SocketAddr;

use crate::config::ProxyVersion;

/// A client's connection: its address, and the address it reached.
pub type Who = (SocketAddr, SocketAddr);

/// The header for `who`, or a `LOCAL` one without.
pub(super) fn proxy_header(version: ProxyVersion, who: Option<Who>) -> Vec<u8> {
    use ppp::v2::{Addresses, Builder, Command, Protocol, Version};
    let Some((client, local)) = who else {
        return match version {
            ProxyVersion::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
            ProxyVersion::V2 => Builder::with_addresses(
                Version::Two | Command::Local,
                Protocol::Unspecified,
                Addresses::Unspecified,
            )
            .build()
            .expect("an empty header"),
        };
    };
    // Both of one family: an IPv4 client on an IPv6 socket is mapped.
    let (client, local) = match (client, local) {
        (SocketAddr::V4(c), SocketAddr::V6(l)) => (
            SocketAddr::new(c.ip().to_ipv6_mapped().into(), c.port()),
            SocketAddr::V6(l),
        ),
        (SocketAddr::V6(c), SocketAddr::V4(l)) => (
            SocketAddr::V6(c),
            SocketAddr::new(l.ip().to_ipv6_mapped().into(), l.port()),
        ),
        pair => pair,
    };
    match version {
        ProxyVersion::V1 => {
            let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                client.ip(),
                local.ip(),
                client.port(),
                local.port()
            )
            .into_bytes()
        }
        ProxyVersion::V2 => Builder::with_addresses(
            Version::Two | Command::Proxy,
            Protocol::Stream,
            (client, local),
        )
        .build()
        .expect("a header of two addresses"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_back() {
        let client: SocketAddr = "192.0.2.7:5555".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let who = Some((client, local));
        let v1 = proxy_header(ProxyVersion::V1, who);
        assert_eq!(v1, b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\n");
        let v2 = proxy_header(ProxyVersion::V2, who);
        let parsed = ppp::v2::Header::try_from(v2.as_slice()).unwrap();
        assert_eq!(
            parsed.addresses,
            ppp::v2::Addresses::IPv4(ppp::v2::IPv4::new([192, 0, 2, 7], [127, 0, 0, 1], 5555, 80))
        );
        assert_eq!(proxy_header(ProxyVersion::V1, None), b"PROXY UNKNOWN\r\n");
        let local = proxy_header(ProxyVersion::V2, None);
        let parsed = ppp::v2::Header::try_from(local.as_slice()).unwrap();
        assert_eq!(parsed.command, ppp::v2::Command::Local);
        assert_eq!(parsed.addresses, ppp::v2::Addresses::Unspecified);
    }
}
