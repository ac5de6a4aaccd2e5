//! The shared wasmtime engine: compiling plugins once, linking their imports,
//! and the epoch clock that bounds every call's running time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
};

use super::bindings::{self, Host_};
use tokio::sync::Semaphore;

use super::capabilities::Capabilities;
use super::cpu::CpuShare;
use super::error::PluginError;
use super::instance::FilterState;
use crate::config::PluginConfig;

/// How often the epoch advances: a running call is looked at (and yields) once a tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// The policy kind a plugin implements, in the order their phases run on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Establishes the identity.
    Auth,
    /// Picks a token bucket.
    RateLimit,
    /// Edits requests and responses.
    Transform,
    /// Anything on request and response.
    HttpFilter,
    /// Picks the upstream.
    Routing,
    /// Steers the response cache.
    CachePolicy,
}

impl Kind {
    /// The WIT interface name, for messages.
    pub fn interface(self) -> &'static str {
        match self {
            Kind::Auth => "auth",
            Kind::RateLimit => "rate-limit",
            Kind::Transform => "transform",
            Kind::HttpFilter => "http-filter",
            Kind::Routing => "routing",
            Kind::CachePolicy => "cache-policy",
        }
    }
}

/// Export lookups for each kind, resolved once per plugin.
pub(crate) enum Exports {
    Auth(bindings::auth::GuestIndices),
    RateLimit(bindings::rate_limit::GuestIndices),
    Transform(bindings::transform::GuestIndices),
    HttpFilter(bindings::http_filter::GuestIndices),
    Routing(bindings::routing::GuestIndices),
    CachePolicy(bindings::cache_policy::GuestIndices),
}

impl Exports {
    fn kind(&self) -> Kind {
        match self {
            Exports::Auth(_) => Kind::Auth,
            Exports::RateLimit(_) => Kind::RateLimit,
            Exports::Transform(_) => Kind::Transform,
            Exports::HttpFilter(_) => Kind::HttpFilter,
            Exports::Routing(_) => Kind::Routing,
            Exports::CachePolicy(_) => Kind::CachePolicy,
        }
    }
}

/// A compiled, linked plugin, ready to be instantiated cheaply.
pub struct Plugin {
    /// The name from the configuration.
    pub name: Arc<str>,
    /// The component file.
    pub path: PathBuf,
    /// Which phase it runs in.
    pub kind: Kind,
    pub(crate) pre: InstancePre<FilterState>,
    pub(crate) exports: Exports,
    /// Limits and failure policy from the configuration.
    pub memory_limit: usize,
    pub(crate) call_timeout: Duration,
    pub(crate) caps: Arc<Capabilities>,
    pub(crate) max_requests: u32,
    /// Skip the filter when it fails, rather than failing the request.
    pub fail_open: bool,
    /// Meters its long-running calls.
    pub(crate) cpu: Arc<CpuShare>,
    /// One permit per call in flight.
    pub(crate) slots: Arc<Semaphore>,
}

/// The wasmtime engine and linker shared by every plugin.
#[derive(Clone)]
pub struct FilterEngine {
    engine: Engine,
    linker: Arc<Linker<FilterState>>,
    cache: Option<Cache>,
}

