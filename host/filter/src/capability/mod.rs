//! The host capabilities a plugin can use, one unit per module. Each unit
//! owns its grant check (what the plugin's configuration allows), the state
//! it binds for a plugin, and its linking: the WIT imports it implements,
//! in both versions of the contract, on a view it borrows from the
//! instance's store data (as wasmtime-wasi's `WasiHttpView` does).
//!
//! - [`types`]: the request, response and headers handles (always);
//! - [`basics`]: logging and the clock (always);
//! - [`kv`]: the key-value store, counters and token buckets (grant `kv`);
//! - [`outbound`]: HTTP to named upstreams (grant `http:<name>`);
//! - [`metrics`]: metrics the plugin defines (grant `metrics`);
//! - [`crypto`]: digests, HMAC and signature verification (grant `crypto`).
//!
//! A refused call is an error the plugin can handle (`not-granted`), and
//! the log and `sluice_capability_denied_total` name the plugin and grant.

pub(crate) mod basics;
pub mod crypto;
pub(crate) mod kv;
pub(crate) mod metrics;
pub(crate) mod outbound;
pub(crate) mod sandbox;
pub mod types;
pub(crate) mod wasi_http;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use wasmtime::component::Linker;

use crate::config::PluginConfig;
use crate::error::HostError;
use crate::instance::FilterState;
use crate::metrics::{FilterMetrics, labels};
use crate::store::StateStore;
pub use outbound::HttpUpstream;

/// A capability a plugin's configuration can grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Grant {
    /// The key-value store, counters and token buckets (`kv`).
    Kv,
    /// Defining metrics (`metrics`).
    Metrics,
    /// Outbound HTTP to one named upstream (`http:<name>`).
    Http(String),
    /// Digests, HMAC and signature verification (`crypto`).
    Crypto,
}

impl std::str::FromStr for Grant {
    type Err = String;

