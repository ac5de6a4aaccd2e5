//! The data path's configuration: listeners, upstreams, routes and the
//! response cache, as read from the gateway's TOML file (the control plane
//! reads the file and reports errors against it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;
use sluice_state::Scope;
use toml::Spanned;

use crate::edge::{Edge, EscapedSlashes, PathRules, Underscores};

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
    /// Keep a client's well-formed `x-request-id` (as a gateway behind
    /// another should) rather than give every request a fresh one.
    #[serde(default = "defaults::yes")]
    pub trust_request_id: bool,
    /// Request header names with `_`: `drop` them (the default, as nginx
    /// does), `reject` the request (400), or `allow` them.
    #[serde(default)]
    pub headers_with_underscores: Underscores,
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
    /// The longest a client may leave a response unread (its connection
    /// closes then; nginx's `send_timeout`).
    #[serde(default = "defaults::body_timeout", with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Take the PROXY protocol header (v1 or v2) that load balancers in
    /// front send: the client address it names is the client's.
    pub proxy_protocol: Option<ProxyProtocolAccept>,
    /// Proxy TCP connections (bytes both ways) instead of serving HTTP.
    pub tcp: Option<Spanned<TcpConfig>>,
    /// Proxy UDP datagrams instead (the address is a UDP socket then).
    pub udp: Option<Spanned<UdpConfig>>,
}

/// A UDP listener: each client address is a session, joined to one target
/// (or, `per_packet`, each datagram balanced on its own), answers sent back
/// from the listener's address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpConfig {
    /// Where datagrams go.
    pub upstream: String,
    /// A session with no datagram either way this long is forgotten.
    #[serde(default = "defaults::udp_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most sessions at once; a new client's datagrams are dropped beyond.
    #[serde(default = "defaults::udp_sessions")]
    pub max_sessions: usize,
    /// Balance every datagram on its own (DNS, syslog, statsd) rather than
    /// keep a client on one target.
    #[serde(default)]
    pub per_packet: bool,
}

/// Where PROXY protocol headers are taken from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocolAccept {
    /// The load balancers' addresses (`10.0.0.0/8`, `127.0.0.1`): each of
    /// their connections must begin with a header; connections from any
    /// other address are refused, so no client can name itself.
    pub trusted: Vec<ipnet::IpNet>,
}

/// A TCP listener: where its connections go, routed by what the TLS
/// ClientHello says (SNI, ALPN) when `routes` are given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    /// The upstream connections go to when no route matches.
    pub upstream: String,
    /// Routes by the TLS ClientHello, first match wins: passed through
    /// untouched without `tls` on the listener, or by the handshake with it.
    #[serde(default)]
    pub routes: Vec<TcpRoute>,
    /// How long a client has to send its ClientHello when routes read it.
    #[serde(default = "defaults::hello_timeout", with = "humantime_serde")]
    pub hello_timeout: Duration,
    /// Read the ClientHello before connecting (routes and `tls` do; set it
    /// for filters that want the server name with neither). Leave it off
    /// for protocols whose server speaks first (MySQL, SMTP).
    pub read_hello: Option<bool>,
    /// Connection filters (plugins of the `connection` kind), in order:
    /// each sees a connection when it is accepted and may close it or pick
    /// its upstream.
    #[serde(default)]
    pub filters: Vec<FilterConfig>,
    /// Close a connection quiet both ways this long; none by default
    /// (database clients hold quiet connections; TCP keepalive finds dead peers).
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Close a connection this long after it opened, whatever it does.
    #[serde(default, with = "humantime_serde")]
    pub max_duration: Option<Duration>,
    /// When the gateway shuts down, how long open connections may go on
    /// before they are closed (within the process's own drain bound).
    #[serde(default = "defaults::tcp_drain", with = "humantime_serde")]
    pub drain_timeout: Duration,
}

/// One TCP route: the ClientHello's server name and ALPN it takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpRoute {
    /// Server names (`*.example.com` for subdomains); any when empty.
    #[serde(default)]
    pub sni: Vec<String>,
    /// ALPN protocols offered (one of them); any when empty.
    #[serde(default)]
    pub alpn: Vec<String>,
    /// Where its connections go.
    pub upstream: String,
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
            trust_request_id: self.trust_request_id,
            underscores: self.headers_with_underscores,
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

