//! The TOML configuration: its schema, and loading it with errors that name
//! the file, the line and the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sluice_filter::Grant;
use sluice_filter::config::PluginConfig;
use sluice_proxy::access_log::AccessLogConfig;
use sluice_proxy::config::{CacheConfig, ListenerConfig, RouteConfig, UpstreamConfig};
use sluice_proxy::edge::PathRules;
use sluice_proxy::router::Matcher;
use sluice_proxy::trace::TracingConfig;
use sluice_state::{Scope, StateConfig};
use toml::Spanned;

pub use crate::source::{ConfigError, Source};
use crate::trust::{Trust, TrustConfig};

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
    /// One line per request, when configured.
    pub access_log: Option<Spanned<AccessLogConfig>>,
    /// Spans to an OpenTelemetry collector, when configured (read at start).
    pub tracing: Option<Spanned<TracingConfig>>,
    /// The fleet's shared state (Redis), when configured (read at start).
    pub state: Option<Spanned<StateConfig>>,
    /// Take the rest of the configuration from etcd, shared by a fleet
    /// (read at start).
    pub fleet: Option<Spanned<crate::fleet::FleetConfig>>,
    /// The admin listener (metrics, reloads, plugin versions), off unless configured.
    pub admin: Option<AdminConfig>,
    /// What triggers a reload besides `SIGHUP` and the admin API.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// How plugins are compiled.
    #[serde(default)]
    pub engine: EngineConfig,
    /// How plugins are pulled from OCI registries (`path = "oci://..."`).
    #[serde(default)]
    pub oci: crate::oci::OciConfig,
    /// The keys whose signatures a plugin needs before it is loaded.
    #[serde(default)]
    pub trust: TrustConfig,
    /// Those keys, read when the file was (key files may change between reloads).
    #[serde(skip)]
    pub trusted: Trust,
    /// The file this was read from; relative plugin paths resolve against its folder.
    #[serde(skip)]
    pub source: Source,
}

/// Top-level keys that only an instance's own file may set.
const INSTANCE_KEYS: [&str; 6] = ["listeners", "admin", "fleet", "state", "engine", "reload"];

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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Where compiled components are cached, keyed by sha256. Defaults to
    /// `$XDG_CACHE_HOME/sluice` (or `~/.cache/sluice`); `""` turns it off.
    pub cache_dir: Option<PathBuf>,
    /// Plugin instances that may be live at once, across the gateway. Each
    /// reserves its memory's address space (about 4 GiB, not resident) when
    /// the gateway starts; lower it where address space is limited (a
    /// `ulimit -v`, valgrind). Past it, a new instance fails to start.
    #[serde(default = "defaults::max_instances")]
    pub max_instances: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cache_dir: None,
            max_instances: defaults::max_instances(),
        }
    }
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

mod defaults {
    pub fn yes() -> bool {
        true
    }
    pub fn max_instances() -> u32 {
        sluice_filter::FilterEngine::DEFAULT_INSTANCES
    }
}