    fn from_str(s: &str) -> Result<Grant, String> {
        match s {
            "kv" => Ok(Grant::Kv),
            "metrics" => Ok(Grant::Metrics),
            "crypto" => Ok(Grant::Crypto),
            _ => match s.strip_prefix("http:") {
                Some(upstream) if !upstream.is_empty() => Ok(Grant::Http(upstream.to_owned())),
                _ => Err(format!(
                    "unknown grant `{s}`; grants are `kv`, `metrics`, `crypto` and `http:<upstream>`"
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
            Grant::Crypto => f.write_str("crypto"),
            Grant::Http(upstream) => write!(f, "http:{upstream}"),
        }
    }
}

impl Grant {
    /// The capability it grants (`http` for any `http:<upstream>`).
    pub fn capability(&self) -> &'static str {
        match self {
            Grant::Kv => "kv",
            Grant::Metrics => "metrics",
            Grant::Crypto => "crypto",
            Grant::Http(_) => "http",
        }
    }

    /// Parse a configured grant, checking the upstream an `http:` grant names.
    pub fn check(text: &str, upstream_exists: impl Fn(&str) -> bool) -> Result<Grant, String> {
        match text.parse()? {
            Grant::Http(upstream) if !upstream_exists(&upstream) => {
                Err(format!("unknown upstream `{upstream}`"))
            }
            grant => Ok(grant),
        }
    }
}

/// The capabilities a grant can give, by name (`deny` takes these).
pub const CAPABILITIES: [&str; 4] = ["kv", "metrics", "crypto", "http"];

/// The capability an imported interface needs, from its name
/// (`sluice:filter/kv@0.2.3` needs `kv`); `None` for what every plugin has.
pub fn capability_of(import: &str) -> Option<&'static str> {
    // `wasi:http` is outbound HTTP by another name (see `wasi_http`).
    if import.starts_with("wasi:http/") {
        return Some("http");
    }
    let interface = import.strip_prefix("sluice:filter/")?;
    match interface.split('@').next()? {
        "kv" => Some("kv"),
        "metrics" => Some("metrics"),
        "crypto" => Some("crypto"),
        "outbound" => Some("http"),
        _ => None,
    }
}

/// Check that the configuration settles every capability a component
/// imports: granted, or denied on purpose (its calls then fail
/// `not-granted`). A plugin that could reach for something nobody decided
/// on is refused before it runs.
pub fn check_imports(imports: &[String], config: &PluginConfig) -> Result<(), String> {
    let grants = granted(config);
    for import in imports {
        let Some(capability) = capability_of(import) else {
            continue;
        };
        let granted = grants.iter().any(|g| g.capability() == capability);
        let denied = config.deny.iter().any(|d| d.get_ref() == capability);
        if !granted && !denied {
            let grant = match capability {
                "http" => "http:<upstream>",
                other => other,
            };
            return Err(format!(
                "it imports `{import}`, which needs the `{grant}` grant: add it to `grants`, \
                 or `\"{capability}\"` to `deny` to load it with every such call refused"
            ));
        }
    }
    Ok(())
}

/// The grants a plugin's configuration lists (checked when it was loaded).
fn granted(config: &PluginConfig) -> Vec<Grant> {
    config
        .grants
        .iter()
        .filter_map(|g| g.get_ref().parse().ok())
        .collect()
}

/// What the gateway offers plugins: the services capabilities bind to.
#[derive(Clone)]
pub struct Services {
    /// Where `kv` keeps its state.
    pub store: Arc<dyn StateStore>,
    /// The upstreams `http:<name>` grants may name.
    pub upstreams: HashMap<String, Arc<dyn HttpUpstream>>,
    /// Where calls, failures, refusals and plugin metrics are counted.
    pub metrics: Arc<FilterMetrics>,
}

impl Services {
    /// Services for a plugin run on its own (tests, `sluice plugin`): an
    /// in-memory store, no upstreams, metrics in a registry of their own.
    pub fn standalone() -> Services {
        Services {
            store: Arc::new(crate::store::MemoryStore::default()),
            upstreams: HashMap::new(),
            metrics: Arc::new(FilterMetrics::new(crate::metrics::Registry::new())),
        }
    }
}

/// One plugin's capabilities, bound from its configuration's grants.
pub struct Capabilities {
    pub(crate) plugin: Arc<str>,
    pub(crate) refusals: Refusals,
    pub(crate) kv: kv::Kv,
    pub(crate) outbound: outbound::Outbound,
    pub(crate) metrics: metrics::PluginMetrics,
    pub(crate) crypto: crypto::Crypto,
    pub(crate) output: types::Output,
    counters: Arc<FilterMetrics>,
}

impl Capabilities {
    /// The capabilities the configuration of plugin `name` grants, bound to `services`.
    pub fn bind(name: &str, config: &PluginConfig, services: &Services) -> Capabilities {
        let plugin: Arc<str> = name.into();
        let grants = granted(config);
        let refusals = Refusals {
            plugin: plugin.clone(),
            metrics: services.metrics.clone(),
        };
        Capabilities {
            kv: kv::Kv::bind(&grants, services, refusals.clone()),
            outbound: outbound::Outbound::bind(&grants, config, services, refusals.clone()),
            metrics: metrics::PluginMetrics::bind(&grants, services, refusals.clone()),
            crypto: crypto::Crypto::bind(&grants, refusals.clone()),
            output: types::Output::of(config),
            refusals,
            counters: services.metrics.clone(),
            plugin,
        }
    }

    /// The counter of this plugin's calls in `phase`.
    pub(crate) fn calls(&self, phase: &str) -> prometheus_client::metrics::counter::Counter {
        self.counters
            .calls
            .get_or_create(&labels([("plugin", &self.plugin), ("phase", phase)]))
            .clone()
    }

    /// The histogram of this plugin's call durations in `phase`.
    pub(crate) fn call_seconds(
        &self,
        phase: &str,
    ) -> prometheus_client::metrics::histogram::Histogram {
        self.counters
            .call_seconds
            .get_or_create(&labels([("plugin", &self.plugin), ("phase", phase)]))
            .clone()
    }

