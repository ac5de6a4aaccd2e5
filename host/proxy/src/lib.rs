//! Sluice's data path, one module per stage:
//! [`listener`] → [`edge`] (one view of each request) → [`router`] → the
//! route's [`phases`] (its filters, then the [`cache`]) → [`upstream`] →
//! back through the phases → client. [`gateway`] takes one request along
//! it, [`translate`] turns gRPC-Web and JSON into a route's gRPC and back,
//! the [`access_log`] tells of each and [`trace`] follows it in spans;
//! [`config`] describes it all;
//! [`overview`] is what the admin API shows of it.
#![deny(missing_docs)]

pub mod access_log;
pub mod body;
pub mod cache;
pub mod compress;
pub mod config;
pub mod edge;
pub mod gateway;
pub mod listener;
pub mod metrics;
pub mod overview;
pub mod phases;
pub mod router;
pub mod tcp;
pub mod tls;
pub mod trace;
pub mod translate;
pub mod udp;
pub mod upgrade;
pub mod upstream;

pub use gateway::{Gateway, Route, Shared};