impl Config {
    /// Read and parse `path`, checking the schema (not yet the plugins).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::parse(path, Self::read(path)?)
    }

    /// The text of the file at `path`.
    pub fn read(path: &Path) -> Result<String, ConfigError> {
        std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: 0,
            key: String::new(),
            message: format!("cannot read: {e}"),
        })
    }

    /// Parse `text` as if read from `path`.
    pub fn parse(path: &Path, text: String) -> Result<Config, ConfigError> {
        Self::from_source(Source::new(path, text))
    }

    /// The bootstrap `text` read from `path` with a fleet's configuration
    /// `doc` (from etcd, named `name`) after it. The fleet's document may
    /// not hold what belongs to one instance (its listeners, admin, state
    /// store, engine and fleet settings).
    pub fn with_fleet(
        path: &Path,
        text: &str,
        name: &str,
        doc: &str,
    ) -> Result<Config, ConfigError> {
        let source = Source::joined(path, text, name, doc);
        let start = source.text().len() - doc.len();
        let mut at = start;
        let mut top_level = true;
        for line in doc.lines() {
            let trimmed = line.trim_start();
            let header = trimmed.starts_with('[');
            top_level &= !header;
            let key = trimmed
                .trim_start_matches('[')
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
                .next()
                .unwrap_or("");
            if (header || top_level) && INSTANCE_KEYS.contains(&key) {
                return Err(source.error(
                    at,
                    key,
                    "belongs to each instance's own file, not to the fleet's configuration",
                ));
            }
            at += line.len() + 1;
        }
        Self::from_source(source)
    }

    fn from_source(source: Source) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(source.text()).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            // toml's message is one line; its Display adds a source excerpt we replace with file:line.
            source.error(at, "", e.message().trim().to_owned())
        })?;
        config.source = source;
        config.check_references()?;
        config.trusted = Trust::load(&config.trust, &config.source)?;
        Ok(config)
    }

    /// The route's display name: its `name`, or `route-N` by position.
    pub fn route_name(&self, index: usize) -> String {
        self.routes[index].name(index)
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
                let address = target.address();
                if address.parse::<http::uri::Authority>().is_err() || !address.contains(':') {
                    return Err(src.error(
                        upstream.targets.span().start,
                        key,
                        format!("`{address}` is not a `host:port`"),
                    ));
                }
                if target.weight() == 0 {
                    return Err(src.error(
                        upstream.targets.span().start,
                        key,
                        format!("`{address}`: a weight must be at least 1"),
                    ));
                }
            }
            if let Err(message) = upstream.check() {
                return Err(src.error(
                    upstream.targets.span().start,
                    format!("upstreams.{name}"),
                    message,
                ));
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
            if let Some(Err(error)) = crate::oci::Reference::of_path(plugin.path.get_ref()) {
                return Err(src.error(
                    plugin.path.span().start,
                    format!("plugins.{name}.path"),
                    error,
                ));
            }
            let hex = |pin: &str| {
                let hex = pin.strip_prefix("sha256:").unwrap_or(pin);
                hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
            };
            if let Some(pin) = &plugin.sha256
                && !hex(pin.get_ref())
            {
                return Err(src.error(
                    pin.span().start,
                    format!("plugins.{name}.sha256"),
                    "a pin is a sha256 in hex (64 digits, `sha256:` before them or not): the \
                     component's (`sha256sum` prints it), or for a plugin from a registry, \
                     its manifest's",
                ));
            }
            for denied in &plugin.deny {
                if !sluice_filter::CAPABILITIES.contains(&denied.get_ref().as_str()) {
                    return Err(src.error(
                        denied.span().start,
                        format!("plugins.{name}.deny"),
                        format!(
                            "unknown capability `{}`; `deny` takes {}",
                            denied.get_ref(),
                            sluice_filter::CAPABILITIES.join(", ")
                        ),
                    ));
                }
            }
            if let Some(state) = &plugin.state
                && *state.get_ref() == Scope::Cluster
                && self.state.is_none()
            {
                return Err(src.error(
                    state.span().start,
                    format!("plugins.{name}.state"),
                    "`cluster` needs a [state] store",
                ));
            }
            for grant in &plugin.grants {
                Grant::check(grant.get_ref(), |u| self.upstreams.contains_key(u)).map_err(
                    |message| {
                        src.error(
                            grant.span().start,
                            format!("plugins.{name}.grants"),
                            message,
                        )
                    },
                )?;
            }
        }
        // Each route's compiled matcher, to find one that repeats an earlier.
        let mut seen = std::collections::HashMap::new();
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
                let message = match sluice_proxy::edge::path::normalize(path, PathRules::default())
                {
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
                if let Some(&earlier) = seen.get(&matcher) {
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
                seen.insert(matcher, i);
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
        for (i, listener) in self.listeners.iter().enumerate() {
            let Some(tcp) = &listener.tcp else { continue };
            for (j, filter) in tcp.get_ref().filters.iter().enumerate() {
                let plugin = &filter.plugin;
                let key = format!("listeners[{i}].tcp.filters[{j}]");
                let message = if !self.plugins.contains_key(plugin.get_ref()) {
                    format!("unknown plugin `{}`", plugin.get_ref())
                } else if filter.body || filter.state.is_some() {
                    "a connection filter takes neither `body` nor `state`".into()
                } else {
                    continue;
                };
                return Err(src.error(plugin.span().start, key, message));
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
    fn cluster_state_needs_a_state_store() {
        let plugin = "[plugins.p]\npath = \"p.wasm\"\nstate = \"cluster\"\n";
        let refused = parse(plugin).unwrap_err();
        assert_eq!((refused.line, refused.key.as_str()), (3, "plugins.p.state"));
        assert!(
            refused.message.contains("needs a [state] store"),
            "{refused}"
        );
        let state = "[state]\nurl = \"redis://127.0.0.1:6379\"\n";
        assert!(parse(&format!("{state}{plugin}")).is_ok());
        let typo = parse(&format!("{state}fallback = \"maybe\"\n")).unwrap_err();
        assert_eq!(typo.line, 3, "{typo}");
        assert!(typo.message.contains("unknown variant `maybe`"), "{typo}");
    }

    #[test]
    fn grants_are_reported_at_their_line() {
        let base =
            "[upstreams.auth]\ntargets = [\"127.0.0.1:9\"]\n[plugins.p]\npath = \"p.wasm\"\n";
        let ok = parse(&format!(
            "{base}grants = [\"kv\", \"metrics\", \"http:auth\"]\n"
        ))
        .unwrap();
        assert_eq!(ok.plugins["p"].grants.len(), 3);

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

    #[test]
    fn a_route_that_repeats_an_earlier_one_is_refused() {
        let route = |m: &str| format!("[[routes]]\nmatch = {m}\nupstream = \"a\"\n");
        let base = "[upstreams.a]\ntargets = [\"127.0.0.1:9\"]\n".to_owned()
            + &route("{ path_prefix = \"/a\", methods = [\"GET\", \"POST\"] }")
            + &route("{ path_prefix = \"/b\" }");
        assert!(parse(&base).is_ok());
        // The same conditions written another way: a trailing `/`, methods reordered.
        let again =
            parse(&(base + &route("{ methods = [\"post\", \"GET\"], path_prefix = \"/a/\" }")))
                .unwrap_err();
        assert_eq!((again.line, again.key.as_str()), (11, "routes[2].match"));
        assert!(
            again
                .message
                .contains("matches exactly what route `route-0` before it does"),
            "{again}"
        );
    }
}
