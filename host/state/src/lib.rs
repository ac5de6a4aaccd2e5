//! State the gateway keeps outside plugin instances (and outside one
//! configuration, so it survives instance recycling and reloads):
//! rate-limit token buckets, plugins' key-value entries and counters, and
//! shared cached responses.
//!
//! Each lives in this process ([`MemoryStore`], the default) or in Redis
//! ([`RedisStore`]), where every gateway of a fleet sees the same counts.
//! Redis is reached through a circuit breaker: when it is down or slow,
//! calls fail at once with [`StoreError::Unavailable`] and each use applies
//! its [`Fallback`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

mod breaker;
pub mod buckets;
pub mod config;
mod memory;
pub mod metrics;
mod redis;

pub use buckets::Admission;
pub use config::{Fallback, Scope, StateConfig};
pub use memory::MemoryStore;
pub use metrics::StateMetrics;
pub use redis::{ConnectError, RedisStore};

/// Why the store did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// It could not answer (a shared store that is down, say).
    #[error("state store: {0}")]
    Unavailable(String),
    /// The key holds another kind of value (a counter asked of bytes).
    #[error("{0}")]
    WrongType(String),
}

/// Where state is kept. Keys arrive namespaced (`plugin\0key`).
#[async_trait::async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// The value of `key`, unless missing or expired.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError>;
    /// Set `key`, expiring after `ttl` if given.
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), StoreError>;
    /// Remove `key`.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Add `delta` to counter `key`; a new counter starts at 0 and expires after `ttl`.
    async fn increment(
        &self,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, StoreError>;
    /// Take `cost` tokens from bucket `key` (`capacity` tokens refilled over `window`).
    async fn take(
        &self,
        key: &str,
        cost: u32,
        capacity: u32,
        window: Duration,
    ) -> Result<Admission, StoreError>;
}

/// The stores a gateway has: its own, and the fleet's when `[state]`
/// names one.
#[derive(Clone)]
pub struct Stores {
    /// This process's.
    pub local: Arc<MemoryStore>,
    /// Redis, shared by every gateway configured with it.
    pub cluster: Option<Arc<RedisStore>>,
    /// What a plugin without a `state` of its own uses.
    pub default_scope: Scope,
    /// What rate limits do while the cluster store is unavailable, unless
    /// the plugin says otherwise.
    pub fallback: Fallback,
    /// The largest value a plugin may store.
    pub max_value: usize,
}

impl Stores {
    /// This process's store alone.
    pub fn local() -> Stores {
        Stores {
            local: Arc::new(MemoryStore::default()),
            cluster: None,
            default_scope: Scope::Local,
            fallback: Fallback::Local,
            max_value: config::DEFAULT_MAX_VALUE,
        }
    }

    /// The store for `scope` (the default scope when none is given): the
    /// cluster's only when one is configured.
    pub fn pick(&self, scope: Option<Scope>) -> Arc<dyn StateStore> {
        match (scope.unwrap_or(self.default_scope), &self.cluster) {
            (Scope::Cluster, Some(cluster)) => cluster.clone(),
            _ => self.local.clone(),
        }
    }
}