impl FilterEngine {
    /// An engine with the pooling allocator, async calls and epoch deadlines,
    /// plus a thread that ticks the epoch for as long as the engine lives.
    /// With `cache_dir`, compiled components are kept there, keyed by the
    /// sha256 of their bytes (and the compiler's settings), so a restart
    /// does not compile an unchanged plugin again.
    pub fn new(cache_dir: Option<&Path>) -> anyhow::Result<FilterEngine> {
        let mut config = Config::new();
        let cache = match cache_dir {
            Some(dir) => {
                let mut settings = CacheConfig::new();
                settings.with_directory(dir);
                Some(Cache::new(settings).map_err(anyhow::Error::from)?)
            }
            None => None,
        };
        config.cache(cache.clone());
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(2_000)
            .total_core_instances(8_000)
            .total_memories(2_000)
            .total_tables(4_000)
            .total_stacks(2_000)
            .max_memory_size(256 << 20);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(anyhow::Error::from)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
        Host_::add_to_linker::<_, HasSelf<FilterState>>(&mut linker, |s| s)
            .map_err(anyhow::Error::from)?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || tick_epochs(weak))?;
        Ok(FilterEngine {
            engine,
            linker: Arc::new(linker),
            cache,
        })
    }

    /// Compile a component (or fetch it from the disk cache).
    pub fn compile(&self, bytes: &[u8]) -> Result<Component, String> {
        Component::new(&self.engine, bytes).map_err(|e| format!("not a valid component: {e:#}"))
    }

    /// Compilations answered from the disk cache, and those that were not.
    pub fn cache_stats(&self) -> Option<(usize, usize)> {
        self.cache
            .as_ref()
            .map(|c| (c.cache_hits(), c.cache_misses()))
    }

    /// The kind of policy a compiled component implements.
    pub fn kind(&self, component: &Component) -> Result<Kind, String> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| format!("imports something Sluice does not offer: {e:#}"))?;
        Ok(find_exports(&pre)?.kind())
    }

    /// Link a compiled plugin (from `path`, for messages) and find its kind;
    /// `caps` are the capabilities its configuration grants.
    pub fn load(
        &self,
        name: &str,
        path: &Path,
        component: &Component,
        config: &PluginConfig,
        caps: Capabilities,
    ) -> Result<Plugin, PluginError> {
        let err = |reason: String| PluginError::Load {
            plugin: name.to_owned(),
            path: path.to_owned(),
            reason,
        };
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| err(format!("imports something Sluice does not offer: {e:#}")))?;
        let exports = find_exports(&pre).map_err(err)?;
        let kind = exports.kind();
        Ok(Plugin {
            name: name.into(),
            path: path.to_owned(),
            kind,
            pre,
            exports,
            memory_limit: (config.memory_limit_mib as usize) << 20,
            call_timeout: config.call_timeout,
            caps: Arc::new(caps),
            max_requests: config.max_requests_per_instance.max(1),
            fail_open: config.on_failure == crate::config::FailurePolicy::Open,
            cpu: Arc::new(CpuShare::new(config.cpu_share, workers())),
            slots: Arc::new(Semaphore::new(config.max_concurrency as usize)),
        })
    }
}

/// Exactly one policy interface must be exported; it decides the plugin's phase.
fn find_exports(pre: &InstancePre<FilterState>) -> Result<Exports, String> {
    let mut found = Vec::new();
    if let Ok(i) = bindings::auth::GuestIndices::new(pre) {
        found.push(Exports::Auth(i));
    }
    if let Ok(i) = bindings::rate_limit::GuestIndices::new(pre) {
        found.push(Exports::RateLimit(i));
    }
    if let Ok(i) = bindings::transform::GuestIndices::new(pre) {
        found.push(Exports::Transform(i));
    }
    if let Ok(i) = bindings::http_filter::GuestIndices::new(pre) {
        found.push(Exports::HttpFilter(i));
    }
    if let Ok(i) = bindings::routing::GuestIndices::new(pre) {
        found.push(Exports::Routing(i));
    }
    if let Ok(i) = bindings::cache_policy::GuestIndices::new(pre) {
        found.push(Exports::CachePolicy(i));
    }
    match found.len() {
        1 => Ok(found.pop().expect("one export")),
        0 => Err("exports no `sluice:filter` policy interface (auth, rate-limit, transform, routing, cache-policy, http-filter); is it built with the Sluice SDK?".into()),
        _ => Err("exports more than one policy interface; a plugin implements one kind".into()),
    }
}

/// The threads serving requests: what a plugin's `cpu_share` is a share of.
fn workers() -> usize {
    tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers())
}

/// Holds the engine weakly, so the thread ends when the last gateway using it is gone.
fn tick_epochs(engine: wasmtime::EngineWeak) {
    while let Some(engine) = engine.upgrade() {
        engine.increment_epoch();
        drop(engine);
        std::thread::sleep(EPOCH_TICK);
    }
}
