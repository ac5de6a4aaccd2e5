//! A compiled, linked plugin: its kind and contract version, its limits,
//! and the capabilities its configuration grants.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use wasmtime::component::InstancePre;

use crate::capability::Capabilities;
use crate::config::{FailurePolicy, PluginConfig};
use crate::cpu::CpuShare;
use crate::error::FilterFailure;
use crate::kinds::{Exports, Kind};
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
    pub(crate) pre: InstancePre<FilterState>,
    pub(crate) exports: Exports,
    pub(crate) memory_limit: usize,
    pub(crate) call_timeout: Duration,
    pub(crate) caps: Arc<Capabilities>,
    pub(crate) max_requests: u32,
    /// Meters its long-running calls.
    pub(crate) cpu: Arc<CpuShare>,
    /// One permit per call in flight.
    pub(crate) slots: Arc<Semaphore>,
}

impl Plugin {
    pub(crate) fn new(
        name: &str,
        path: &Path,
        pre: InstancePre<FilterState>,
        exports: Exports,
        contract: &'static str,
        config: &PluginConfig,
        caps: Capabilities,
    ) -> Plugin {
        Plugin {
            name: name.into(),
            path: path.to_owned(),
            kind: exports.kind(),
            contract,
            fail_open: config.on_failure == FailurePolicy::Open,
            state: config.state.as_ref().map(|s| *s.get_ref()),
            fallback: config.fallback,
            pre,
            exports,
            memory_limit: (config.memory_limit_mib as usize) << 20,
            call_timeout: config.call_timeout,
            caps: Arc::new(caps),
            max_requests: config.max_requests_per_instance.max(1),
            cpu: Arc::new(CpuShare::new(config.cpu_share, workers())),
            slots: Arc::new(Semaphore::new(config.max_concurrency as usize)),
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
        matches!(self.contract, "0.2.1" | "0.2.0" | "0.1.0" | "unknown")
    }
}

/// The threads serving requests: what a plugin's `cpu_share` is a share of.
fn workers() -> usize {
    tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers())
}
