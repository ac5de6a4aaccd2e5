//! The shared store on Redis: every gateway configured with the same
//! `[state]` counts in the same buckets and sees the same entries.
//!
//! Each round trip is bounded by the configured timeout and goes through
//! the breaker. A bucket is one atomic script (`EVALSHA`, loaded again by
//! the client when a restarted Redis answers `NOSCRIPT`) on Redis's clock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ErrorKind, RedisError, Script};

use crate::breaker::{Breaker, Permit};
use crate::buckets::Admission;
use crate::config::StateConfig;
use crate::metrics::StateMetrics;
use crate::{StateStore, StoreError};

/// Why the gateway could not use the configured Redis at start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The configuration cannot work (a bad URL, an unreadable file).
    #[error("{key}: {message}")]
    Config {
        /// The `[state]` key at fault.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Redis answered, and refused the credentials.
    #[error("Redis at {url} refused the credentials: {message}")]
    Auth {
        /// The URL, without its password.
        url: String,
        /// Redis's words.
        message: String,
    },
}

/// Redis, through the breaker.
pub struct RedisStore {
    connections: Vec<ConnectionManager>,
    next: AtomicUsize,
    timeout: Duration,
    prefix: String,
    breaker: Breaker,
    metrics: StateMetrics,
    take: Script,
    increment: Script,
    shared_set: Script,
}

impl RedisStore {
    /// Connect as `config` says, counting in `metrics`. Redis refusing the
    /// credentials is an error; Redis unreachable is not (the gateway
    /// starts, the breaker open, and uses fall back until it answers).
    pub async fn connect(
        config: &StateConfig,
        metrics: StateMetrics,
    ) -> Result<RedisStore, ConnectError> {
        // rustls needs a process-wide provider; the gateway's is ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = client(config)?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout.max(Duration::from_secs(1))))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let connections = (0..config.connections.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), manager.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| config_error("url", e))?;
        let store = RedisStore {
            connections,
            next: AtomicUsize::new(0),
            timeout: config.timeout,
            prefix: config.prefix.clone(),
            breaker: Breaker::new(
                config.breaker_failures,
                config.breaker_open,
                metrics.up.clone(),
            ),
            metrics,
            take: Script::new(include_str!("take.lua")),
            increment: Script::new(include_str!("increment.lua")),
            shared_set: Script::new(include_str!("shared_set.lua")),
        };
        store.check(&config.url).await?;
        Ok(store)
    }

