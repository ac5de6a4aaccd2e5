//! Listeners: accept connections and serve HTTP/1.1 and cleartext HTTP/2
//! (prior knowledge) on the same socket, or TLS with HTTP/2 or HTTP/1.1 by
//! ALPN. Each holds its clients to its limits: connections in all and per
//! client address, header and idle timeouts ([`connection`]), and the edge
//! rules for request heads ([`crate::edge`]). The set of listeners follows
//! the configuration across reloads: new addresses are opened, removed ones
//! stop accepting while their open connections finish.

pub mod connection;
mod limits;
pub(crate) mod peek;
pub mod proxy_protocol;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::config::ListenerConfig;
use crate::edge::{ConnectionInfo, Edge};
use crate::gateway::Gateway;
use crate::tcp::{Accepted, TcpSettings};
use crate::udp::UdpSettings;
use limits::ConnectionCounts;
use sluice_filter::metrics::labels;

/// Connection limits and timeouts of one listener.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Most open connections.
    pub max_connections: usize,
    /// Most open connections from one client address.
    pub max_connections_per_client: usize,
    /// Longest time to send a whole request head, or to finish a TLS handshake.
    pub header_timeout: Duration,
    /// Longest time a connection stays open with no request in flight.
    pub idle_timeout: Duration,
    /// Longest pause while sending a request body.
    pub body_timeout: Duration,
    /// Longest a client may leave a response unread.
    pub send_timeout: Duration,
}

/// Everything one listener serves with; replaced whole by reloads, and
/// read by each connection when it is accepted.
pub struct ListenerSettings {
    tls: Option<TlsAcceptor>,
    edge: Arc<Edge>,
    limits: ConnectionLimits,
    builder: auto::Builder<TokioExecutor>,
    /// Load balancers whose PROXY protocol headers name the client; any
    /// other address is refused.
    proxy_protocol: Option<Vec<ipnet::IpNet>>,
    /// Proxy TCP instead of serving HTTP.
    tcp: Option<Arc<TcpSettings>>,
    /// Proxy UDP: the address is a UDP socket.
    udp: Option<Arc<UdpSettings>>,
}

impl ListenerSettings {
    /// Settings from a listener's configuration, with its certificate already read.
    pub fn new(config: &ListenerConfig, tls: Option<TlsAcceptor>) -> ListenerSettings {
        let edge = config.edge();
        let limits = ConnectionLimits {
            max_connections: config.max_connections,
            max_connections_per_client: config.max_connections_per_client,
            header_timeout: config.header_timeout,
            idle_timeout: config.idle_timeout,
            body_timeout: config.body_timeout,
            send_timeout: config.send_timeout,
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // hyper's own header timer also runs while a connection waits idle,
        // so the connection's watcher keeps both timeouts instead. hyper
        // still bounds what it buffers: a head past its buffer is a 431.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(edge.max_header_bytes.max(8 << 10));
        if edge.max_headers != 100 {
            // Past 100, hyper parses headers on the heap; keep its default otherwise.
            builder.http1().max_headers(edge.max_headers);
        }
        builder
            .http2()
            .timer(TokioTimer::new())
            // HPACK counts 32 bytes of overhead per field.
            .max_header_list_size((edge.max_header_bytes + 32 * edge.max_headers) as u32);
        ListenerSettings {
            tls,
            edge: Arc::new(edge),
            limits,
            builder,
            proxy_protocol: config.proxy_protocol.as_ref().map(|p| p.trusted.clone()),
            tcp: (config.tcp.as_ref()).map(|tcp| {
                let tcp = TcpSettings::new(tcp.get_ref(), config.address, config.tls.is_some());
                Arc::new(tcp)
            }),
            udp: (config.udp.as_ref()).map(|udp| Arc::new(UdpSettings::new(udp.get_ref()))),
        }
    }
}

/// The listeners a configuration wants: each address and its settings.
pub type Wanted = Vec<(SocketAddr, Arc<ListenerSettings>)>;

/// A bound socket: a TCP listener, or a UDP listener's socket.
pub enum Socket {
    /// HTTP and TCP listeners.
    Tcp(TcpListener),
    /// UDP listeners.
    Udp(UdpSocket),
}

impl Socket {
    fn bind(addr: &SocketAddr, udp: bool) -> std::io::Result<Socket> {
        match udp {
            false => {
                let listener = std::net::TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                Ok(Socket::Tcp(TcpListener::from_std(listener)?))
            }
            true => {
                let socket = std::net::UdpSocket::bind(addr)?;
                socket.set_nonblocking(true)?;
                Ok(Socket::Udp(UdpSocket::from_std(socket)?))
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Socket::Tcp(listener) => listener.local_addr(),
            Socket::Udp(socket) => socket.local_addr(),
        }
    }
}

/// One configured address: bound, and accepting once serving has started.
struct Slot {
    local: SocketAddr,
    bound: Option<Socket>,
    accepting: Option<JoinHandle<()>>,
    /// Replaced by reloads, so certificates rotate and limits change
    /// without closing the socket.
    settings: Arc<ArcSwap<ListenerSettings>>,
    counts: Arc<ConnectionCounts>,
}

/// The client listeners, in configuration order, under one lock.
pub struct Listeners {
    gateway: Arc<ArcSwap<Gateway>>,
    inner: Mutex<Inner>,
}

/// A configured address and whether it is UDP's: one socket each (several
/// may ask for port 0, but each configured address is one socket; TCP and
/// UDP may share a port, as DNS does).
pub type Key = (SocketAddr, bool);

fn key(addr: &SocketAddr, settings: &ListenerSettings) -> Key {
    (*addr, settings.udp.is_some())
}

struct Inner {
    slots: Vec<(Key, Slot)>,
    serving: bool,
    /// Tells every connection to finish up; taken by `stop`.
    drain: Option<watch::Sender<bool>>,
}

impl Inner {
    fn has(&self, key: &Key) -> bool {
        self.slots.iter().any(|(k, _)| k == key)
    }

