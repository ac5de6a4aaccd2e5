//! TCP listeners, layer 4: each connection is routed (by its TLS
//! ClientHello's server name and ALPN, [`hello`], when routes are
//! configured), put to the listener's connection filters ([`policy`]),
//! joined to a target of the chosen upstream (the same balancing, health
//! and outlier detection as HTTP), and its bytes copied both ways until
//! either side closes, it idles out, its time is up, or the gateway has
//! been shutting down for the listener's drain timeout. TLS is passed
//! through untouched, or terminated here when the listener has a
//! certificate.

pub mod hello;
pub mod policy;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::access_log::Connection;
use crate::config::{TcpConfig, TcpRoute};
use crate::gateway::Gateway;
use crate::upstream::{ByteStream, UpstreamError, keepalive, now_ms};
use hello::{Hello, HelloError};
use policy::Refused;

/// What a TCP listener does with its connections; replaced by reloads.
pub struct TcpSettings {
    /// The listener's address as configured: its connection filters' key.
    address: SocketAddr,
    upstream: String,
    routes: Vec<TcpRoute>,
    hello_timeout: Duration,
    /// Peek at the ClientHello before connecting.
    read_hello: bool,
    idle_timeout: Option<Duration>,
    max_duration: Option<Duration>,
    drain_timeout: Duration,
}

impl TcpSettings {
    /// From the `[listeners.tcp]` of the listener at `address`, which
    /// terminates TLS or not (`tls`).
    pub fn new(config: &TcpConfig, address: SocketAddr, tls: bool) -> TcpSettings {
        let lower = |names: &[String]| names.iter().map(|n| n.to_ascii_lowercase()).collect();
        TcpSettings {
            address,
            read_hello: (config.read_hello).unwrap_or(!config.routes.is_empty() || tls),
            upstream: config.upstream.clone(),
            routes: (config.routes.iter())
                .map(|r| TcpRoute {
                    sni: lower(&r.sni),
                    alpn: r.alpn.clone(),
                    upstream: r.upstream.clone(),
                })
                .collect(),
            hello_timeout: config.hello_timeout,
            idle_timeout: config.idle_timeout,
            max_duration: config.max_duration,
            drain_timeout: config.drain_timeout,
        }
    }

    /// The upstream for a connection whose ClientHello said `hello`.
    fn route(&self, hello: Option<&Hello>) -> &str {
        let Some(hello) = hello else {
            return &self.upstream;
        };
        let takes = |route: &TcpRoute| {
            let sni = route.sni.is_empty()
                || hello.sni.as_deref().is_some_and(|sni| {
                    (route.sni.iter()).any(|name| match name.strip_prefix("*.") {
                        Some(parent) => sni
                            .strip_suffix(parent)
                            .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                        None => name == sni,
                    })
                });
            let alpn = route.alpn.is_empty() || route.alpn.iter().any(|p| hello.alpn.contains(p));
            sni && alpn
        };
        (self.routes.iter())
            .find(|route| takes(route))
            .map_or(&self.upstream, |route| &route.upstream)
    }
}

/// One accepted connection and where it came from.
pub struct Accepted {
    /// The client's socket.
    pub stream: TcpStream,
    /// The client (as a PROXY protocol header named it, if one did).
    pub client: SocketAddr,
    /// The address it reached.
    pub local: SocketAddr,
    /// The listener's address, for metrics and logs.
    pub listener: Arc<str>,
    /// Connections open on the listener from the same socket address, this one included.
    pub open_from_client: u32,
}

/// Each direction's copy buffer.
const BUFFER: usize = 64 << 10;

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Both sides closed, or one did and the other finished.
    Closed,
    /// A side reset or failed mid-stream.
    Reset,
    /// Quiet both ways for the idle timeout.
    IdleTimeout,
    /// Open for the maximum duration.
    MaxDuration,
    /// The gateway shut down.
    Drained,
    /// No ClientHello in time.
    HelloTimeout,
    /// The TLS handshake failed.
    Handshake,
    /// No target could be reached.
    Unreachable,
    /// Every target is unhealthy or ejected.
    NoHealthy,
    /// A connection filter closed it.
    Denied,
    /// A connection filter failed (and does not fail open).
    FilterFailed,
}