/// A group of interchangeable upstream servers, and how requests are spread
/// over them, checked, retried and carried.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The servers: `host:port` (names are resolved, and again every
    /// `resolve_every`), or `{ address = "host:port", weight = 3 }`.
    pub targets: Spanned<Vec<TargetConfig>>,
    /// How a target is picked for a request.
    #[serde(default)]
    pub balance: Balance,
    /// What `balance = "hash"` hashes: `header:<name>`, `cookie:<name>` or `path`.
    pub hash_on: Option<String>,
    /// The cookie `balance = "sticky"` sets to keep a client on its target.
    #[serde(default = "defaults::sticky_cookie")]
    pub sticky_cookie: String,
    /// How often host names among the targets are resolved again.
    #[serde(default = "defaults::resolve_every", with = "humantime_serde")]
    pub resolve_every: Duration,
    /// How long to wait for a connection (TCP, and TLS if any).
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long one try waits for the response head once the request is sent.
    #[serde(default = "defaults::response_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The longest pause in a response body once its head came (nginx's
    /// `proxy_read_timeout`); the client's response ends there.
    #[serde(default = "defaults::body_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
    /// The most a request may take to a response head, all tries together.
    #[serde(default, with = "humantime_serde")]
    pub overall_timeout: Option<Duration>,
    /// How long an unused keep-alive connection to a target stays open.
    #[serde(default = "defaults::upstream_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How many more tries a request gets, each on another target: any
    /// request that never reached a target, and idempotent ones that failed
    /// (connection lost, timed out, or answered with a `retry_on` status).
    #[serde(default = "defaults::retries")]
    pub retries: u32,
    /// Statuses that make an idempotent request try another target.
    #[serde(default = "defaults::retry_on")]
    pub retry_on: Vec<u16>,
    /// Retries earned per request (0.2: at most a fifth more load, over
    /// time; a saved-up balance and a reserve of ten a second cover bursts),
    /// so retries do not make an outage worse.
    #[serde(default = "defaults::retry_budget")]
    pub retry_budget: f64,
    /// The protocol to the targets: `http1`, `h2` (HTTP/2; over TLS by ALPN,
    /// or cleartext with prior knowledge), or `auto` (ALPN over TLS,
    /// HTTP/1.1 otherwise).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Talk TLS to the targets.
    pub tls: Option<UpstreamTls>,
    /// Active health checks; none unless configured.
    pub health: Option<HealthConfig>,
    /// Passive outlier detection: targets that keep failing are ejected for a while.
    #[serde(default)]
    pub outlier: OutlierConfig,
    /// Begin each connection to a target with a PROXY protocol header
    /// (`v1` or `v2`) naming the client connection it carries traffic for
    /// (`LOCAL` for the gateway's own: health checks, plugins' calls).
    pub proxy_protocol: Option<ProxyVersion>,
}

/// A PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyVersion {
    /// The text form.
    V1,
    /// The binary form.
    V2,
}

impl UpstreamConfig {
    /// What serde cannot check: values' ranges and the settings that go together.
    pub fn check(&self) -> Result<(), String> {
        if self.balance == Balance::Hash {
            match self.hash_on.as_deref().map(HashOn::parse) {
                Some(Ok(_)) => {}
                Some(Err(message)) => return Err(message),
                None => return Err("`balance = \"hash\"` needs `hash_on`".into()),
            }
        }
        if !(0.0..=1.0).contains(&self.retry_budget) {
            return Err("`retry_budget` is a share of the requests in flight, in [0, 1]".into());
        }
        if let Some(tls) = &self.tls
            && tls.cert.is_some() != tls.key.is_some()
        {
            return Err("`tls.cert` and `tls.key` go together".into());
        }
        if let Some(health) = &self.health {
            if health.healthy_threshold == 0 || health.unhealthy_threshold == 0 {
                return Err("health thresholds must be at least 1".into());
            }
            if health.path.is_some() && (health.send.is_some() || health.receive.is_some()) {
                return Err("`health.path` (HTTP) or `send`/`receive` (bytes), not both".into());
            }
        }
        if self.outlier.max_ejected_percent > 100 {
            return Err("`outlier.max_ejected_percent` is at most 100".into());
        }
        Ok(())
    }
}

/// What `balance = "hash"` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// A request header's value.
    Header(http::HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// The (normalised) path.
    Path,
}

impl HashOn {
    /// `header:<name>`, `cookie:<name>` or `path`.
    pub fn parse(text: &str) -> Result<HashOn, String> {
        match text.split_once(':') {
            Some(("header", name)) => http::HeaderName::try_from(name)
                .map(HashOn::Header)
                .map_err(|_| format!("`hash_on`: `{name}` is not a header name")),
            Some(("cookie", name)) if !name.is_empty() => Ok(HashOn::Cookie(name.to_owned())),
            None if text == "path" => Ok(HashOn::Path),
            _ => Err(format!(
                "`hash_on = \"{text}\"`: expected `header:<name>`, `cookie:<name>` or `path`"
            )),
        }
    }
}

/// One configured target.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TargetConfig {
    /// `host:port`, weight 1.
    Address(String),
    /// With a weight.
    Weighted {
        /// `host:port`.
        address: String,
        /// Its share relative to the others (default 1).
        #[serde(default = "defaults::weight")]
        weight: u32,
    },
}

