//! Opening a connection to a target: TCP with a timeout, TLS if configured
//! (SNI and verification against the target's host or `server_name`), and
//! the HTTP handshake: HTTP/1.1, or HTTP/2 by ALPN or prior knowledge; a
//! PROXY protocol header first, when the upstream sends one.

use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version, header};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::inline::Io;
use super::proxy_header::{Who, proxy_header};
use crate::body::{BoxError, ProxyBody};
use crate::config::{ProxyVersion, UpstreamConfig, UpstreamProtocol};

/// A connection's sending half.
pub(super) enum Sender {
    /// One exchange at a time; its I/O is driven by whoever uses it.
    H1(http1::SendRequest<ProxyBody>, Io),
    /// Any number of exchanges at once (cloned per request).
    H2(http2::SendRequest<ProxyBody>),
}

impl Sender {
    /// Send `request`; on failure the request comes back if it never left.
    /// Over HTTP/2 the scheme and authority (from `Host`, or `host`) go in
    /// the request line.
    #[allow(
        clippy::result_large_err,
        reason = "the error hands back a request that never left, to try it again; boxing it would add an allocation to every failure"
    )]
    pub(super) async fn send(
        &mut self,
        mut request: Box<Request<ProxyBody>>,
        secure: bool,
        host: &str,
    ) -> Result<Response<Incoming>, TrySendError<Request<ProxyBody>>> {
        match self {
            Sender::H1(sender, io) => {
                // Handing the request over wakes the connection, polled next.
                let sent = io.quietly(|| sender.try_send_request(*request));
                io.driving(pin!(sent)).await
            }
            Sender::H2(sender) => {
                to_h2(&mut request, secure, host);
                sender.try_send_request(*request).await
            }
        }
    }
}

/// HTTP/2 carries the scheme and authority in the request line, not in `Host`.
fn to_h2(request: &mut Request<ProxyBody>, secure: bool, host: &str) {
    let from_header = request.headers_mut().remove(header::HOST);
    let authority = from_header
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .or_else(|| Authority::try_from(host).ok());
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.scheme = Some(if secure { Scheme::HTTPS } else { Scheme::HTTP });
    parts.authority = authority;
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *request.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
    *request.version_mut() = Version::HTTP_2;
    // The edge drops `TE` as hop-by-hop; gRPC servers require `TE: trailers`.
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        let trailers = http::HeaderValue::from_static("trailers");
        request.headers_mut().insert(header::TE, trailers);
    }
}

/// How connections to one upstream's targets are opened.
pub(super) struct Connector {
    timeout: Duration,
    protocol: UpstreamProtocol,
    tls: Option<TlsConnector>,
    /// The name for SNI and verification, instead of each target's host.
    server_name: Option<String>,
    /// The PROXY protocol header each connection begins with, if any.
    proxy_protocol: Option<ProxyVersion>,
}

impl Connector {
    /// The protocol spoken to the targets.
    pub(super) fn protocol(&self) -> UpstreamProtocol {
        self.protocol
    }

    /// From the upstream's configuration; the error names a bad file.
    pub(super) fn new(config: &UpstreamConfig) -> Result<Connector, String> {
        let tls = match &config.tls {
            None => None,
            Some(tls) => {
                let alpn: &[&[u8]] = match config.protocol {
                    UpstreamProtocol::Http1 => &[b"http/1.1"],
                    UpstreamProtocol::H2 => &[b"h2"],
                    UpstreamProtocol::Auto => &[b"h2", b"http/1.1"],
                };
                let identity = tls.cert.as_deref().zip(tls.key.as_deref());
                Some(crate::tls::connector(tls.ca.as_deref(), identity, alpn)?)
            }
        };
        Ok(Connector {
            timeout: config.connect_timeout,
            protocol: config.protocol,
            tls,
            server_name: config.tls.as_ref().and_then(|t| t.server_name.clone()),
            proxy_protocol: config.proxy_protocol,
        })
    }

