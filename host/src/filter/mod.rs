//! The filter engine: WebAssembly components that implement the WIT contract
//! in `wit/`, compiled once, instantiated ahead of time and run per request.

mod bindings;
mod capabilities;
mod chain;
mod cpu;
mod engine;
mod error;
mod host;
mod instance;

pub use capabilities::Capabilities;
pub use chain::{FilterChain, Reply, RequestOutcome, StoreDecision};
pub use engine::{FilterEngine, Kind, Plugin};
pub use error::{FilterFailure, PluginError};
pub use instance::InstancePool;