impl TargetConfig {
    /// `host:port`.
    pub fn address(&self) -> &str {
        match self {
            TargetConfig::Address(address) | TargetConfig::Weighted { address, .. } => address,
        }
    }

    /// Its weight.
    pub fn weight(&self) -> u32 {
        match self {
            TargetConfig::Address(_) => 1,
            TargetConfig::Weighted { weight, .. } => *weight,
        }
    }
}

impl From<String> for TargetConfig {
    fn from(address: String) -> TargetConfig {
        TargetConfig::Address(address)
    }
}

/// How a target is picked for a request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// In turn, as often as their weights say (smooth weighted round robin).
    RoundRobin,
    /// The one with the fewest requests in flight (for its weight).
    LeastConnections,
    /// Of two picked at random, the one with the lower expected latency
    /// (the moving average of response times or, when longer, how long the
    /// requests in flight have waited; times requests in flight). The
    /// default: a target that stops answering is shed within milliseconds,
    /// costing only the requests already sent to it.
    #[default]
    LeastTime,
    /// At random, by weight.
    Random,
    /// By the client's IP address (consistent hashing).
    IpHash,
    /// By `hash_on` (consistent hashing).
    Hash,
    /// In turn at first; then the target a cookie the gateway sets names.
    Sticky,
}

/// The protocol spoken to the targets.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 on pooled keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2: by ALPN over TLS, prior knowledge (h2c) without.
    H2,
    /// HTTP/2 or HTTP/1.1 by ALPN over TLS; HTTP/1.1 without TLS.
    Auto,
}

/// TLS to the targets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Trust these CA certificates (PEM) instead of the system's.
    pub ca: Option<PathBuf>,
    /// The name to ask for (SNI) and to verify; default the target's host.
    pub server_name: Option<String>,
    /// A client certificate chain (PEM) for mutual TLS.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
}

/// Active health checks: each target is asked every `interval`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// `GET` this path and expect one of `expect`; without it, a connection
    /// (and `send`/`receive`, if given) is the check.
    pub path: Option<String>,
    /// Bytes written once connected (`"PING\r\n"`), for targets that are not HTTP.
    pub send: Option<String>,
    /// Bytes the answer must contain (`"+PONG"`).
    pub receive: Option<String>,
    /// Healthy statuses (default 200-399).
    #[serde(default)]
    pub expect: Vec<u16>,
    /// How often each target is checked.
    #[serde(default = "defaults::health_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long a check may take.
    #[serde(default = "defaults::health_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Passed checks in a row that make an unhealthy target healthy.
    #[serde(default = "defaults::healthy_threshold")]
    pub healthy_threshold: u32,
    /// Failed checks in a row that make a healthy target unhealthy.
    #[serde(default = "defaults::unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

/// Passive outlier detection, as Envoy's: consecutive failures (connection
/// failures, timeouts, `5xx`) eject a target for a time that grows with
/// each ejection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Failures in a row that eject a target (0 turns detection off).
    #[serde(default = "defaults::consecutive_failures")]
    pub consecutive_failures: u32,
    /// The first ejection's length; each next one is longer by as much.
    #[serde(default = "defaults::base_ejection", with = "humantime_serde")]
    pub base_ejection: Duration,
    /// The longest ejection.
    #[serde(default = "defaults::max_ejection", with = "humantime_serde")]
    pub max_ejection: Duration,
    /// The most targets ejected at once, as a percentage of all.
    #[serde(default = "defaults::max_ejected_percent")]
    pub max_ejected_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: defaults::consecutive_failures(),
            base_ejection: defaults::base_ejection(),
            max_ejection: defaults::max_ejection(),
            max_ejected_percent: defaults::max_ejected_percent(),
        }
    }
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
    /// Compress responses for clients that accept it; off unless set.
    pub compression: Option<CompressionConfig>,
    /// Let a cache-policy filter's TTL store responses meant for one client
    /// (`Set-Cookie`, `Cache-Control: private` or `no-store`), as nginx's
    /// `proxy_ignore_headers` does; off: they are never stored.
    #[serde(default)]
    pub cache_private: bool,
    /// Keep this route's cached responses in `[state]`'s Redis too, so a
    /// response one gateway fetched is a hit on every other.
    #[serde(default)]
    pub shared_cache: bool,
    /// Take gRPC-Web from browsers (`application/grpc-web`, `+proto`, and
    /// the base64 `-text` forms) to the route's gRPC upstream, its trailers
    /// sent as the body's last frame; other requests pass as they are.
    #[serde(default)]
    pub grpc_web: bool,
    /// Take JSON/REST calls to the gRPC service the definitions describe.
    pub transcode: Option<Spanned<TranscodeConfig>>,
}

