//! The TOML configuration: its schema, and loading it with errors that name
//! the file, the line and the key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;
use toml::Spanned;

use crate::edge::{Edge, EscapedSlashes, PathRules};
use crate::router::Matcher;

/// The whole gateway configuration, as read from one TOML file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Addresses to accept client connections on.
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    /// Named groups of upstream servers.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Named WebAssembly plugins, by file.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginConfig>,
    /// Routes, matched most specific first.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The response cache that cache-policy filters use.
    #[serde(default)]
    pub cache: CacheConfig,
    /// The admin listener (metrics, reloads, plugin versions), off unless configured.
    pub admin: Option<AdminConfig>,
    /// What triggers a reload besides `SIGHUP` and the admin API.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// How plugins are compiled.
    #[serde(default)]
    pub engine: EngineConfig,
    /// The file this was read from; relative plugin paths resolve against its folder.
    #[serde(skip)]
    pub source: Source,
}

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

/// The admin listener: metrics, health, reloads and plugin versions. It
/// changes running code, so every endpoint but `/healthz` needs its token.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `ip:port` to bind; a loopback address unless `public` is set.
    pub address: Spanned<SocketAddr>,
    /// Allow a non-loopback address: anyone who reaches it can try the token.
    #[serde(default)]
    pub public: bool,
    /// The bearer token requests must carry (at least 16 characters).
    pub token: Option<String>,
    /// A file holding the token instead (relative to this file; surrounding
    /// whitespace ignored).
    pub token_file: Option<PathBuf>,
    /// Host names requests may address it by, besides `localhost` and its
    /// own address (a foreign `Host` is how DNS rebinding gets in).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Serve `/metrics` without the token, for scrapers.
    #[serde(default)]
    pub public_metrics: bool,
}

/// The shortest admin token accepted.
pub const MIN_ADMIN_TOKEN: usize = 16;

impl AdminConfig {
    /// The token, from the configuration or its file (read now).
    pub fn read_token(&self, source: &Source) -> Result<String, ConfigError> {
        let at = self.address.span().start;
        let token = match (&self.token, &self.token_file) {
            (Some(token), None) => token.clone(),
            (None, Some(file)) => {
                let path = source.dir().join(file);
                std::fs::read_to_string(&path)
                    .map_err(|e| {
                        source.error(at, "admin.token_file", format!("{}: {e}", path.display()))
                    })?
                    .trim()
                    .to_owned()
            }
            _ => {
                return Err(source.error(
                    at,
                    "admin",
                    "set `token` or `token_file` (one of them): the admin API changes running code",
                ));
            }
        };
        if token.len() < MIN_ADMIN_TOKEN {
            return Err(source.error(
                at,
                "admin.token",
                format!(
                    "the token is too short to be a secret (at least {MIN_ADMIN_TOKEN} characters)"
                ),
            ));
        }
        Ok(token)
    }
}

/// Reload triggers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Reload when the configuration file or a plugin file changes.
    #[serde(default = "defaults::yes")]
    pub watch: bool,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig { watch: true }
    }
}

/// Compilation settings; read at start only.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Where compiled components are cached, keyed by sha256. Defaults to
    /// `$XDG_CACHE_HOME/sluice` (or `~/.cache/sluice`); `""` turns it off.
    pub cache_dir: Option<PathBuf>,
}

impl EngineConfig {
    /// The cache folder to use, if any.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        match &self.cache_dir {
            Some(dir) if dir.as_os_str().is_empty() => None,
            Some(dir) => Some(dir.clone()),
            None => std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .map(|base| base.join("sluice")),
        }
    }
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

/// A WebAssembly component and the limits it runs under.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Path to the `.wasm` component, relative to the configuration file.
    pub path: Spanned<PathBuf>,
    /// Most linear memory one instance may have, in MiB.
    #[serde(default = "defaults::memory_limit_mib")]
    pub memory_limit_mib: u32,
    /// Most wall time one call into the plugin may take before it is stopped.
    #[serde(default = "defaults::call_timeout", with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Requests one instance serves before it is replaced by a fresh one.
    #[serde(default = "defaults::max_requests_per_instance")]
    pub max_requests_per_instance: u32,
    /// What a failing call (trap, timeout, limit) means for the request.
    #[serde(default)]
    pub on_failure: FailurePolicy,
    /// The share of the gateway's worker threads this plugin's long-running
    /// calls (past 5 ms) may use together; they pause to stay within it.
    #[serde(default = "defaults::cpu_share")]
    pub cpu_share: f64,
    /// Most calls into this plugin in flight at once (each holds an
    /// instance); more wait up to `call_timeout`, then fail.
    #[serde(default = "defaults::max_concurrency")]
    pub max_concurrency: u32,
    /// Host capabilities beyond logging and the clock: `kv`, `metrics`, and
    /// `http:<upstream>` per upstream it may call. Anything else is denied.
    #[serde(default)]
    pub grants: Vec<Spanned<String>>,
    /// The longest an outbound HTTP call may take.
    #[serde(default = "defaults::outbound_timeout", with = "humantime_serde")]
    pub outbound_timeout: Duration,
}

