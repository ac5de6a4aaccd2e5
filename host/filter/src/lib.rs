//! Sluice's WebAssembly filter runtime: plugins that implement the WIT
//! contract in `wit/` (`sluice:filter@0.2.5`, 0.2.4, 0.2.3, 0.2.2, 0.2.1, 0.2.0, or the previous 0.1.0),
//! compiled once, linked to the host capabilities their configuration
//! grants, and called from pools of warm instances under CPU, memory and
//! concurrency limits. It knows nothing of listeners or upstreams, so a
//! plugin can be loaded and exercised on its own:
//!
//! ```no_run
//! # async fn run(bytes: &[u8]) -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use sluice_filter::{Answer, Capabilities, Exchange, Filter, FilterEngine, Services};
//!
//! let engine = FilterEngine::new(None)?;
//! let compiled = engine.compile(bytes).map_err(anyhow::Error::msg)?;
//! let config: sluice_filter::config::PluginConfig = toml::from_str(r#"path = "p.wasm""#)?;
//! let services = Services::standalone();
//! let caps = Capabilities::bind("p", &config, &services);
//! let plugin = engine.load("p", "p.wasm".as_ref(), &compiled, &config, caps)?;
//! let filter = Filter::new(Arc::new(plugin), "{}".into(), false).await?;
//! let (head, ()) = http::Request::get("/x").body(())?.into_parts();
//! let mut exchange = Box::new(Exchange::new(1, head, [127, 0, 0, 1].into(), "r".into()));
//! let (answer, _lease) = filter.on_request(&mut exchange).await?;
//! assert_eq!(answer, Answer::Next);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod answer;
mod bindings;
mod capability;
pub mod config;
mod connection;
mod cpu;
mod engine;
mod error;
mod exchange;
mod handles;
mod instance;
mod kinds;
pub mod logging;
pub mod metrics;
mod plugin;
mod pool;
pub mod proxy_wasm;
mod slots;
mod state;

pub use answer::{Answer, Limit, Reply, ResponseAnswer, StoreDecision};
pub use capability::{CAPABILITIES, Capabilities, Grant, HttpUpstream, Services, capability_of};
pub use connection::{ConnectVerdict, Connection};
pub use engine::{Compiled, FilterEngine};
pub use error::{FilterFailure, HostError, PluginError};
pub use exchange::{Exchange, Identity, ip_text};
pub use kinds::Kind;
pub use plugin::Plugin;
pub use pool::{Filter, Lease};

/// The version of `sluice:filter` in `wit/`: what new plugins are built against.
pub const CONTRACT: &str = "0.2.5";
