//! Sluice's WebAssembly filter runtime: plugins that implement the WIT
//! contract in `wit/`, compiled once, linked to the host capabilities
//! their configuration grants, and called from pools of warm instances.
//! It knows nothing of listeners or upstreams, so a plugin can be loaded
//! and exercised on its own.
#![deny(missing_docs)]

mod bindings;
mod capabilities;
pub mod config;
mod cpu;
mod engine;
mod error;
pub mod exchange;
mod host;
mod instance;
pub mod logging;
pub mod metrics;
pub mod ratelimit;
pub mod state;

pub use bindings::{auth, cache_policy, http_filter, rate_limit, routing, transform, types};
pub use capabilities::{Capabilities, HttpUpstream};
pub use engine::{FilterEngine, Kind, Plugin};
pub use error::{FilterFailure, PluginError};
pub use instance::InstancePool;