impl Ended {
    fn as_str(self) -> &'static str {
        match self {
            Ended::Closed => "closed",
            Ended::Reset => "reset",
            Ended::IdleTimeout => "idle_timeout",
            Ended::MaxDuration => "max_duration",
            Ended::Drained => "drained",
            Ended::HelloTimeout => "hello_timeout",
            Ended::Handshake => "tls_handshake",
            Ended::Unreachable => "upstream_unreachable",
            Ended::NoHealthy => "no_healthy_upstream",
            Ended::Denied => "denied",
            Ended::FilterFailed => "filter_failed",
        }
    }
}

/// Serve one connection to its end; `tls` terminates TLS first, within
/// `handshake_timeout`.
pub async fn serve(
    accepted: Accepted,
    settings: Arc<TcpSettings>,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    gateway: Arc<ArcSwap<Gateway>>,
    drain: watch::Receiver<bool>,
) {
    let started = Instant::now();
    keepalive(&accepted.stream);
    // Borrowed from the settings unless a connection filter routes elsewhere.
    let mut upstream = Cow::Borrowed(settings.upstream.as_str());
    let mut target = None;
    let (client_bytes, target_bytes) = (Arc::new(Meter::new()), Arc::new(Meter::new()));
    let ended = async {
        let hello = match settings.read_hello {
            false => None,
            true => match hello::peek(&accepted.stream, settings.hello_timeout).await {
                Ok(hello) => hello,
                Err(HelloError::Timeout) => return Ended::HelloTimeout,
                Err(HelloError::Closed) => return Ended::Closed,
            },
        };
        upstream = Cow::Borrowed(settings.route(hello.as_ref()));
        let filters = gateway
            .load()
            .connection_filters(&settings.address)
            .cloned();
        if let Some(filters) = filters {
            let gateway = gateway.load_full();
            let (server_name, alpn) = hello.map_or((None, Vec::new()), |h| (h.sni, h.alpn));
            let mut conn = sluice_filter::Connection {
                id: gateway.next_id(),
                client: accepted.client,
                listener: settings.address.to_string(),
                server_name,
                alpn,
                open_from_client: accepted.open_from_client,
                upstream: std::mem::take(&mut upstream).into_owned(),
            };
            let known = |name: &str| gateway.l4_upstream(name).is_some();
            let admitted = filters.admit(&mut conn, known).await;
            upstream = Cow::Owned(conn.upstream);
            if let Err(refused) = admitted {
                return match refused {
                    Refused::Denied => Ended::Denied,
                    Refused::Failed => Ended::FilterFailed,
                };
            }
        }
        let client: Box<dyn ByteStream> = match &tls {
            None => Box::new(accepted.stream),
            Some(acceptor) => {
                let handshake = acceptor.accept(accepted.stream);
                match tokio::time::timeout(handshake_timeout, handshake).await {
                    Ok(Ok(stream)) => Box::new(stream),
                    _ => return Ended::Handshake,
                }
            }
        };
        let Some(chosen) = gateway.load().l4_upstream(&upstream) else {
            return Ended::NoHealthy;
        };
        let joined = match chosen.open_stream(accepted.client, accepted.local).await {
            Ok(joined) => joined,
            Err(error) => {
                sluice_filter::log_throttled!(
                    warn,
                    ("tcp upstream", &*accepted.listener, &upstream),
                    listener = &*accepted.listener,
                    "{error}"
                );
                return match error {
                    UpstreamError::NoHealthy { .. } => Ended::NoHealthy,
                    _ => Ended::Unreachable,
                };
            }
        };
        target = Some(joined.target);
        let mut client = Metered::new(client, client_bytes.clone());
        let mut to_target = Metered::new(joined.stream, target_bytes.clone());
        // 64 KiB each way (tokio's default is 8): bulk transfers take an
        // eighth of the reads and writes.
        let copying =
            tokio::io::copy_bidirectional_with_sizes(&mut client, &mut to_target, BUFFER, BUFFER);
        tokio::select! {
            copied = copying => match copied {
                Ok(_) => Ended::Closed,
                Err(_) => Ended::Reset,
            },
            () = idle(settings.idle_timeout, &client_bytes, &target_bytes) => Ended::IdleTimeout,
            () = sleep_for(settings.max_duration) => Ended::MaxDuration,
            () = drained(drain, settings.drain_timeout) => Ended::Drained,
        }
    }
    .await;
    let gateway = gateway.load();
    let listener = &*accepted.listener;
    let (received, sent) = (client_bytes.bytes(), target_bytes.bytes());
    let upstream = &*upstream;
    (gateway.metrics()).tcp_connection(listener, upstream, ended.as_str(), received, sent);
    if let Some(log) = gateway.access_log() {
        log.connection(Connection {
            time: SystemTime::now() - started.elapsed(),
            listener: accepted.listener.clone(),
            client: accepted.client,
            upstream: upstream.to_owned(),
            target,
            bytes_in: received,
            bytes_out: sent,
            duration: started.elapsed(),
            ended: ended.as_str(),
        });
    }
    tracing::info!(
        target: "sluice::tcp",
        listener,
        client = %accepted.client,
        upstream,
        target = target.map(|t| t.to_string()).unwrap_or_default(),
        bytes_from_client = received,
        bytes_to_client = sent,
        duration_ms = started.elapsed().as_millis() as u64,
        ended = ended.as_str(),
        "tcp connection"
    );
}