    /// Count a failure of this plugin, by why (`trap`, `timeout`, ...) and
    /// by the outcome its failure policy gives it.
    pub(crate) fn count_failure(&self, reason: &str, fail_open: bool) {
        self.counters
            .failures
            .get_or_create(&labels([("plugin", &self.plugin), ("reason", reason)]))
            .inc();
        let outcome = if fail_open {
            "failed_open"
        } else {
            "failed_closed"
        };
        self.counters
            .outcomes
            .get_or_create(&labels([("plugin", &self.plugin), ("outcome", outcome)]))
            .inc();
    }
}

/// How a unit refuses a call for want of a grant.
#[derive(Clone)]
pub(crate) struct Refusals {
    plugin: Arc<str>,
    metrics: Arc<FilterMetrics>,
}

impl Refusals {
    /// Refuse a call for want of `grant`, saying so in the log (at a bounded
    /// rate) and the metrics.
    pub(crate) fn refuse(&self, grant: &Grant) -> HostError {
        let plugin = &*self.plugin;
        crate::log_throttled!(
            warn,
            ("capability refused", plugin, grant),
            plugin,
            %grant,
            "capability refused: plugin `{plugin}` has no `{grant}` grant"
        );
        self.metrics
            .denied
            .get_or_create(&labels([("plugin", plugin), ("grant", &grant.to_string())]))
            .inc();
        HostError::NotGranted(format!(
            "capability refused: `{grant}` is not granted (add it to `plugins.{plugin}.grants`)"
        ))
    }

    /// Refuse an edit of a header the gateway keeps itself, saying so in
    /// the log (at a bounded rate) and the metrics.
    pub(crate) fn refuse_edit(&self, header: &http::HeaderName) -> HostError {
        let plugin = &*self.plugin;
        crate::log_throttled!(
            warn,
            ("edit refused", plugin, header.as_str()),
            plugin,
            %header,
            "plugin `{plugin}` may not change `{header}`: the gateway keeps it right"
        );
        self.metrics
            .refused_edits
            .get_or_create(&labels([("plugin", plugin), ("header", header.as_str())]))
            .inc();
        HostError::Invalid(format!(
            "a filter may not change `{header}`: the gateway keeps it right"
        ))
    }

    /// Note that the plugin looked for what the sandbox does not have
    /// (`filesystem`, `environment`), in the log (at a bounded rate) and
    /// the metrics.
    pub(crate) fn refuse_sandbox(&self, what: &'static str) {
        let plugin = &*self.plugin;
        // Info, not a warning: standard libraries ask on their own too (Rust's
        // panic handler reads the environment).
        crate::log_throttled!(
            info,
            ("sandbox", plugin, what),
            plugin,
            what,
            "plugin `{plugin}` asked for its {what}: a plugin has none"
        );
        self.metrics
            .sandboxed
            .get_or_create(&labels([("plugin", plugin), ("what", what)]))
            .inc();
    }

    /// The plugin these refusals are for.
    pub(crate) fn plugin(&self) -> &str {
        &self.plugin
    }
}

/// Link every unit's imports, in both versions of the contract, and WASI
/// (with nothing in it: standard libraries need it to start).
pub(crate) fn link(linker: &mut Linker<FilterState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    sandbox::link(linker)?;
    types::link(linker)?;
    basics::link(linker)?;
    kv::link(linker)?;
    outbound::link(linker)?;
    metrics::link(linker)?;
    crypto::link(linker)?;
    wasi_http::link(linker)?;
    Ok(())
}

/// The WIT `error` of the current contract.
impl From<HostError> for crate::bindings::v2::types::Error {
    fn from(error: HostError) -> Self {
        use crate::bindings::v2::types::Error;
        match error {
            HostError::NotGranted(m) => Error::NotGranted(m),
            HostError::Unavailable(m) => Error::Unavailable(m),
            HostError::Invalid(m) => Error::Invalid(m),
            HostError::Timeout(m) => Error::Timeout(m),
            HostError::Limit(m) => Error::Limit(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_and_name_known_upstreams() {
        let known = |u: &str| u == "auth";
        assert_eq!(Grant::check("kv", known), Ok(Grant::Kv));
        assert_eq!(
            Grant::check("http:auth", known),
            Ok(Grant::Http("auth".into()))
        );
        assert!(
            Grant::check("http:billing", known)
                .unwrap_err()
                .contains("unknown upstream")
        );
        assert!(
            Grant::check("fs", known)
                .unwrap_err()
                .contains("unknown grant `fs`")
        );
        assert_eq!(Grant::Http("auth".into()).to_string(), "http:auth");
    }
}