    /// Start `slot`'s accept loop, unless it runs already or serving stopped for good.
    fn accept(&self, slot: &mut Slot, gateway: &Arc<ArcSwap<Gateway>>) {
        let (Some(drain), Some(socket)) = (&self.drain, slot.bound.take()) else {
            return;
        };
        slot.accepting = Some(match socket {
            Socket::Tcp(listener) => tokio::spawn(accept_loop(
                listener,
                slot.settings.clone(),
                slot.counts.clone(),
                gateway.clone(),
                drain.subscribe(),
            )),
            Socket::Udp(socket) => {
                let settings = slot.settings.clone();
                tokio::spawn(crate::udp::serve(
                    socket,
                    slot.local.to_string().into(),
                    move || settings.load().udp.clone(),
                    gateway.clone(),
                    drain.subscribe(),
                ))
            }
        });
    }
}

/// What is left to wait for once listeners stop accepting.
pub struct Draining(watch::Sender<bool>);

impl Draining {
    /// Connections still open.
    pub fn count(&self) -> usize {
        self.0.receiver_count()
    }

    /// Ask every connection to finish its requests and close, and wait until all have.
    pub async fn shutdown(self) {
        let _ = self.0.send(true);
        self.0.closed().await;
    }
}

impl Listeners {
    /// No listeners yet; those added will serve the gateway `gateway` holds.
    pub fn new(gateway: Arc<ArcSwap<Gateway>>) -> Listeners {
        Listeners {
            gateway,
            inner: Mutex::new(Inner {
                slots: Vec::new(),
                serving: false,
                drain: Some(watch::channel(false).0),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("listeners lock")
    }

    /// Bind the addresses in `wanted` that are not open yet. Nothing changes
    /// until [`Listeners::commit`], so a failed reload leaves them as they were.
    pub fn open(&self, wanted: &Wanted) -> Result<Vec<(Key, Socket)>, String> {
        let inner = self.lock();
        let mut opened: Vec<(Key, Socket)> = Vec::new();
        for (addr, settings) in wanted {
            let key = key(addr, settings);
            if inner.has(&key) || opened.iter().any(|(k, _)| *k == key) {
                continue;
            }
            let socket =
                Socket::bind(addr, key.1).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            opened.push((key, socket));
        }
        Ok(opened)
    }

    /// Make `wanted` the listeners: add those `opened`, give every one its
    /// (possibly new) settings, and stop accepting on the others (their
    /// connections finish on their own).
    pub fn commit(&self, wanted: &Wanted, mut opened: Vec<(Key, Socket)>) {
        let mut inner = self.lock();
        let mut old = std::mem::take(&mut inner.slots);
        for (addr, settings) in wanted {
            let key = key(addr, settings);
            if inner.has(&key) {
                continue;
            }
            let slot = match old.iter().position(|(k, _)| *k == key) {
                Some(i) => {
                    let (_, slot) = old.swap_remove(i);
                    slot.settings.store(settings.clone());
                    slot
                }
                None => {
                    let i = opened
                        .iter()
                        .position(|(k, _)| *k == key)
                        .expect("`open` bound every new address");
                    let (_, listener) = opened.swap_remove(i);
                    let local = listener.local_addr().unwrap_or(*addr);
                    let scheme = match (&settings.tcp, &settings.udp, &settings.tls) {
                        (Some(_), _, _) => "tcp",
                        (_, Some(_), _) => "udp",
                        (None, None, Some(_)) => "https",
                        (None, None, None) => "http",
                    };
                    tracing::info!("listening on {scheme}://{local}");
                    let mut slot = Slot {
                        local,
                        bound: Some(listener),
                        accepting: None,
                        settings: Arc::new(ArcSwap::new(settings.clone())),
                        counts: Arc::default(),
                    };
                    if inner.serving {
                        inner.accept(&mut slot, &self.gateway);
                    }
                    slot
                }
            };
            inner.slots.push((key, slot));
        }
        for (_, mut slot) in old {
            tracing::info!("no longer listening on {}", slot.local);
            if let Some(task) = slot.accepting.take() {
                task.abort();
            }
        }
    }

    /// Start accepting on every listener, now and on those added later.
    pub fn start(&self) {
        let mut inner = self.lock();
        inner.serving = true;
        let mut slots = std::mem::take(&mut inner.slots);
        for (_, slot) in &mut slots {
            inner.accept(slot, &self.gateway);
        }
        inner.slots = slots;
    }

    /// Stop accepting everywhere, for good, and hand back what drains the
    /// open connections.
    pub async fn stop(&self) -> Draining {
        let (tasks, drain) = {
            let mut inner = self.lock();
            inner.serving = false;
            let tasks: Vec<JoinHandle<()>> = inner
                .slots
                .iter_mut()
                .filter_map(|(_, slot)| slot.accepting.take())
                .collect();
            (tasks, inner.drain.take().expect("stopped once"))
        };
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        Draining(drain)
    }

    /// Stop accepting at once (serving was dropped, not shut down).
    pub fn abort(&self) {
        let mut inner = self.lock();
        inner.serving = false;
        for (_, slot) in &mut inner.slots {
            if let Some(task) = slot.accepting.take() {
                task.abort();
            }
        }
    }

    /// The addresses bound, port 0 resolved, in configuration order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.lock().slots.iter().map(|(_, s)| s.local).collect()
    }
}

async fn accept_loop(
    listener: TcpListener,
    settings: Arc<ArcSwap<ListenerSettings>>,
    counts: Arc<ConnectionCounts>,
    gateway: Arc<ArcSwap<Gateway>>,
    drain: watch::Receiver<bool>,
) {
    let local = listener
        .local_addr()
        .map_or_else(|_| String::new(), |a| a.to_string());
    // Shared with each connection (a TCP one keeps it for its metrics and log line).
    let local: Arc<str> = local.into();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off rather than spin.
                sluice_filter::log_throttled!(
                    warn,
                    ("accept", &local),
                    "accept failed on {local}: {error}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let settings = settings.load_full();
        let limits = &settings.limits;
        let counted = match counts.admit(
            peer.ip(),
            limits.max_connections,
            limits.max_connections_per_client,
        ) {
            Ok(counted) => counted,
            Err(full) => {
                refuse(&gateway, &local, peer, full.reason());
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let open_from_client = counts.open_from(peer.ip());
        let gateway = gateway.clone();
        let drain = drain.clone();
        let local = local.clone();
        tokio::spawn(async move {
            let _counted = counted;
            let mut stream = stream;
            let limits = &settings.limits;
            let client = match &settings.proxy_protocol {
                None => peer,
                Some(trusted) => match from_balancer(&mut stream, peer, trusted, limits).await {
                    Ok(client) => client,
                    Err(reason) => return refuse(&gateway, &local, peer, reason),
                },
            };
            if let Some(tcp) = &settings.tcp {
                let accepted = Accepted {
                    local: stream.local_addr().unwrap_or(peer),
                    stream,
                    client,
                    listener: local,
                    open_from_client,
                };
                let tls = settings.tls.clone();
                crate::tcp::serve(
                    accepted,
                    tcp.clone(),
                    tls,
                    limits.header_timeout,
                    gateway,
                    drain,
                )
                .await;
                return;
            }
            let mut info = ConnectionInfo {
                client_ip: client.ip(),
                client_port: client.port(),
                local: stream.local_addr().ok(),
                secure: false,
                edge: settings.edge.clone(),
                body_timeout: limits.body_timeout,
                idle_timeout: limits.idle_timeout,
            };
            let Some(acceptor) = &settings.tls else {
                connection::serve(stream, false, info, settings, gateway, drain).await;
                return;
            };
            match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    info.secure = true;
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    connection::serve(stream, h2, info, settings.clone(), gateway, drain).await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, "TLS handshake failed: {error}"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Count and (at a bounded rate) log a connection closed on arrival for `reason`.
fn refuse(gateway: &ArcSwap<Gateway>, local: &str, peer: SocketAddr, reason: &'static str) {
    (gateway.load().metrics().connections_refused)
        .get_or_create(&labels([("listener", local), ("reason", reason)]))
        .inc();
    sluice_filter::log_throttled!(
        warn,
        ("connection refused", local, reason),
        client = %peer.ip(),
        "connection refused on {local}: {reason}"
    );
}

/// The client a trusted load balancer's PROXY protocol header names (the
/// balancer itself for a header that names none); the reason otherwise.
async fn from_balancer(
    stream: &mut tokio::net::TcpStream,
    peer: SocketAddr,
    trusted: &[ipnet::IpNet],
    limits: &ConnectionLimits,
) -> Result<SocketAddr, &'static str> {
    if !trusted.iter().any(|net| net.contains(&peer.ip())) {
        return Err("proxy_protocol_untrusted");
    }
    match proxy_protocol::read(stream, limits.header_timeout).await {
        Ok(client) => Ok(client.unwrap_or(peer)),
        Err(error) => Err(error.reason()),
    }
}
