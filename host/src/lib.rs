//! Sluice: a programmable HTTP gateway whose policy runs as sandboxed
//! WebAssembly components.
//!
//! The data path, one module per stage:
//! [`listener`] → [`edge`] (one view of each request) → [`router`] → [`filter`] (the chain of plugins) →
//! [`upstream`] (or the [`cache`]) → back through [`filter`] → client; [`proxy`] ties them
//! together per request, and [`config`] describes it all.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let server = sluice::Server::from_file("sluice.toml".as_ref()).await?;
//! println!("listening on {:?}", server.local_addrs());
//! server.serve().await;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod body;
pub mod cache;
pub mod config;
pub mod control;
pub mod demo;
pub mod edge;
pub mod exchange;
pub mod filter;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod router;
pub mod server;
pub mod state;
pub mod tls;
pub mod upstream;

pub use config::{Config, ConfigError};
pub use server::Server;
