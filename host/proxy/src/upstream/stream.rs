//! An upstream as a TCP listener's connections use it: a target picked by
//! the balance (the client's address is the key), a connection opened,
//! another target tried when one cannot be reached, and a PROXY protocol
//! header sent first when the upstream asks for one.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::balance::Key;
use super::connect::ByteStream;
use super::target::{InFlight, Target, now_ms};
use super::{Upstream, UpstreamError};
use crate::config::ProxyVersion;

/// A connection to a target, counted in flight while it is held.
pub struct Joined {
    /// The target's stream.
    pub stream: Box<dyn ByteStream>,
    /// The target connected to.
    pub target: SocketAddr,
    _in_flight: InFlight,
}

impl Upstream {
    /// A connection to one of the targets for a client at `client` (which
    /// reached the gateway at `local`): a target that cannot be reached is
    /// marked (outlier detection) and another tried, up to `retries`.
    pub async fn open_stream(
        &self,
        client: SocketAddr,
        local: SocketAddr,
    ) -> Result<Joined, UpstreamError> {
        let members = self.members.load_full();
        let key = Key {
            client_ip: client.ip(),
            hashed: Some(super::balance::hash(&client.ip())),
            sticky: None,
        };
        let mut tried = Vec::new();
        let mut last = None;
        loop {
            let Some(i) = members.pick(self.balance, &key, &tried) else {
                return Err(last.unwrap_or_else(|| UpstreamError::NoHealthy {
                    upstream: self.name.clone(),
                }));
            };
            tried.push(i);
            let target: &Arc<Target> = &members.targets[i].0;
            let in_flight = target.start(now_ms());
            let host = target.authority.host();
            let opened = match self.connector.connect_stream(target.addr, host).await {
                Ok(mut stream) => match self.proxy_protocol {
                    None => Ok(stream),
                    Some(version) => {
                        let header = proxy_header(version, client, local);
                        match stream.write_all(&header).await {
                            Ok(()) => Ok(stream),
                            Err(error) => Err(error.into()),
                        }
                    }
                },
                Err(error) => Err(error),
            };
            match opened {
                Ok(stream) => {
                    target.succeeded();
                    return Ok(Joined {
                        stream,
                        target: target.addr,
                        _in_flight: in_flight,
                    });
                }
                Err(source) => {
                    self.failed(target);
                    last = Some(self.unreachable(target, source));
                    if !self.another_target(&members, &tried) {
                        return Err(last.expect("just set"));
                    }
                    self.count_retry("connect");
                }
            }
        }
    }
}

impl Upstream {
    /// The target for a UDP session of `client` (or one of its datagrams),
    /// picked by the balance among those available.
    pub fn pick_for_datagrams(&self, client: SocketAddr) -> Option<SocketAddr> {
        let members = self.members.load();
        let key = Key {
            client_ip: client.ip(),
            hashed: Some(super::balance::hash(&client)),
            sticky: None,
        };
        let i = members.pick(self.balance, &key, &[])?;
        Some(members.targets[i].0.addr)
    }

    /// A target refused datagrams (ICMP port unreachable): a failure for
    /// outlier detection, as a refused connection is.
    pub fn datagrams_refused(&self, target: SocketAddr) {
        let members = self.members.load();
        if let Some((found, _)) = members.targets.iter().find(|(t, _)| t.addr == target) {
            self.failed(found);
        }
    }
}

/// The PROXY protocol header naming `client`, which reached `local`.
fn proxy_header(version: ProxyVersion, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
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
        ProxyVersion::V2 => {
            use ppp::v2::{Builder, Command, Protocol, Version};
            Builder::with_addresses(
                Version::Two | Command::Proxy,
                Protocol::Stream,
                (client, local),
            )
            .build()
            .expect("a header of two addresses")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_back() {
        let client: SocketAddr = "192.0.2.7:5555".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let v1 = proxy_header(ProxyVersion::V1, client, local);
        assert_eq!(v1, b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\n");
        let v2 = proxy_header(ProxyVersion::V2, client, local);
        let parsed = ppp::v2::Header::try_from(v2.as_slice()).unwrap();
        assert_eq!(
            parsed.addresses,
            ppp::v2::Addresses::IPv4(ppp::v2::IPv4::new([192, 0, 2, 7], [127, 0, 0, 1], 5555, 80))
        );
    }
}
