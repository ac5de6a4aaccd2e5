//! Listeners: accept connections and serve HTTP/1.1 and cleartext HTTP/2
//! (prior knowledge) on the same socket. The set of listeners follows the
//! configuration across reloads: new addresses are opened, removed ones stop
//! accepting while their open connections finish.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::control::{ConfigHook, Control};
use crate::proxy::Gateway;

/// A gateway with its listeners bound, not yet accepting.
pub struct Server {
    control: Arc<Control>,
}

impl Server {
    /// Load `config` (plugins included) and bind its listeners.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        Self::bind_with_hook(config, None).await
    }

    /// Like [`Server::bind`], with `hook` applied to this configuration and
    /// every one reloaded later (the demo points upstreams at itself this way).
    pub async fn bind_with_hook(
        config: Config,
        hook: Option<ConfigHook>,
    ) -> anyhow::Result<Server> {
        let control = Control::start(config, hook).await?;
        Ok(Server { control })
    }

    /// Load the configuration file at `path` and bind.
    pub async fn from_file(path: &Path) -> anyhow::Result<Server> {
        Self::bind(Config::load(path)?).await
    }

    /// The addresses actually bound (port 0 resolved), in configuration order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.control.listeners().local_addrs()
    }

    /// The admin listener's address, if one is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.control.admin_addr()
    }

    /// Reloads, uploads, rollbacks: what the admin API and `SIGHUP` use.
    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    /// Accept and serve until the task is dropped.
    pub async fn serve(self) {
        self.serve_until(std::future::pending(), Duration::MAX)
            .await
    }

    /// Accept and serve until `shutdown` completes; then stop accepting, let
    /// connections finish their requests (idle ones close at once), and
    /// return when all are done or `drain` has passed.
    pub async fn serve_until(self, shutdown: impl Future<Output = ()>, drain: Duration) {
        let background = self.control.clone().start_serving();
        shutdown.await;
        for task in background {
            task.abort();
        }
        let graceful = self.control.listeners().stop().await;
        let open = graceful.count();
        tracing::info!("draining {open} connections");
        if tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("drain timed out after {drain:?}; closing the rest");
        }
    }
}

/// How long a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The listeners a configuration wants: each address, and its TLS acceptor if any.
pub(crate) type Wanted = Vec<(SocketAddr, Option<Arc<TlsAcceptor>>)>;

/// One configured address: bound, and accepting once serving has started.
struct Slot {
    local: SocketAddr,
    bound: Option<TcpListener>,
    accepting: Option<JoinHandle<()>>,
    /// Replaced by reloads, so certificates rotate without closing the socket.
    tls: Arc<ArcSwapOption<TlsAcceptor>>,
}

/// The client listeners, in configuration order, under one lock.
pub(crate) struct Listeners {
    gateway: Arc<ArcSwap<Gateway>>,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Keyed by configured address (several may ask for port 0, but each
    /// configured address is one socket).
    slots: Vec<(SocketAddr, Slot)>,
    serving: bool,
    /// Watches every connection; taken by `stop` to drain them.
    graceful: Option<Arc<GracefulShutdown>>,
}

impl Inner {
    fn has(&self, addr: &SocketAddr) -> bool {
        self.slots.iter().any(|(a, _)| a == addr)
    }

