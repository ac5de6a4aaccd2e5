//! The host capabilities a plugin can use, one unit per module. Each unit
//! owns its grant check (what the plugin's configuration allows), the state
//! it binds for a plugin, and its linking: the WIT imports it implements,
//! in both versions of the contract, on a view it borrows from the
//! instance's store data through a trait of its own (`KvHost::kv`, as
//! wasmtime-wasi's `WasiHttpView` does). So a unit knows what it stands on
//! (the bindings, the handles, its grant) and nothing of the instance
//! above it, whose `FilterState` implements every view ([`Host`]).
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
pub(crate) mod crypto;
mod grant;
pub(crate) mod keys;
pub(crate) mod kv;
pub(crate) mod metrics;
pub(crate) mod outbound;
mod refusals;
pub(crate) mod sandbox;
pub(crate) mod types;
pub(crate) mod wasi_http;

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::component::Linker;
use wasmtime_wasi::WasiView;
use wasmtime_wasi_http::WasiHttpView;

use crate::config::PluginConfig;
use crate::error::HostError;
use crate::metrics::{FilterMetrics, labels};
pub use grant::Grant;
pub use outbound::HttpUpstream;
pub(crate) use refusals::Refusals;
use sluice_state::Stores;

/// The capabilities a grant can give, by name (`deny` takes these).
pub const CAPABILITIES: [&str; 4] = ["kv", "metrics", "crypto", "http"];

/// The capability an imported interface needs, from its name
/// (`sluice:filter/kv@0.2.5` needs `kv`); `None` for what every plugin has.
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
/// on is refused before it runs, with every such import named at once.
/// Answers the grants the component has no use for (it imports nothing
/// they give), to warn about: a grant that was meant for another plugin.
pub fn check_imports(imports: &[String], config: &PluginConfig) -> Result<Vec<String>, String> {
    let grants = granted(config);
    let mut unsettled: Vec<String> = Vec::new();
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
            unsettled.push(format!(
                "`{import}` needs the `{grant}` grant (or `\"{capability}\"` in `deny`)"
            ));
        }
    }
    if !unsettled.is_empty() {
        return Err(format!(
            "it imports what its configuration neither grants nor denies: {}; add each to `grants`, \
             or to `deny` to load it with every such call refused",
            unsettled.join("; ")
        ));
    }
    let unused = grants
        .iter()
        .filter(|g| {
            !imports
                .iter()
                .any(|i| capability_of(i) == Some(g.capability()))
        })
        .map(ToString::to_string)
        .collect();
    Ok(unused)
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
    /// Where `kv` keeps its state: each plugin's `state` picks one.
    pub stores: Stores,
    /// The upstreams `http:<name>` grants may name.
    pub upstreams: HashMap<String, Arc<dyn HttpUpstream>>,
    /// Where calls, failures, refusals and plugin metrics are counted.
    pub metrics: Arc<FilterMetrics>,
    /// proxy-wasm plugins' shared data and queues, by plugin: kept by the
    /// gateway, so they outlive reloads.
    pub proxy_data: Arc<crate::proxy_wasm::shared::ProxyData>,
}

impl Services {
    /// Services for a plugin run on its own (tests, `sluice plugin`): an
    /// in-memory store, no upstreams, metrics in a registry of their own.
    pub fn standalone() -> Services {
        Services {
            stores: Stores::local(),
            upstreams: HashMap::new(),
            metrics: Arc::new(FilterMetrics::new(crate::metrics::Registry::new())),
            proxy_data: Arc::default(),
        }
    }
}

/// One plugin's capabilities, bound from its configuration's grants.
pub struct Capabilities {
    pub(crate) plugin: Arc<str>,
    pub(crate) refusals: Refusals,
    pub(crate) kv: kv::Kv,
    pub(crate) outbound: Arc<outbound::Outbound>,
    pub(crate) metrics: metrics::PluginMetrics,
    pub(crate) crypto: crypto::Crypto,
    pub(crate) output: types::Output,
    /// Its shared data and queues, if it is a proxy-wasm filter.
    pub(crate) proxy_data: Arc<crate::proxy_wasm::shared::SharedData>,
    /// Where its shared data lives when its state is the cluster's.
    pub(crate) shared_store: Option<Arc<sluice_state::RedisStore>>,
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
            kv: kv::Kv::bind(&grants, config, &services.stores, refusals.clone()),
            outbound: Arc::new(outbound::Outbound::bind(
                &grants,
                config,
                &services.upstreams,
                refusals.clone(),
            )),
            metrics: metrics::PluginMetrics::bind(&grants, &services.metrics, refusals.clone()),
            crypto: crypto::Crypto::bind(&grants, refusals.clone()),
            output: types::Output::of(config),
            proxy_data: services.proxy_data.of(name),
            shared_store: match config.state.as_ref().map(|s| *s.get_ref()) {
                Some(sluice_state::Scope::Local) => None,
                Some(sluice_state::Scope::Cluster) => services.stores.cluster.clone(),
                None if services.stores.default_scope == sluice_state::Scope::Cluster => {
                    services.stores.cluster.clone()
                }
                None => None,
            },
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

/// What an instance's store data lends the capabilities: a view for each,
/// and WASI's. The instance's `FilterState` is the one implementation.
pub(crate) trait Host:
    WasiView
    + WasiHttpView
    + types::TypesHost
    + sandbox::SandboxHost
    + basics::BasicsHost
    + kv::KvHost
    + outbound::OutboundHost
    + metrics::MetricsHost
    + crypto::CryptoHost
    + Send
    + 'static
{
}

/// Link every unit's imports, in both versions of the contract, and WASI
/// (with nothing in it: standard libraries need it to start).
pub(crate) fn link<T: Host>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
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
