//! Listeners: accept connections and serve HTTP/1.1 and cleartext HTTP/2
//! (prior knowledge) on the same socket.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::filter::FilterEngine;
use crate::proxy::{Gateway, Shared};

/// A gateway with its listeners bound, not yet accepting.
pub struct Server {
    gateway: Arc<Gateway>,
    shared: Shared,
    listeners: Vec<TcpListener>,
    admin: Option<TcpListener>,
}

impl Server {
    /// Load `config` (plugins included) and bind its listeners.
    pub async fn bind(config: &Config) -> anyhow::Result<Server> {
        let engine = FilterEngine::new()?;
        let shared = Shared::default();
        let gateway = Arc::new(Gateway::build(config, &engine, &shared).await?);
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            let socket = TcpListener::bind(listener.address)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", listener.address))?;
            listeners.push(socket);
        }
        anyhow::ensure!(
            !listeners.is_empty(),
            "{}: no [[listeners]] configured",
            config.source.path.display()
        );
        let admin =
            match &config.admin {
                Some(admin) => Some(TcpListener::bind(admin.address).await.map_err(|e| {
                    anyhow::anyhow!("cannot listen on {} (admin): {e}", admin.address)
                })?),
                None => None,
            };
        Ok(Server {
            gateway,
            shared,
            listeners,
            admin,
        })
    }

    /// Load the configuration file at `path` and bind.
    pub async fn from_file(path: &Path) -> anyhow::Result<Server> {
        Self::bind(&Config::load(path)?).await
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The admin listener's address, if one is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
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
        let graceful = Arc::new(GracefulShutdown::new());
        let mut accepting = JoinSet::new();
        for listener in self.listeners {
            accepting.spawn(accept_loop(
                listener,
                self.gateway.clone(),
                graceful.clone(),
            ));
        }
        let admin = self.admin.map(|listener| {
            tokio::spawn(crate::admin::serve(listener, self.shared.metrics.clone()))
        });
        shutdown.await;
        accepting.shutdown().await;
        if let Some(admin) = admin {
            admin.abort();
        }
        let graceful = Arc::into_inner(graceful).expect("the accept loops are gone");
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

async fn accept_loop(
    listener: TcpListener,
    gateway: Arc<Gateway>,
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
        let gateway = gateway.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(gateway.handle(request, peer.ip()).await) }
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%peer, "connection ended: {error}");
            }
        });
    }
}