/// JSON/REST to gRPC from a service's own definitions: `.proto` files
/// (compiled by the gateway, imports included) or a descriptor set, each
/// method mapped by its `google.api.http` rules and at `POST /pkg.Service/Method`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscodeConfig {
    /// `.proto` files to compile, named as imports name them (relative to an
    /// `include` folder).
    #[serde(default)]
    pub protos: Vec<PathBuf>,
    /// Folders imports are looked up in, relative to the configuration
    /// file; its own folder when none is given. `google/api/annotations.proto`
    /// and the well-known types are built in.
    #[serde(default)]
    pub include: Vec<PathBuf>,
    /// A compiled `FileDescriptorSet` (`protoc --include_imports
    /// --descriptor_set_out`), instead of `protos`.
    pub descriptor: Option<PathBuf>,
    /// The services offered, by full name; every service defined when empty.
    #[serde(default)]
    pub services: Vec<String>,
    /// A query parameter that names no field of the request: `reject` (400)
    /// or `ignore`.
    #[serde(default)]
    pub unknown_query: UnknownQuery,
    /// How a server-streaming method's messages are sent: `ndjson` (one JSON
    /// object a line) or `sse` (server-sent events).
    #[serde(default)]
    pub stream: StreamFormat,
}

/// What a transcoded route does with a query parameter that names no field.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownQuery {
    /// Refuse the request with 400.
    #[default]
    Reject,
    /// Leave it out of the call.
    Ignore,
}

/// How a server-streaming call's messages reach a JSON client.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StreamFormat {
    /// Newline-delimited JSON (`application/x-ndjson`).
    #[default]
    Ndjson,
    /// Server-sent events (`text/event-stream`), one `data:` event a message.
    Sse,
}

/// Response compression, negotiated by `Accept-Encoding`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionConfig {
    /// Encodings offered, in the gateway's order of preference among those
    /// the client accepts equally: `br`, `zstd`, `gzip`.
    #[serde(default = "defaults::encodings")]
    pub encodings: Vec<String>,
    /// Responses known to be smaller are sent as they are.
    #[serde(default = "defaults::compress_min_size")]
    pub min_size: ByteSize,
    /// Media types compressed (`text/*` for a whole family).
    #[serde(default = "defaults::compress_types")]
    pub types: Vec<String>,
    /// Brotli streams the gateway runs at once before this route falls
    /// back to the client's next choice (gzip, ~256 KiB a stream, against
    /// brotli's ~1 MiB): compression memory stays bounded under load.
    #[serde(default = "defaults::brotli_streams")]
    pub brotli_streams: usize,
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

/// One entry of a route's filter chain (or a TCP listener's).
#[derive(Debug, Clone, Deserialize)]
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
    /// Where this route keeps the filter's rate-limit buckets (`local` or
    /// `cluster`), over the plugin's `state`.
    pub state: Option<Spanned<Scope>>,
}

mod defaults {
    use std::time::Duration;

    use bytesize::ByteSize;

    pub fn udp_idle() -> Duration {
        Duration::from_secs(60)
    }

    pub fn udp_sessions() -> usize {
        10_000
    }

    pub fn tcp_drain() -> Duration {
        Duration::from_secs(20)
    }

    pub fn hello_timeout() -> Duration {
        Duration::from_secs(5)
    }

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
    pub fn encodings() -> Vec<String> {
        ["br", "zstd", "gzip"].map(String::from).to_vec()
    }
    pub fn brotli_streams() -> usize {
        256
    }
    pub fn compress_min_size() -> ByteSize {
        ByteSize::b(1024)
    }
    pub fn compress_types() -> Vec<String> {
        [
            "text/*",
            "application/json",
            "application/javascript",
            "application/xml",
            "application/wasm",
            "image/svg+xml",
        ]
        .map(String::from)
        .to_vec()
    }
    pub fn sticky_cookie() -> String {
        "sluice-target".into()
    }
    pub fn resolve_every() -> Duration {
        Duration::from_secs(30)
    }
    pub fn retries() -> u32 {
        2
    }
    pub fn retry_on() -> Vec<u16> {
        vec![502, 503, 504]
    }
    pub fn retry_budget() -> f64 {
        0.2
    }
    pub fn weight() -> u32 {
        1
    }
    pub fn health_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub fn health_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn healthy_threshold() -> u32 {
        2
    }
    pub fn unhealthy_threshold() -> u32 {
        3
    }
    pub fn consecutive_failures() -> u32 {
        5
    }
    pub fn base_ejection() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_ejection() -> Duration {
        Duration::from_secs(300)
    }
    pub fn max_ejected_percent() -> u32 {
        50
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