    /// Ping every connection once, with a longer wait than a request's:
    /// credentials Redis refuses stop the start; an unreachable Redis
    /// opens the breaker.
    async fn check(&self, url: &str) -> Result<(), ConnectError> {
        let wait = self.timeout.max(Duration::from_secs(2));
        for connection in &self.connections {
            let mut connection = connection.clone();
            let ping = redis::cmd("PING");
            match tokio::time::timeout(wait, ping.query_async::<()>(&mut connection)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if refused_credentials(&e) => {
                    return Err(ConnectError::Auth {
                        url: redacted(url),
                        message: e.to_string(),
                    });
                }
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer in {wait:?}"),
                    };
                    tracing::warn!(
                        "state store: Redis at {} is not reachable: {why}",
                        redacted(url)
                    );
                    self.metrics.error("connection");
                    self.breaker.trip(&why);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Whether the breaker is open (calls fail at once).
    pub fn is_down(&self) -> bool {
        self.breaker.is_open()
    }

    /// The metrics it counts in.
    pub fn metrics(&self) -> &StateMetrics {
        &self.metrics
    }

    /// Run one round trip on the next connection, bounded by the timeout and
    /// the breaker.
    async fn call<T, F>(&self, what: impl FnOnce(ConnectionManager) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, RedisError>>,
    {
        let permit = self.breaker.permit();
        if permit == Permit::Refused {
            return Err(StoreError::Unavailable(
                "Redis is down (breaker open)".into(),
            ));
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let started = Instant::now();
        let round_trip = async {
            if permit == Permit::Probe {
                self.reconnect().await?;
            }
            what(self.connections[i].clone()).await
        };
        let answer = tokio::time::timeout(self.timeout, round_trip).await;
        self.metrics
            .round_trip
            .observe(started.elapsed().as_secs_f64());
        let (reason, error) = match answer {
            Ok(Ok(value)) => {
                self.breaker.succeeded();
                return Ok(value);
            }
            // Redis answered: it is up, and the value was of another kind.
            Ok(Err(e)) if answered(&e) => {
                self.breaker.succeeded();
                return Err(StoreError::WrongType(
                    e.detail().unwrap_or("wrong kind of value").to_owned(),
                ));
            }
            Ok(Err(e)) => ("connection", e.to_string()),
            Err(_) => ("timeout", format!("no answer in {:?}", self.timeout)),
        };
        self.metrics.error(reason);
        self.breaker.failed(&permit, &error);
        Err(StoreError::Unavailable(error))
    }

    /// A probe's first step: a `PING` on every connection. A connection
    /// broken while the breaker was open fails its first command and
    /// reconnects, so a failed `PING` is sent once more, on the new one.
    async fn reconnect(&self) -> Result<(), RedisError> {
        for connection in &self.connections {
            let ping = || {
                let mut connection = connection.clone();
                async move { redis::cmd("PING").query_async::<()>(&mut connection).await }
            };
            if ping().await.is_err() {
                ping().await?;
            }
        }
        Ok(())
    }

    fn key(&self, kind: &str, key: &str) -> String {
        format!("{}{kind}:{key}", self.prefix)
    }

    /// A blob stored by [`RedisStore::put_blob`] under `key`, with the time it has left.
    pub async fn get_blob(&self, key: &str) -> Result<Option<(Bytes, Duration)>, StoreError> {
        let key = self.key("c", key);
        let (value, ttl): (Option<Vec<u8>>, i64) = self
            .call(
                |mut c| async move { redis::pipe().get(&key).pttl(&key).query_async(&mut c).await },
            )
            .await?;
        Ok(value
            .filter(|_| ttl > 0)
            .map(|v| (Bytes::from(v), Duration::from_millis(ttl as u64))))
    }

    /// Store `value` under `key` for `ttl`.
    pub async fn put_blob(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        let key = self.key("c", key);
        let millis = ttl.as_millis().max(1) as u64;
        self.call(|mut c| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(&value[..])
                .arg("PX")
                .arg(millis)
                .query_async(&mut c)
                .await
        })
        .await
    }

    /// proxy-wasm shared data at `key`: its value and version.
    pub async fn shared_get(&self, key: &str) -> Result<Option<(Bytes, u32)>, StoreError> {
        let key = self.key("s", key);
        let (value, version): (Option<Vec<u8>>, Option<u32>) = self
            .call(|mut c| async move {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("v")
                    .arg("c")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(value.map(|v| (Bytes::from(v), version.unwrap_or(0))))
    }

    /// Set proxy-wasm shared data `key` to `value` if `cas` is 0 or its
    /// version (compare-and-swap, atomic in Redis); false on a mismatch.
    pub async fn shared_set(&self, key: &str, value: Bytes, cas: u32) -> Result<bool, StoreError> {
        let key = self.key("s", key);
        let script = &self.shared_set;
        let set: i64 = self
            .call(|mut c| async move {
                script
                    .key(&key)
                    .arg(&value[..])
                    .arg(cas)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(set == 1)
    }

    /// A round trip for `kv`, whose plugin sees `unavailable` without Redis.
    async fn kv<T, F>(&self, what: impl FnOnce(ConnectionManager) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, RedisError>>,
    {
        let answer = self.call(what).await;
        if let Err(StoreError::Unavailable(_)) = &answer {
            self.metrics.fell_back("kv", "unavailable");
        }
        answer
    }
}

#[async_trait::async_trait]
impl StateStore for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let key = self.key("k", key);
        let value: Option<Vec<u8>> = self
            .kv(|mut c| async move { redis::cmd("GET").arg(&key).query_async(&mut c).await })
            .await?;
        Ok(value.map(Bytes::from))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), StoreError> {
        let key = self.key("k", key);
        self.kv(|mut c| async move {
            let mut set = redis::cmd("SET");
            set.arg(&key).arg(&value[..]);
            match ttl {
                // Expired already: as good as gone.
                Some(ttl) if ttl.is_zero() => redis::cmd("DEL").arg(&key).query_async(&mut c).await,
                Some(ttl) => {
                    set.arg("PX")
                        .arg(ttl.as_millis() as u64)
                        .query_async(&mut c)
                        .await
                }
                None => set.query_async(&mut c).await,
            }
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let key = self.key("k", key);
        self.kv(|mut c| async move { redis::cmd("DEL").arg(&key).query_async(&mut c).await })
            .await
    }

    async fn increment(
        &self,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, StoreError> {
        let key = self.key("k", key);
        let ttl = ttl.map_or(String::new(), |t| t.as_millis().max(1).to_string());
        let script = &self.increment;
        self.kv(|mut c| async move {
            script
                .key(&key)
                .arg(delta)
                .arg(ttl)
                .invoke_async(&mut c)
                .await
        })
        .await
    }

    async fn take(
        &self,
        key: &str,
        cost: u32,
        capacity: u32,
        window: Duration,
    ) -> Result<Admission, StoreError> {
        let key = self.key("b", key);
        let script = &self.take;
        let (allowed, remaining, reset_secs, retry_after_millis): (i64, i64, i64, i64) = self
            .call(|mut c| async move {
                script
                    .key(&key)
                    .arg(cost)
                    .arg(capacity)
                    .arg(window.as_millis() as u64)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(Admission {
            allowed: allowed == 1,
            limit: capacity,
            remaining: remaining.clamp(0, i64::from(capacity)) as u32,
            reset_secs: reset_secs.max(0) as u64,
            retry_after_millis: retry_after_millis.max(0) as u64,
        })
    }
}

/// The client for `config`'s URL, credentials and certificates.
fn client(config: &StateConfig) -> Result<Client, ConnectError> {
    let mut info = redis::IntoConnectionInfo::into_connection_info(config.url.as_str())
        .map_err(|e| config_error("url", e))?;
    let mut settings = info.redis_settings().clone();
    if settings.password().is_some() {
        return Err(ConnectError::Config {
            key: "url",
            message:
                "a password in the URL would show wherever the URL does: put it in `password_file`"
                    .into(),
        });
    }
    if let Some(user) = &config.username {
        settings = settings.set_username(user);
    }
    if let Some(path) = &config.password_file {
        let text = std::fs::read_to_string(path).map_err(|e| ConnectError::Config {
            key: "password_file",
            message: format!("{}: {e}", path.display()),
        })?;
        settings = settings.set_password(text.lines().next().unwrap_or_default());
    }
    info = info.set_redis_settings(settings);
    let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
    if !tls {
        for (key, set) in [
            ("ca", &config.ca),
            ("cert", &config.cert),
            ("key", &config.key),
        ] {
            if set.is_some() {
                return Err(ConnectError::Config {
                    key,
                    message: "only a rediss:// URL uses certificates".into(),
                });
            }
        }
        return Client::open(info).map_err(|e| config_error("url", e));
    }
    let read = |key: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| ConnectError::Config {
            key,
            message: format!("{}: {e}", path.display()),
        })
    };
    let client_tls = match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("cert", cert)?,
            client_key: read("key", key)?,
        }),
        (None, None) => None,
        _ => {
            return Err(ConnectError::Config {
                key: "cert",
                message: "`cert` and `key` go together".into(),
            });
        }
    };
    let root_cert = config.ca.as_deref().map(|ca| read("ca", ca)).transpose()?;
    let certificates = redis::TlsCertificates {
        client_tls,
        root_cert,
    };
    Client::build_with_tls(info, certificates).map_err(|e| config_error("url", e))
}

fn config_error(key: &'static str, error: RedisError) -> ConnectError {
    ConnectError::Config {
        key,
        message: error.to_string(),
    }
}

/// Whether Redis refused who we said we are.
fn refused_credentials(error: &RedisError) -> bool {
    error.kind() == ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
}

/// Whether Redis answered with an error about the value (`INCRBY` on
/// text, `WRONGTYPE`) rather than failing to answer.
fn answered(error: &RedisError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::Server(redis::ServerErrorKind::ResponseError) | ErrorKind::Extension
    ) && !refused_credentials(error)
}

/// `url` without a password in it.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}