    /// Start `slot`'s accept loop, unless it runs already or serving stopped for good.
    fn accept(&self, slot: &mut Slot, gateway: &Arc<ArcSwap<Gateway>>) {
        let (Some(graceful), Some(listener)) = (&self.graceful, slot.bound.take()) else {
            return;
        };
        slot.accepting = Some(tokio::spawn(accept_loop(
            listener,
            slot.tls.clone(),
            gateway.clone(),
            graceful.clone(),
        )));
    }
}

impl Listeners {
    pub(crate) fn new(gateway: Arc<ArcSwap<Gateway>>) -> Listeners {
        Listeners {
            gateway,
            inner: Mutex::new(Inner {
                slots: Vec::new(),
                serving: false,
                graceful: Some(Arc::new(GracefulShutdown::new())),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("listeners lock")
    }

    /// Bind the addresses in `wanted` that are not open yet. Nothing changes
    /// until [`Listeners::commit`], so a failed reload leaves them as they were.
    pub(crate) fn open(&self, wanted: &Wanted) -> Result<Vec<(SocketAddr, TcpListener)>, String> {
        let inner = self.lock();
        let mut opened = Vec::new();
        for (addr, _) in wanted {
            if inner.has(addr) || opened.iter().any(|(a, _)| a == addr) {
                continue;
            }
            let listener = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(TcpListener::from_std)
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            opened.push((*addr, listener));
        }
        Ok(opened)
    }

    /// Make `wanted` the listeners: add those `opened`, give every one its
    /// (possibly new) certificate, and stop accepting on the others (their
    /// connections finish on their own).
    pub(crate) fn commit(&self, wanted: &Wanted, mut opened: Vec<(SocketAddr, TcpListener)>) {
        let mut inner = self.lock();
        let mut old = std::mem::take(&mut inner.slots);
        for (addr, tls) in wanted {
            if inner.has(addr) {
                continue;
            }
            let slot = match old.iter().position(|(a, _)| a == addr) {
                Some(i) => {
                    let (_, slot) = old.swap_remove(i);
                    slot.tls.store(tls.clone());
                    slot
                }
                None => {
                    let i = opened
                        .iter()
                        .position(|(a, _)| a == addr)
                        .expect("`open` bound every new address");
                    let (_, listener) = opened.swap_remove(i);
                    let local = listener.local_addr().unwrap_or(*addr);
                    let scheme = if tls.is_some() { "https" } else { "http" };
                    tracing::info!("listening on {scheme}://{local}");
                    let mut slot = Slot {
                        local,
                        bound: Some(listener),
                        accepting: None,
                        tls: Arc::new(ArcSwapOption::new(tls.clone())),
                    };
                    if inner.serving {
                        inner.accept(&mut slot, &self.gateway);
                    }
                    slot
                }
            };
            inner.slots.push((*addr, slot));
        }
        for (_, mut slot) in old {
            tracing::info!("no longer listening on {}", slot.local);
            if let Some(task) = slot.accepting.take() {
                task.abort();
            }
        }
    }

    /// Start accepting on every listener, now and on those added later.
    pub(crate) fn start(&self) {
        let mut inner = self.lock();
        inner.serving = true;
        let mut slots = std::mem::take(&mut inner.slots);
        for (_, slot) in &mut slots {
            inner.accept(slot, &self.gateway);
        }
        inner.slots = slots;
    }

    /// Stop accepting everywhere, for good, and hand back what watches the
    /// open connections.
    pub(crate) async fn stop(&self) -> GracefulShutdown {
        let (tasks, graceful) = {
            let mut inner = self.lock();
            inner.serving = false;
            let tasks: Vec<JoinHandle<()>> = inner
                .slots
                .iter_mut()
                .filter_map(|(_, slot)| slot.accepting.take())
                .collect();
            (tasks, inner.graceful.take().expect("stopped once"))
        };
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        Arc::into_inner(graceful).expect("the accept loops are gone")
    }

    pub(crate) fn local_addrs(&self) -> Vec<SocketAddr> {
        self.lock().slots.iter().map(|(_, s)| s.local).collect()
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ArcSwapOption<TlsAcceptor>>,
    gateway: Arc<ArcSwap<Gateway>>,
    graceful: Arc<GracefulShutdown>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // With a timer, HTTP/1 enforces a header read timeout (30 s), so a client
    // that trickles its request head cannot hold a connection forever.
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!("accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            gateway: gateway.clone(),
            builder: builder.clone(),
            watcher: graceful.watcher(),
            peer,
        };
        match tls.load_full() {
            None => {
                tokio::spawn(conn.serve(stream, false));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => conn.serve(stream, true).await,
                        Ok(Err(error)) => tracing::debug!(%peer, "TLS handshake failed: {error}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// What serving one accepted connection needs.
struct Conn {
    gateway: Arc<ArcSwap<Gateway>>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// Taken before the handshake, so shutdown also waits for connections mid-handshake.
    watcher: Watcher,
    peer: SocketAddr,
}

impl Conn {
    async fn serve<I>(self, io: I, secure: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            gateway,
            builder,
            watcher,
            peer,
        } = self;
        let service = service_fn(move |request| {
            // Each request runs on the gateway current when it arrived,
            // even if a reload swaps in another while it is in flight.
            let gateway = gateway.load_full();
            // Boxed: hyper keeps room for one request's future on every
            // connection for as long as it lives, and ours is a few KiB;
            // boxed, an idle connection holds a pointer instead.
            Box::pin(async move {
                Ok::<_, Infallible>(gateway.handle(request, peer.ip(), secure).await)
            })
        });
        let connection = builder.serve_connection(TokioIo::new(io), service);
        if let Err(error) = watcher.watch(connection).await {
            tracing::debug!(%peer, "connection ended: {error}");
        }
    }
}
