//! Write [Sluice](https://github.com/) gateway filters in Rust.
//!
//! A filter is a WebAssembly component that implements one policy kind:
//! [`Auth`], [`RateLimit`], [`Transform`], [`Routing`], [`CachePolicy`], the
//! general [`HttpFilter`], or [`Connection`] for TCP listeners' connections. Implement [`Plugin`] (your typed configuration) and
//! the kind's trait, export it with [`export!`], and build for `wasm32-wasip2`.
//!
//! ```no_run
//! use serde::Deserialize;
//! use sluice_sdk::{Action, Plugin, Request, Transform};
//!
//! /// Adds a fixed header to every request.
//! struct Stamp {
//!     value: String,
//! }
//!
//! #[derive(Deserialize)]
//! struct Config {
//!     value: String,
//! }
//!
//! impl Plugin for Stamp {
//!     type Config = Config;
//!     fn new(config: Config) -> Result<Self, String> {
//!         if config.value.is_empty() {
//!             return Err("`value` must not be empty".into());
//!         }
//!         Ok(Stamp { value: config.value })
//!     }
//! }
//!
//! impl Transform for Stamp {
//!     fn on_request(&self, req: &Request) -> Action {
//!         let _ = req.headers().set("x-stamp", &self.value);
//!         Action::Forward
//!     }
//! }
//!
//! sluice_sdk::export!(transform: Stamp);
//! ```
//!
//! One instance of your type serves many requests in turn (never two at
//! once); the gateway may replace it at any time, so keep durable state in
//! the gateway ([`kv`]), not in the instance.
//!
//! Beyond [`log`] and the clock, host capabilities must be granted in the
//! plugin's configuration (`grants = [...]`), or their calls return an error:
//! [`kv`] (key-value store, counters, token buckets: grant `kv`),
//! [`metrics`] (grant `metrics`), [`crypto`] (digests, HMAC, signatures at
//! native speed: grant `crypto`) and [`outbound`] HTTP to named upstreams
//! (grant `http:<upstream>`).
#![deny(missing_docs)]

#[doc(hidden)]
pub mod bindings;
pub mod crypto;
mod error;
mod http;
pub mod kv;
pub mod log;
pub mod metrics;
pub mod outbound;
mod policy;

pub use error::Error;
pub use http::{Edit, Headers, Identity, Reply, Request, Response};
pub use policy::{
    Action, Auth, AuthDecision, CacheLookup, CachePolicy, CacheStore, Connection, ConnectionInfo,
    ConnectionVerdict, HttpFilter, Limit, Plugin, RateLimit, RouteTo, Routing, Transform, Verdict,
};

/// Say, from `on_response`, that this configuration has nothing to do
/// there: the gateway stops calling the filter's response phase on its
/// route (a call saved per request), as it does for a filter without one.
pub fn skip_response_phase() {
    __rt::response_phase_unused();
}

/// Defines [`export!`] with one arm per policy kind, from the kinds table.
macro_rules! define_export {
    ($d:tt
        connection: [$( $CKind:ident $csnake:ident $cinterface:literal $cworld:literal
            connect: $connect:ident $call_connect:ident; )*]
        request: [$( $Kind:ident $snake:ident $interface:literal $world:literal
            request: $request:ident $call_request:ident
            response: [$($response:ident $call_response:ident)?]; )*]
    ) => {
        define_export!(@each $d $($csnake)* $($snake)*);
    };
    (@each $d:tt $($snake:ident)*) => {
        /// Export a type as a Sluice filter of one kind, naming the kind by
        /// its trait in snake case: `export!(auth: MyAuth)`,
        /// `export!(rate_limit: ..)`, `export!(transform: ..)`,
        /// `export!(http_filter: ..)`, `export!(routing: ..)`,
        /// `export!(cache_policy: ..)` or `export!(connection: ..)`.
        #[macro_export]
        macro_rules! export {
            $(
                ($snake: $d ty:ty) => {
                    const _: () = {
                        type __SluiceExport = $d crate::__rt::Export<$d ty>;
                        $d crate::bindings::$snake::export!(
                            __SluiceExport with_types_in $d crate::bindings::$snake
                        );
                    };
                };
            )*
        }
    };
}

// The `$` lets `define_export` write the matchers of the macro it defines.
sluice_kinds::for_each_kind!(define_export, $);

#[doc(hidden)]
pub mod __rt;
