//! The PROXY protocol header (v1, text; v2, binary) a load balancer in
//! front sends at the start of each connection, naming the client. Peeked
//! at ([`super::peek`]) and then taken off exactly, so not a byte of what follows is
//! lost, whatever the listener then speaks.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::PartialResult;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::peek::{Unpeeked, peek_until};

/// Longest header taken (v2 with its TLVs).
const MAX_HEADER: usize = 4096;

/// Why a connection's PROXY header was not read.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// Not a PROXY header, or a broken one.
    #[error("not a PROXY protocol header")]
    Malformed,
    /// No whole header within the listener's header timeout.
    #[error("no PROXY protocol header in time")]
    Timeout,
    /// The connection closed first.
    #[error("the connection closed before its PROXY protocol header")]
    Closed,
}

impl ProxyHeaderError {
    /// For metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyHeaderError::Malformed => "proxy_protocol_malformed",
            ProxyHeaderError::Timeout => "proxy_protocol_timeout",
            ProxyHeaderError::Closed => "proxy_protocol_closed",
        }
    }
}

/// Take the header off `stream`: the client it names, or `None` for a
/// header that names none (a health check's `LOCAL`, v1's `UNKNOWN`).
pub async fn read(
    stream: &mut TcpStream,
    within: Duration,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let header = |bytes: &[u8]| parse(bytes).transpose();
    let (length, client) = match peek_until(stream, MAX_HEADER, within, header).await {
        Ok(parsed) => parsed?,
        Err(Unpeeked::Timeout) => return Err(ProxyHeaderError::Timeout),
        Err(Unpeeked::Closed) => return Err(ProxyHeaderError::Closed),
        Err(Unpeeked::Full) => return Err(ProxyHeaderError::Malformed),
    };
    // Peeked whole: these bytes are in, and taking them off does not wait.
    let mut header = vec![0; length];
    (stream.read_exact(&mut header).await).map_err(|_| ProxyHeaderError::Closed)?;
    Ok(client)
}

/// A whole header's length and client, `None` while more is needed.
#[allow(clippy::type_complexity, reason = "a private helper's one result")]
fn parse(bytes: &[u8]) -> Result<Option<(usize, Option<SocketAddr>)>, ProxyHeaderError> {
    if bytes.starts_with(b"PROXY") || b"PROXY".starts_with(&bytes[..bytes.len().min(5)]) {
        let parsed = ppp::v1::Header::try_from(bytes);
        if parsed.is_incomplete() {
            return Ok(None);
        }
        let header = parsed.map_err(|_| ProxyHeaderError::Malformed)?;
        let client = match header.addresses {
            ppp::v1::Addresses::Tcp4(ip) => Some((ip.source_address, ip.source_port).into()),
            ppp::v1::Addresses::Tcp6(ip) => Some((ip.source_address, ip.source_port).into()),
            ppp::v1::Addresses::Unknown => None,
        };
        return Ok(Some((header.header.len(), client)));
    }
    let parsed = ppp::v2::Header::try_from(bytes);
    if parsed.is_incomplete() {
        return Ok(None);
    }
    let header = parsed.map_err(|_| ProxyHeaderError::Malformed)?;
    let client = match (header.command, header.addresses) {
        (ppp::v2::Command::Local, _) => None,
        (_, ppp::v2::Addresses::IPv4(ip)) => Some((ip.source_address, ip.source_port).into()),
        (_, ppp::v2::Addresses::IPv6(ip)) => Some((ip.source_address, ip.source_port).into()),
        _ => None,
    };
    Ok(Some((header.len(), client)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_versions_and_their_lengths() {
        let v1 = b"PROXY TCP4 192.0.2.1 127.0.0.1 4000 80\r\nGET /";
        assert_eq!(
            parse(v1).unwrap(),
            Some((v1.len() - 5, Some("192.0.2.1:4000".parse().unwrap())))
        );
        assert_eq!(parse(&v1[..20]).unwrap(), None);
        assert_eq!(parse(b"PRO").unwrap(), None);
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap(), Some((15, None)));
        let v2 = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "[2001:db8::1]:5000".parse::<SocketAddr>().unwrap(),
                "[::1]:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        assert_eq!(
            parse(&v2).unwrap(),
            Some((v2.len(), Some("[2001:db8::1]:5000".parse().unwrap())))
        );
        assert_eq!(parse(&v2[..10]).unwrap(), None);
        assert!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_err());
    }
}
