//! The shared wasmtime engine: compiling components once (cached on disk by
//! their sha256), linking every capability, and the epoch clock that lets a
//! running call be looked at, yield and be stopped.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
};

use crate::capability::{self, Capabilities};
use crate::config::PluginConfig;
use crate::error::PluginError;
use crate::kinds::{Exports, Kind};
use crate::plugin::Plugin;
use crate::state::FilterState;

/// How often the epoch advances: a running call is looked at (and yields) once a tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// A compiled component that is a Sluice filter, not yet bound to a configuration.
#[derive(Clone)]
pub struct Compiled {
    /// The compiled code.
    pub component: Component,
    /// The kind of policy it implements.
    pub kind: Kind,
    /// The version of `sluice:filter` it was built for.
    pub contract: &'static str,
    /// The interfaces it imports, by name (`sluice:filter/kv@0.2.3`, `wasi:cli/environment@0.2.0`).
    pub imports: Arc<[String]>,
    /// The interfaces it exports, by name (`sluice:filter/transform@0.2.3`).
    pub exports: Arc<[String]>,
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
        FilterEngine::with_instances(cache_dir, FilterEngine::DEFAULT_INSTANCES)
    }

    /// Instances live at once unless configured (`[engine] max_instances`).
    pub const DEFAULT_INSTANCES: u32 = 2_000;

    /// [`FilterEngine::new`] with room for `instances` live instances at
    /// once (each reserves its memory's address space up front, ~4 GiB: a
    /// small pool lets a tool such as valgrind run the engine).
    pub fn with_instances(
        cache_dir: Option<&Path>,
        instances: u32,
    ) -> anyhow::Result<FilterEngine> {
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
        pool.total_component_instances(instances)
            .total_core_instances(4 * instances)
            .total_memories(instances)
            .total_tables(2 * instances)
            .total_stacks(instances)
            .max_memory_size(256 << 20);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(anyhow::Error::from)?;

        let mut linker = Linker::new(&engine);
        capability::link(&mut linker).map_err(anyhow::Error::from)?;

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

    /// Compile a component (or fetch it from the disk cache) and check
    /// that it is a Sluice filter this gateway can link.
    pub fn compile(&self, bytes: &[u8]) -> Result<Compiled, String> {
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| format!("not a valid component: {e:#}"))?;
        let kind = Exports::find(&self.pre(&component)?)?.kind();
        let ty = component.component_type();
        let imports = ty
            .imports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let exports = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        Ok(Compiled {
            contract: contract_of(&self.engine, &component),
            imports,
            exports,
            component,
            kind,
        })
    }

    fn pre(&self, component: &Component) -> Result<InstancePre<FilterState>, String> {
        self.linker
            .instantiate_pre(component)
            .map_err(|e| format!("imports something Sluice does not offer: {e:#}"))
    }

    /// Compilations answered from the disk cache, and those that were not.
    pub fn cache_stats(&self) -> Option<(usize, usize)> {
        self.cache
            .as_ref()
            .map(|c| (c.cache_hits(), c.cache_misses()))
    }

    /// Link a compiled plugin (from `path`, for messages) and find its kind;
    /// `caps` are the capabilities its configuration grants.
    pub fn load(
        &self,
        name: &str,
        path: &Path,
        compiled: &Compiled,
        config: &PluginConfig,
        caps: Capabilities,
    ) -> Result<Plugin, PluginError> {
        let err = |reason: String| PluginError::Load {
            plugin: name.to_owned(),
            path: path.to_owned(),
            reason,
        };
        for unused in capability::check_imports(&compiled.imports, config).map_err(err)? {
            tracing::warn!(
                plugin = name,
                grant = %unused,
                "plugin `{name}` is granted `{unused}` but imports nothing that uses it"
            );
        }
        let pre = self.pre(&compiled.component).map_err(err)?;
        let exports = Exports::find(&pre).map_err(err)?;
        Ok(Plugin::new(
            name,
            path,
            pre,
            exports,
            compiled.contract,
            config,
            caps,
        ))
    }
}

/// The version of `sluice:filter` a component exports, as it names it
/// (the host links a 0.2.0, 0.2.1 or 0.2.2 component with its 0.2.3 bindings).
fn contract_of(engine: &Engine, component: &Component) -> &'static str {
    const KNOWN: [&str; 5] = [crate::CONTRACT, "0.2.2", "0.2.1", "0.2.0", "0.1.0"];
    component
        .component_type()
        .exports(engine)
        .filter_map(|(name, _)| name.strip_prefix("sluice:filter/")?.split_once('@'))
        .find_map(|(_, version)| KNOWN.into_iter().find(|known| *known == version))
        .unwrap_or("unknown")
}

/// Holds the engine weakly, so the thread ends when the last gateway using it is gone.
fn tick_epochs(engine: wasmtime::EngineWeak) {
    while let Some(engine) = engine.upgrade() {
        engine.increment_epoch();
        drop(engine);
        std::thread::sleep(EPOCH_TICK);
    }
}
