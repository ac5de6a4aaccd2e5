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
use crate::plugin::{Linked, Plugin};
use crate::proxy_wasm;
use crate::state::FilterState;

/// How often the epoch advances: a running call is looked at (and yields) once a tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// What a plugin file compiled to.
#[derive(Clone)]
pub enum Code {
    /// A component exporting a `sluice:filter` kind.
    Component(Component),
    /// A core module exporting proxy-wasm's ABI marker.
    ProxyWasm(wasmtime::Module),
}

/// A compiled component that is a Sluice filter, not yet bound to a configuration.
#[derive(Clone)]
pub struct Compiled {
    /// The compiled code.
    pub code: Code,
    /// The kind of policy it implements.
    pub kind: Kind,
    /// The version of `sluice:filter` it was built for (`proxy-wasm 0.2.1`
    /// for a proxy-wasm module).
    pub contract: &'static str,
    /// The interfaces it imports, by name (`sluice:filter/kv@0.2.5`, `wasi:cli/environment@0.2.0`).
    pub imports: Arc<[String]>,
    /// The interfaces it exports, by name (`sluice:filter/transform@0.2.5`).
    pub exports: Arc<[String]>,
}

/// The wasmtime engine and linker shared by every plugin.
#[derive(Clone)]
pub struct FilterEngine {
    engine: Engine,
    linker: Arc<Linker<FilterState>>,
    /// proxy-wasm's host functions, for core modules.
    proxy_linker: Arc<wasmtime::Linker<proxy_wasm::VmState>>,
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
        let mut proxy_linker = wasmtime::Linker::new(&engine);
        proxy_wasm::link(&mut proxy_linker).map_err(anyhow::Error::from)?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || tick_epochs(weak))?;
        Ok(FilterEngine {
            engine,
            linker: Arc::new(linker),
            proxy_linker: Arc::new(proxy_linker),
            cache,
        })
    }

    /// Compile a component (or fetch it from the disk cache) and check
    /// that it is a Sluice filter this gateway can link.
    pub fn compile(&self, bytes: &[u8]) -> Result<Compiled, String> {
        // A core module's header: the magic, then version 1.
        if bytes.get(..8) == Some(b"\0asm\x01\0\0\0") {
            return self.compile_module(bytes);
        }
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
            code: Code::Component(component),
            kind,
        })
    }

    /// A core module: a proxy-wasm filter, or refused.
    fn compile_module(&self, bytes: &[u8]) -> Result<Compiled, String> {
        let module = wasmtime::Module::new(&self.engine, bytes)
            .map_err(|e| format!("not a valid module: {e:#}"))?;
        let Some(abi) = proxy_wasm::abi_of(&module) else {
            return Err(
                "a core module, not a component, and not a proxy-wasm filter either \
                 (it exports no `proxy_abi_version_0_2_1` or `proxy_abi_version_0_2_0`)"
                    .into(),
            );
        };
        self.proxy_linker
            .instantiate_pre(&module)
            .map_err(|e| format!("imports something Sluice does not offer: {e:#}"))?;
        let named = |module: &str, name: &str| format!("{module}::{name}");
        Ok(Compiled {
            contract: match abi {
                "0.2.0" => "proxy-wasm 0.2.0",
                _ => "proxy-wasm 0.2.1",
            },
            imports: module
                .imports()
                .map(|i| named(i.module(), i.name()))
                .collect(),
            exports: module.exports().map(|e| e.name().to_owned()).collect(),
            code: Code::ProxyWasm(module),
            kind: Kind::HttpFilter,
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
        let linked = match &compiled.code {
            Code::Component(component) => {
                for unused in capability::check_imports(&compiled.imports, config).map_err(err)? {
                    tracing::warn!(
                        plugin = name,
                        grant = %unused,
                        "plugin `{name}` is granted `{unused}` but imports nothing that uses it"
                    );
                }
                let pre = self.pre(component).map_err(err)?;
                let exports = Exports::find(&pre).map_err(err)?;
                Linked::Component { pre, exports }
            }
            // Every SDK imports the whole table whatever a filter uses:
            // grants are checked when a call is made.
            Code::ProxyWasm(module) => Linked::ProxyWasm {
                pre: self
                    .proxy_linker
                    .instantiate_pre(module)
                    .map_err(|e| err(format!("{e:#}")))?,
            },
        };
        Ok(Plugin::new(
            name,
            path,
            linked,
            compiled.contract,
            config,
            caps,
        ))
    }
}

/// The version of `sluice:filter` a component exports, as it names it
/// (the host links a 0.2.0 to 0.2.4 component with its 0.2.5 bindings).
fn contract_of(engine: &Engine, component: &Component) -> &'static str {
    const KNOWN: [&str; 7] = [
        crate::CONTRACT,
        "0.2.4",
        "0.2.3",
        "0.2.2",
        "0.2.1",
        "0.2.0",
        "0.1.0",
    ];
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
