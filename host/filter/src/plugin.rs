//! A compiled, linked plugin: its kind and contract version, its limits,
//! and the capabilities its configuration grants.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wasmtime::component::InstancePre;

use crate::capability::Capabilities;
use crate::config::{FailurePolicy, PluginConfig};
use crate::cpu::CpuShare;
use crate::error::FilterFailure;
use crate::kinds::{Exports, Kind};
use crate::proxy_wasm;
use crate::slots::Slots;
use crate::state::FilterState;
use sluice_state::{Fallback, Scope};

/// A plugin ready to be instantiated cheaply.
pub struct Plugin {
    /// The name from the configuration.
    pub name: Arc<str>,
    /// The component file.
    pub path: PathBuf,
    /// Which phase it runs in.
    pub kind: Kind,
    /// The version of `sluice:filter` it was built for.
    pub contract: &'static str,
    /// Skip the filter when it fails, rather than failing the request.
    pub fail_open: bool,
    /// Where its buckets and entries live, if it says.
    pub state: Option<Scope>,
    /// What its cluster rate limits do without Redis, if it says.
    pub fallback: Option<Fallback>,
    pub(crate) code: PluginCode,
    pub(crate) memory_limit: usize,
    pub(crate) call_timeout: Duration,
    pub(crate) caps: Arc<Capabilities>,
    pub(crate) max_requests: u32,
    /// Meters its long-running calls.
    pub(crate) cpu: Arc<CpuShare>,
    /// One per call in flight.
    pub(crate) slots: Arc<Slots>,
    /// proxy-wasm: the root configuration it runs with from load.
    configuration: Option<String>,
    /// See [`Plugin::always_kept`]; decided once, read on every call.
    always_kept: bool,
}

/// What a plugin runs.
pub(crate) enum PluginCode {
    /// A component, instantiated per pool slot.
    Component {
        pre: InstancePre<FilterState>,
        exports: Exports,
    },
    /// A proxy-wasm module and its VMs.
    ProxyWasm(Arc<proxy_wasm::Module>),
}

/// Code linked, not yet a plugin.
pub(crate) enum Linked {
    Component {
        pre: InstancePre<FilterState>,
        exports: Exports,
    },
    ProxyWasm {
        pre: wasmtime::InstancePre<proxy_wasm::VmState>,
    },
}

impl Plugin {
    pub(crate) fn new(
        name: &str,
        path: &Path,
        linked: Linked,
        contract: &'static str,
        config: &PluginConfig,
        caps: Capabilities,
    ) -> Plugin {
        let caps = Arc::new(caps);
        let cpu = Arc::new(CpuShare::new(config.cpu_share, workers()));
        let slots = Slots::new(config.max_concurrency as usize);
        let fail_open = config.on_failure == FailurePolicy::Open;
        let memory_limit = (config.memory_limit_mib as usize) << 20;
        let (kind, code) = match linked {
            Linked::Component { pre, exports } => {
                (exports.kind(), PluginCode::Component { pre, exports })
            }
            Linked::ProxyWasm { pre } => {
                let limits = proxy_wasm::Limits {
                    name: name.into(),
                    fail_open,
                    slots: slots.clone(),
                    memory_limit,
                    call_timeout: config.call_timeout,
                    cpu: cpu.clone(),
                    caps: caps.clone(),
                };
                let vm_config = Bytes::from(config.vm_config.clone().unwrap_or_default());
                let data = caps.proxy_data.clone();
                let module = proxy_wasm::Module::new(limits, pre, vm_config, data);
                (Kind::HttpFilter, PluginCode::ProxyWasm(module))
            }
        };
        Plugin {
            name: name.into(),
            path: path.to_owned(),
            kind,
            contract,
            fail_open,
            state: config.state.as_ref().map(|s| *s.get_ref()),
            fallback: config.fallback,
            code,
            memory_limit,
            call_timeout: config.call_timeout,
            caps,
            max_requests: config.max_requests_per_instance.max(1),
            cpu,
            slots,
            configuration: config.configuration.clone(),
            always_kept: matches!(contract, "0.2.1" | "0.2.0" | "0.1.0" | "unknown"),
        }
    }

    /// What a proxy-wasm plugin with a configuration of its own runs from
    /// load, without a route (a root context: timers, queues, logs).
    pub async fn start(&self) -> Result<(), crate::PluginError> {
        match (&self.code, &self.configuration) {
            (PluginCode::ProxyWasm(module), Some(config)) => module.configure(config).await,
            _ => Ok(()),
        }
    }

    /// The component and its exports, unless it is a proxy-wasm module.
    pub(crate) fn component(&self) -> Option<(&InstancePre<FilterState>, &Exports)> {
        match &self.code {
            PluginCode::Component { pre, exports } => Some((pre, exports)),
            PluginCode::ProxyWasm(_) => None,
        }
    }

    /// A failure of this plugin (a trap, a timeout, an overload, an answer
    /// the proxy cannot use, ...): counted by why, and by what its failure
    /// policy makes of it (`failed_open`: skipped, or `failed_closed`).
    pub fn failed(&self, kind: &'static str, reason: impl Into<String>) -> FilterFailure {
        self.caps.count_failure(kind, self.fail_open);
        FilterFailure::new(self.name.clone(), kind, reason)
    }

    /// Whether every request keeps its instance for its response call, as
    /// contracts before 0.2.2 promised (later ones ask with `keep-instance`).
    pub(crate) fn always_kept(&self) -> bool {
        self.always_kept
    }
}

/// The threads serving requests: what a plugin's `cpu_share` is a share of.
fn workers() -> usize {
    tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers())
}
