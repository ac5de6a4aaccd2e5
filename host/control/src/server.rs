//! The gateway as a whole: its configuration loaded, its listeners bound,
//! serving until told to stop.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::{ConfigHook, Control};

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
        let running = Running {
            control: self.control.clone(),
            background: self.control.clone().start_serving(),
        };
        shutdown.await;
        for task in &running.background {
            task.abort();
        }
        let draining = self.control.listeners().stop().await;
        let open = draining.count();
        tracing::info!("draining {open} connections");
        if tokio::time::timeout(drain, draining.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("drain timed out after {drain:?}; closing the rest");
        }
    }
}

/// What serving started; if the serving future is dropped rather than shut
/// down, the listeners and background tasks stop with it.
struct Running {
    control: Arc<Control>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
        self.control.listeners().abort();
    }
}
