//! `[state]`: where the fleet's shared state lives, and what to do without it.

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

/// The largest value a plugin may store, unless `[state] max_value` says.
pub const DEFAULT_MAX_VALUE: usize = 1 << 20;

/// Where a plugin's state (its rate-limit buckets and key-value entries) lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// In this process: each gateway counts alone.
    Local,
    /// In the `[state]` store, shared by every gateway that names it.
    Cluster,
}

/// What a cluster rate limit does while its store cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Count in this process meanwhile (each gateway allows the whole limit).
    Local,
    /// Let requests through uncounted.
    Open,
    /// Refuse them with 503.
    Closed,
}

impl Fallback {
    /// Its name, for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Local => "local",
            Fallback::Open => "open",
            Fallback::Closed => "closed",
        }
    }
}

/// The shared store: Redis, reached with a short timeout through a circuit
/// breaker. Read at start.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `redis://host:port/db` or `rediss://host:port/db` (TLS).
    pub url: String,
    /// The ACL user, if not `default`.
    pub username: Option<String>,
    /// A file holding the password (its first line), kept out of the configuration.
    pub password_file: Option<PathBuf>,
    /// For `rediss://`: the CA that signed the server's certificate (PEM),
    /// instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// For `rediss://`: a client certificate and its key (PEM), when Redis asks for one.
    pub cert: Option<PathBuf>,
    /// See `cert`.
    pub key: Option<PathBuf>,
    /// The longest a round trip may take before it counts as a failure.
    #[serde(default = "defaults::timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Multiplexed connections; each pipelines the requests sent on it.
    #[serde(default = "defaults::connections")]
    pub connections: usize,
    /// What every key the gateway writes starts with.
    #[serde(default = "defaults::prefix")]
    pub prefix: String,
    /// Failed round trips in a row that open the breaker.
    #[serde(default = "defaults::breaker_failures")]
    pub breaker_failures: u32,
    /// How long the breaker stays open before one request probes Redis again.
    #[serde(default = "defaults::breaker_open", with = "humantime_serde")]
    pub breaker_open: Duration,
    /// What cluster rate limits do while Redis cannot answer.
    #[serde(default = "defaults::fallback")]
    pub fallback: Fallback,
    /// Where plugins' state lives unless a plugin says: `cluster` (the
    /// default once `[state]` is configured) or `local`.
    #[serde(default = "defaults::scope")]
    pub default: Scope,
    /// The largest value a plugin may store.
    #[serde(default = "defaults::max_value")]
    pub max_value: ByteSize,
}

mod defaults {
    use std::time::Duration;

    use bytesize::ByteSize;

    use super::{Fallback, Scope};

    pub fn timeout() -> Duration {
        Duration::from_millis(50)
    }
    pub fn connections() -> usize {
        2
    }
    pub fn prefix() -> String {
        "sluice:".into()
    }
    pub fn breaker_failures() -> u32 {
        3
    }
    pub fn breaker_open() -> Duration {
        Duration::from_secs(1)
    }
    pub fn fallback() -> Fallback {
        Fallback::Local
    }
    pub fn scope() -> Scope {
        Scope::Cluster
    }
    pub fn max_value() -> ByteSize {
        ByteSize::b(super::DEFAULT_MAX_VALUE as u64)
    }
}
