//! Sluice's data path, one module per stage:
//! [`listener`] → [`edge`] (one view of each request) → [`router`] → the
//! route's filter [`chain`] → [`upstream`] (or the [`cache`]) → back
//! through the chain → client. [`gateway`] ties them together per request;
//! [`config`] describes it all.
#![deny(missing_docs)]

pub mod body;
pub mod cache;
pub mod chain;
pub mod config;
pub mod edge;
pub mod gateway;
pub mod listener;
pub mod router;
pub mod tls;
pub mod upstream;

pub use gateway::{Gateway, Route, Shared};