/// A host capability a plugin may be granted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Grant {
    /// The key-value store, counters and token buckets (`kv`).
    Kv,
    /// Defining metrics (`metrics`).
    Metrics,
    /// Outbound HTTP to one named upstream (`http:<name>`).
    Http(String),
}

impl std::str::FromStr for Grant {
    type Err = String;

    fn from_str(s: &str) -> Result<Grant, String> {
        match s {
            "kv" => Ok(Grant::Kv),
            "metrics" => Ok(Grant::Metrics),
            _ => match s.strip_prefix("http:") {
                Some(upstream) if !upstream.is_empty() => Ok(Grant::Http(upstream.to_owned())),
                _ => Err(format!(
                    "unknown grant `{s}`; grants are `kv`, `metrics` and `http:<upstream>`"
                )),
            },
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::Kv => f.write_str("kv"),
            Grant::Metrics => f.write_str("metrics"),
            Grant::Http(upstream) => write!(f, "http:{upstream}"),
        }
    }
}

impl PluginConfig {
    /// The parsed grants; they were checked when the configuration was loaded.
    pub fn grants(&self) -> impl Iterator<Item = Grant> + '_ {
        self.grants.iter().filter_map(|g| g.get_ref().parse().ok())
    }
}

/// What happens to a request when one of its filters fails.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Answer 500 with a clear error code (the default).
    #[default]
    Closed,
    /// Skip the filter and carry on.
    Open,
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
    pub fn memory_limit_mib() -> u32 {
        64
    }
    pub fn call_timeout() -> Duration {
        Duration::from_millis(100)
    }
    pub fn outbound_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn cpu_share() -> f64 {
        0.1
    }
    pub fn max_concurrency() -> u32 {
        500
    }
    pub fn max_requests_per_instance() -> u32 {
        100_000
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

/// Where a configuration came from, to point errors at the right line.
#[derive(Debug, Default, Clone)]
pub struct Source {
    /// The file's path as given.
    pub path: PathBuf,
    text: String,
}

impl Source {
    /// The folder relative paths in the file are resolved against.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// The file's text, as parsed.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// An error at byte offset `at` of the file, about `key`.
    pub fn error(
        &self,
        at: usize,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let line = self.text[..at.min(self.text.len())].matches('\n').count() + 1;
        ConfigError {
            file: self.path.clone(),
            line,
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A configuration error, pointing at the file, line and key at fault.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// The key at fault, as a dotted path (may be empty for syntax errors).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl Config {
    /// Read and parse `path`, checking the schema (not yet the plugins).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: 0,
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(path, text)
    }

    /// Parse `text` as if read from `path`.
    pub fn parse(path: &Path, text: String) -> Result<Config, ConfigError> {
        let source = Source {
            path: path.to_owned(),
            text,
        };
        let mut config: Config = toml::from_str(&source.text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            // toml's message is one line; its Display adds a source excerpt we replace with file:line.
            source.error(at, "", e.message().trim().to_owned())
        })?;
        config.source = source;
        config.check_references()?;
        Ok(config)
    }

    /// The route's display name: its `name`, or `route-N` by position.
    pub fn route_name(&self, index: usize) -> String {
        self.routes[index]
            .name
            .clone()
            .unwrap_or_else(|| format!("route-{index}"))
    }

    /// Checks what serde cannot: names that refer to other sections, and values' shapes.
    fn check_references(&self) -> Result<(), ConfigError> {
        let src = &self.source;
        for (name, upstream) in &self.upstreams {
            let key = format!("upstreams.{name}.targets");
            if upstream.targets.get_ref().is_empty() {
                return Err(src.error(
                    upstream.targets.span().start,
                    key,
                    "needs at least one target",
                ));
            }
            for target in upstream.targets.get_ref() {
                if target.parse::<http::uri::Authority>().is_err() || !target.contains(':') {
                    return Err(src.error(
                        upstream.targets.span().start,
                        key,
                        format!("`{target}` is not a `host:port`"),
                    ));
                }
            }
        }
        if let Some(admin) = &self.admin {
            admin.read_token(src)?;
        }
        if let Some(admin) = &self.admin
            && !admin.address.get_ref().ip().is_loopback()
            && !admin.public
        {
            return Err(src.error(
                admin.address.span().start,
                "admin.address",
                "not a loopback address: the admin API can change the gateway; set `public = true` to expose it anyway",
            ));
        }
        for (name, plugin) in &self.plugins {
            if !(plugin.cpu_share > 0.0 && plugin.cpu_share <= 1.0) || plugin.max_concurrency == 0 {
                return Err(src.error(
                    plugin.path.span().start,
                    format!("plugins.{name}"),
                    "`cpu_share` must be in (0, 1] and `max_concurrency` at least 1",
                ));
            }
            for grant in &plugin.grants {
                let key = format!("plugins.{name}.grants");
                match grant.get_ref().parse::<Grant>() {
                    Err(message) => return Err(src.error(grant.span().start, key, message)),
                    Ok(Grant::Http(upstream)) if !self.upstreams.contains_key(&upstream) => {
                        return Err(src.error(
                            grant.span().start,
                            key,
                            format!("unknown upstream `{upstream}`"),
                        ));
                    }
                    Ok(_) => {}
                }
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            let upstream = &route.upstream;
            if !self.upstreams.contains_key(upstream.get_ref()) {
                return Err(src.error(
                    upstream.span().start,
                    format!("routes[{i}].upstream"),
                    format!("unknown upstream `{}`", upstream.get_ref()),
                ));
            }
            if route.matcher.path.is_some() && route.matcher.path_prefix.is_some() {
                return Err(src.error(
                    upstream.span().start,
                    format!("routes[{i}].match"),
                    "set `path` or `path_prefix`, not both",
                ));
            }
            for path in [&route.matcher.path, &route.matcher.path_prefix]
                .into_iter()
                .flatten()
            {
                let message = match crate::edge::path::normalize(path, PathRules::default()) {
                    Ok(None) => continue,
                    Ok(Some(normal)) => format!(
                        "`{path}` is not a normalised path, and requests are matched on normalised paths: write `{normal}`"
                    ),
                    Err(e) => format!("`{path}` can never match: {e}"),
                };
                return Err(src.error(
                    route.upstream.span().start,
                    format!("routes[{i}].match"),
                    message,
                ));
            }
            for method in &route.matcher.methods {
                if http::Method::from_bytes(method.as_bytes()).is_err() {
                    return Err(src.error(
                        upstream.span().start,
                        format!("routes[{i}].match.methods"),
                        format!("`{method}` is not a method"),
                    ));
                }
            }
            if let Ok(matcher) = Matcher::new(&route.matcher) {
                let earlier = self.routes[..i]
                    .iter()
                    .position(|r| Matcher::new(&r.matcher).is_ok_and(|m| m == matcher));
                if let Some(earlier) = earlier {
                    return Err(src.error(
                        route.upstream.span().start,
                        format!("routes[{i}].match"),
                        format!(
                            "route `{}` matches exactly what route `{}` before it does, so it would never be used",
                            self.route_name(i),
                            self.route_name(earlier)
                        ),
                    ));
                }
            }
            for (j, filter) in route.filters.iter().enumerate() {
                let plugin = &filter.plugin;
                if !self.plugins.contains_key(plugin.get_ref()) {
                    return Err(src.error(
                        plugin.span().start,
                        format!("routes[{i}].filters[{j}].plugin"),
                        format!("unknown plugin `{}`", plugin.get_ref()),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("gw.toml"), text.to_owned())
    }

    #[test]
    fn grants_are_checked_against_names_and_upstreams() {
        let base =
            "[upstreams.auth]\ntargets = [\"127.0.0.1:9\"]\n[plugins.p]\npath = \"p.wasm\"\n";
        let ok = parse(&format!(
            "{base}grants = [\"kv\", \"metrics\", \"http:auth\"]\n"
        ))
        .unwrap();
        let grants: Vec<Grant> = ok.plugins["p"].grants().collect();
        assert_eq!(
            grants,
            [Grant::Kv, Grant::Metrics, Grant::Http("auth".into())]
        );

        let unknown = parse(&format!("{base}grants = [\"kv\", \"fs\"]\n")).unwrap_err();
        assert_eq!(
            (unknown.line, unknown.key.as_str()),
            (5, "plugins.p.grants")
        );
        assert!(unknown.message.contains("unknown grant `fs`"), "{unknown}");

        let missing = parse(&format!("{base}grants = [\"http:billing\"]\n")).unwrap_err();
        assert_eq!(missing.line, 5);
        assert!(
            missing.message.contains("unknown upstream `billing`"),
            "{missing}"
        );
    }
}
