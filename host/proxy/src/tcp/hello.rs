//! What a TLS ClientHello says about where its connection should go: the
//! server name (SNI) and the ALPN protocols, read from the first record
//! without taking it off the socket, so the connection passes untouched.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::listener::peek::{Unpeeked, peek_until};

/// The ClientHello's server name and ALPN protocols.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Hello {
    /// The server name, lowercased.
    pub sni: Option<String>,
    /// The protocols offered, in the client's order.
    pub alpn: Vec<String>,
}

/// The largest TLS record.
const MAX_RECORD: usize = 5 + (16 << 10);

/// Peek at `stream`'s first bytes until a whole first TLS record is in.
/// `Ok(None)`: the client does not speak TLS (or its hello spans records);
/// `Err`: it sent nothing whole in time, or went away.
pub async fn peek(stream: &TcpStream, within: Duration) -> Result<Option<Hello>, HelloError> {
    let hello = |bytes: &[u8]| {
        if bytes[0] != 22 {
            return Some(None);
        }
        let length = usize::from(u16::from_be_bytes([*bytes.get(3)?, *bytes.get(4)?]));
        Some(parse(bytes.get(5..5 + length)?))
    };
    match peek_until(stream, MAX_RECORD, within, hello).await {
        Ok(hello) => Ok(hello),
        Err(Unpeeked::Timeout) => Err(HelloError::Timeout),
        Err(Unpeeked::Closed) => Err(HelloError::Closed),
        // A record is never longer; not TLS as we know it.
        Err(Unpeeked::Full) => Ok(None),
    }
}

/// Why no ClientHello was read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HelloError {
    /// Nothing whole within the listener's `hello_timeout`.
    #[error("no ClientHello in time")]
    Timeout,
    /// The client went away first.
    #[error("the client closed before its ClientHello")]
    Closed,
}

/// The SNI and ALPN of a handshake record's ClientHello, if it is one.
fn parse(record: &[u8]) -> Option<Hello> {
    let mut r = Reader(record);
    if r.u8()? != 1 {
        return None;
    }
    let length = r.u24()?;
    let body = r.bytes(length)?;
    let mut r = Reader(body);
    r.bytes(2 + 32)?; // version, random
    let session = r.u8()? as usize;
    r.bytes(session)?;
    let suites = r.u16()? as usize;
    r.bytes(suites)?;
    let compressions = r.u8()? as usize;
    r.bytes(compressions)?;
    let mut hello = Hello::default();
    if r.0.is_empty() {
        return Some(hello);
    }
    let extensions = r.u16()? as usize;
    let mut r = Reader(r.bytes(extensions)?);
    while !r.0.is_empty() {
        let kind = r.u16()?;
        let length = r.u16()? as usize;
        let mut data = Reader(r.bytes(length)?);
        match kind {
            0 => {
                let list = data.u16()? as usize;
                let mut names = Reader(data.bytes(list)?);
                while !names.0.is_empty() {
                    let name_type = names.u8()?;
                    let length = names.u16()? as usize;
                    let name = names.bytes(length)?;
                    if name_type == 0 {
                        hello.sni = Some(String::from_utf8_lossy(name).to_ascii_lowercase());
                    }
                }
            }
            16 => {
                let list = data.u16()? as usize;
                let mut protocols = Reader(data.bytes(list)?);
                while !protocols.0.is_empty() {
                    let length = protocols.u8()? as usize;
                    let protocol = protocols.bytes(length)?;
                    hello
                        .alpn
                        .push(String::from_utf8_lossy(protocol).into_owned());
                }
            }
            _ => {}
        }
    }
    Some(hello)
}

/// Big-endian fields off the front of a slice; `None` past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(taken)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.bytes(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        let b = self.bytes(3)?;
        Some(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello record as rustls writes one.
    fn client_hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
        use std::sync::Arc;
        let roots = rustls::RootCertStore::empty();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        client.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn sni_and_alpn_from_a_real_client_hello() {
        let record = client_hello("Db.Example.com", &[b"h2", b"postgresql"]);
        assert_eq!(record[0], 22);
        assert_eq!(
            parse(&record[5..]),
            Some(Hello {
                sni: Some("db.example.com".into()),
                alpn: vec!["h2".into(), "postgresql".into()],
            })
        );
    }

    #[test]
    fn truncated_or_other_records_are_not_hellos() {
        let record = client_hello("a.example", &[]);
        for cut in [6, 40, record.len() - 1] {
            assert_eq!(parse(&record[5..cut]), None, "cut at {cut}");
        }
        assert_eq!(parse(&[2, 0, 0, 0]), None);
    }
}
