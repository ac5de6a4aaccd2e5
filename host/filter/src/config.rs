//! A plugin's configuration: its component, the limits it runs under, its
//! failure policy and the capabilities it is granted.

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;
use sluice_state::{Fallback, Scope};
use toml::Spanned;

/// A WebAssembly component and the limits it runs under.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Path to the `.wasm` component, relative to the configuration file.
    pub path: Spanned<PathBuf>,
    /// Run only a component with exactly this content: its sha256, in hex.
    /// Checked (with its signature, under `[trust]`) before it is compiled.
    pub sha256: Option<Spanned<String>>,
    /// Its detached minisign signature, relative to the configuration file
    /// (default: the component's path with `.minisig` added).
    pub signature: Option<PathBuf>,
    /// Most linear memory one instance may have, in MiB.
    #[serde(default = "defaults::memory_limit_mib")]
    pub memory_limit_mib: u32,
    /// Most bytes of header fields one call may add (names and values,
    /// counted as set, appended or replied with); a call past it fails.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// Most bytes of body one call may set or reply with; a call past it fails.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: ByteSize,
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
    /// Capabilities it imports but is not given (`kv`, `metrics`, `crypto`,
    /// `http`): its calls to them fail `not-granted`. A plugin that imports
    /// a capability neither granted nor denied is refused at load.
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    /// The longest an outbound HTTP call may take.
    #[serde(default = "defaults::outbound_timeout", with = "humantime_serde")]
    pub outbound_timeout: Duration,
    /// Where its rate-limit buckets and key-value entries live: `local` (this
    /// process) or `cluster` (`[state]`'s Redis); `[state] default` unless set.
    pub state: Option<Spanned<Scope>>,
    /// What its cluster rate limits do while Redis cannot answer: `local`,
    /// `open` or `closed`; `[state] fallback` unless set.
    pub fallback: Option<Fallback>,
    /// proxy-wasm: the VM configuration `proxy_on_vm_start` reads.
    pub vm_config: Option<String>,
    /// proxy-wasm: a root configuration the plugin runs with from load,
    /// without any route (timers, queues and logs, as Envoy runs bootstrap
    /// extensions).
    pub configuration: Option<String>,
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

mod defaults {
    use std::time::Duration;

    use bytesize::ByteSize;

    pub fn memory_limit_mib() -> u32 {
        64
    }
    pub fn max_header_bytes() -> ByteSize {
        ByteSize::kib(64)
    }
    pub fn max_body_bytes() -> ByteSize {
        ByteSize::mib(8)
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
}
