//! The data path's configuration: listeners, upstreams, routes and the
//! response cache, as read from the gateway's TOML file (the control plane
//! reads the file and reports errors against it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;
use toml::Spanned;

use crate::edge::{Edge, EscapedSlashes, PathRules};

/// One listening socket, and the limits its clients meet.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `ip:port` to bind; port 0 picks a free one.
    pub address: SocketAddr,
    /// Terminate TLS here with this certificate (HTTP/2 and HTTP/1.1 by ALPN).
    pub tls: Option<Spanned<TlsConfig>>,
    /// Collapse `//` in paths into `/` before routing.
    #[serde(default = "defaults::yes")]
    pub merge_slashes: bool,
    /// `%2F`, `%5C` or `\` in a path: `reject` (400), `keep` or `decode`.
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
    /// Most bytes of request line and headers (431 beyond).
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// Most header fields in a request (431 beyond).
    #[serde(default = "defaults::max_headers")]
    pub max_headers: usize,
    /// Longest request target, path and query (414 beyond).
    #[serde(default = "defaults::max_uri_bytes")]
    pub max_uri_bytes: ByteSize,
    /// Most open connections on this listener; more are closed at once.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Most open connections from one client IP address.
    #[serde(default = "defaults::max_connections_per_client")]
    pub max_connections_per_client: usize,
    /// How long a client has to send a whole request head (and a TLS handshake).
    #[serde(default = "defaults::header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// How long a connection with no request in flight stays open.
    #[serde(default = "defaults::idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// The longest pause while a client sends a request body (408 after it).
    #[serde(default = "defaults::body_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
}

impl ListenerConfig {
    /// The rules its request heads are held to.
    pub fn edge(&self) -> Edge {
        Edge {
            path: PathRules {
                merge_slashes: self.merge_slashes,
                escaped_slashes: self.escaped_slashes,
            },
            max_header_bytes: self.max_header_bytes.as_u64() as usize,
            max_headers: self.max_headers,
            max_uri_bytes: self.max_uri_bytes.as_u64() as usize,
        }
    }
}

/// A listener's certificate; reloads read the files again (rotation).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, PEM, leaf first; relative to the configuration file.
    pub cert: PathBuf,
    /// The private key, PEM.
    pub key: PathBuf,
}

/// A group of interchangeable upstream servers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `host:port` of each server, used in round robin.
    pub targets: Spanned<Vec<String>>,
    /// How long to wait for a TCP connection.
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long to wait for the response head once the request is sent.
    #[serde(default = "defaults::response_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long an unused keep-alive connection to a target stays open.
    #[serde(default = "defaults::upstream_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
}

/// Bounds of the in-memory response cache.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Total size, in MiB; least recently used entries go first.
    #[serde(default = "defaults::cache_mib")]
    pub max_mib: usize,
    /// Largest response kept, in KiB; larger ones stream past the cache.
    #[serde(default = "defaults::cache_entry_kib")]
    pub max_entry_kib: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_mib: defaults::cache_mib(),
            max_entry_kib: defaults::cache_entry_kib(),
        }
    }
}

/// A route: which requests it takes, where they go, and the filters on the way.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A name for logs and for filters; defaults to `route-N`.
    pub name: Option<String>,
    /// Which requests this route takes; empty matches everything.
    #[serde(default, rename = "match")]
    pub matcher: MatchConfig,
    /// The upstream requests go to unless a routing filter picks another.
    pub upstream: Spanned<String>,
    /// The filter chain, each entry a plugin with its configuration.
    #[serde(default)]
    pub filters: Vec<FilterConfig>,
    /// The largest request body this route takes (413 beyond).
    #[serde(default = "defaults::max_body")]
    pub max_body: ByteSize,
}

impl RouteConfig {
    /// The route's display name: its `name`, or `route-N` by its position.
    pub fn name(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("route-{index}"))
    }
}

/// The conditions a request must meet to take a route; all must hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// The request's host, without port (`*.example.com` matches subdomains).
    pub host: Option<String>,
    /// The path, exactly.
    pub path: Option<String>,
    /// A path prefix, on segment boundaries (`/api` matches `/api/x`, not `/apix`).
    pub path_prefix: Option<String>,
    /// Accepted methods; empty accepts all.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Headers that must be present with exactly these values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// One entry of a route's filter chain.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// The name of a plugin from `[plugins]`.
    pub plugin: Spanned<String>,
    /// This route's configuration for the plugin, handed to its `init` as JSON.
    #[serde(default = "defaults::empty_table")]
    pub config: toml::Value,
    /// Buffer bodies so this filter can read and replace them.
    #[serde(default)]
    pub body: bool,
}

mod defaults {
    use std::time::Duration;

    use bytesize::ByteSize;

    pub fn max_header_bytes() -> ByteSize {
        ByteSize::kib(32)
    }
    pub fn max_headers() -> usize {
        100
    }
    pub fn max_uri_bytes() -> ByteSize {
        ByteSize::kib(8)
    }
    pub fn max_connections() -> usize {
        10_000
    }
    pub fn max_connections_per_client() -> usize {
        1_000
    }
    pub fn header_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn body_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn max_body() -> ByteSize {
        ByteSize::mib(16)
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn response_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn upstream_idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn cache_mib() -> usize {
        64
    }
    pub fn cache_entry_kib() -> usize {
        1024
    }
    pub fn yes() -> bool {
        true
    }
    pub fn empty_table() -> toml::Value {
        toml::Value::Table(Default::default())
    }
}
