//! The end-to-end suites, a module each, in one test binary: the gateway is
//! linked once, not once a suite. Run them with `cargo nextest run`, which
//! gives every test a process of its own, so the tests that measure their
//! process's memory (`reload`, `streaming`) share it with nobody.

mod auth;
mod balance;
mod cache;
mod capabilities;
mod contract;
mod edge;
mod faults;
mod filters;
mod isolation;
mod jose;
mod layer4;
mod observe;
mod policies;
mod protocols;
mod proxy;
mod proxy_wasm;
mod reload;
mod streaming;
mod translate;
mod vetted;