/// Ends once both sides have been quiet for `limit` (never without one).
async fn idle(limit: Option<Duration>, a: &Meter, b: &Meter) {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    loop {
        let last = a.last().max(b.last());
        let quiet = Duration::from_millis(now_ms().saturating_sub(last));
        if quiet >= limit {
            return;
        }
        tokio::time::sleep(limit - quiet).await;
    }
}

async fn sleep_for(limit: Option<Duration>) {
    match limit {
        Some(limit) => tokio::time::sleep(limit).await,
        None => std::future::pending().await,
    }
}

/// Ends `bound` after the gateway asks its connections to finish: until
/// then a connection goes on, and may end on its own.
async fn drained(mut drain: watch::Receiver<bool>, bound: Duration) {
    if drain.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(bound).await;
}

/// Bytes read from one side, and when it last moved.
struct Meter {
    bytes: AtomicU64,
    /// [`now_ms`] when it last moved.
    last: AtomicU64,
}

impl Meter {
    fn new() -> Meter {
        Meter {
            bytes: AtomicU64::new(0),
            last: AtomicU64::new(now_ms()),
        }
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn last(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }
}

/// A stream whose reads are counted in a [`Meter`].
struct Metered<S> {
    inner: S,
    meter: Arc<Meter>,
}

impl<S> Metered<S> {
    fn new(inner: S, meter: Arc<Meter>) -> Metered<S> {
        Metered { inner, meter }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.meter.bytes.fetch_add(read as u64, Ordering::Relaxed);
            self.meter.last.store(now_ms(), Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_server_name_and_alpn() {
        let config: TcpConfig = toml::from_str(
            r#"
            upstream = "default"
            routes = [
              { sni = ["db.example.com"], alpn = ["postgresql"], upstream = "pg" },
              { sni = ["*.example.com"], upstream = "wild" },
              { alpn = ["h2"], upstream = "web" },
            ]
            "#,
        )
        .unwrap();
        let settings = TcpSettings::new(&config, "127.0.0.1:0".parse().unwrap(), false);
        let hello = |sni: Option<&str>, alpn: &[&str]| Hello {
            sni: sni.map(str::to_owned),
            alpn: alpn.iter().map(|p| p.to_string()).collect(),
        };
        let cases = [
            (Some(hello(Some("db.example.com"), &["postgresql"])), "pg"),
            (Some(hello(Some("db.example.com"), &[])), "wild"),
            (Some(hello(Some("a.b.example.com"), &[])), "wild"),
            (Some(hello(Some("example.com"), &[])), "default"),
            (Some(hello(Some("badexample.com"), &["h2"])), "web"),
            (Some(hello(None, &[])), "default"),
            (None, "default"),
        ];
        for (hello, expected) in cases {
            assert_eq!(settings.route(hello.as_ref()), expected, "{hello:?}");
        }
    }
}