    /// Whether its connections begin with a PROXY protocol header.
    pub(super) fn sends_proxy_protocol(&self) -> bool {
        self.proxy_protocol.is_some()
    }

    /// A TCP connection to `addr`, begun with a PROXY protocol header for
    /// `who` if the upstream sends one (before any TLS: the header is the
    /// TCP connection's).
    async fn tcp(&self, addr: SocketAddr, who: Option<Who>) -> Result<TcpStream, BoxError> {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        if let Some(version) = self.proxy_protocol {
            tcp.write_all(&proxy_header(version, who)).await?;
        }
        Ok(tcp)
    }

    /// Whether the targets speak TLS (and so the URI scheme is `https`).
    pub(super) fn secure(&self) -> bool {
        self.tls.is_some()
    }

    /// A connection to `addr`, which is `host`'s, carrying `who`'s traffic
    /// (for a PROXY protocol header). With `upgrades`, an HTTP/1.1
    /// connection that may be taken over by a protocol switch.
    pub(super) async fn connect(
        &self,
        addr: SocketAddr,
        host: &str,
        upgrades: bool,
        who: Option<Who>,
    ) -> Result<Sender, BoxError> {
        let timeout = self.timeout;
        // Boxed: the TCP, TLS and handshake states are kilobytes, and a
        // request that finds a warm connection should not carry them.
        let opening = Box::pin(async {
            let tcp = self.tcp(addr, who).await?;
            let Some(tls) = &self.tls else {
                let h2 = self.protocol == UpstreamProtocol::H2 && !upgrades;
                return handshake(tcp, h2, upgrades).await;
            };
            let name = self.server_name.as_deref().unwrap_or(host);
            let name = ServerName::try_from(name.to_owned())
                .map_err(|_| format!("`{name}` is not a valid TLS server name"))?;
            let stream = tls.connect(name, tcp).await?;
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            handshake(stream, h2, upgrades).await
        });
        tokio::time::timeout(timeout, opening)
            .await
            .map_err(|_| format!("connect timed out after {timeout:?}"))?
    }
}

/// A byte stream to a target, plain or TLS.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + Sync> ByteStream for S {}

impl Connector {
    /// A TCP connection to `addr` (`host`'s), with TLS if the upstream
    /// speaks it: what a TCP listener's connection (`who`'s) is joined to.
    pub(super) async fn connect_stream(
        &self,
        addr: SocketAddr,
        host: &str,
        who: Option<Who>,
    ) -> Result<Box<dyn ByteStream>, BoxError> {
        let timeout = self.timeout;
        let opening = async {
            let tcp = self.tcp(addr, who).await?;
            keepalive(&tcp);
            let Some(tls) = &self.tls else {
                return Ok(Box::new(tcp) as Box<dyn ByteStream>);
            };
            let name = self.server_name.as_deref().unwrap_or(host);
            let name = ServerName::try_from(name.to_owned())
                .map_err(|_| format!("`{name}` is not a valid TLS server name"))?;
            Ok(Box::new(tls.connect(name, tcp).await?) as Box<dyn ByteStream>)
        };
        tokio::time::timeout(timeout, opening)
            .await
            .map_err(|_| format!("connect timed out after {timeout:?}"))?
    }
}

/// TCP keepalive on a long-lived proxied connection, so a peer that
/// vanished is found without an idle timeout.
pub(crate) fn keepalive(tcp: &TcpStream) {
    let probes = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&probes);
}

async fn handshake<S>(stream: S, h2: bool, upgrades: bool) -> Result<Sender, BoxError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    let io = TokioIo::new(stream);
    if h2 {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(io)
            .await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!("upstream connection ended: {error}");
            }
        });
        return Ok(Sender::H2(sender));
    }
    let (sender, connection) = http1::handshake(io).await?;
    if !upgrades {
        return Ok(Sender::H1(sender, Io::driven(connection)));
    }
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!("upstream connection ended: {error}");
        }
    });
    Ok(Sender::H1(sender, Io::elsewhere()))
}
