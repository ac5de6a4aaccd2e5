//! Write [Sluice](https://github.com/) gateway filters in Rust.
//!
//! A filter is a WebAssembly component that implements one policy kind:
//! [`Auth`], [`RateLimit`], [`Transform`], [`Routing`], [`CachePolicy`] or the
//! general [`HttpFilter`]. Implement [`Plugin`] (your typed configuration) and
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
//! [`metrics`] (grant `metrics`) and [`outbound`] HTTP to named upstreams
//! (grant `http:<upstream>`).
#![deny(missing_docs)]

#[doc(hidden)]
pub mod bindings;
mod http;
pub mod kv;
pub mod log;
pub mod metrics;
pub mod outbound;
mod policy;

pub use http::{Headers, Identity, Reply, Request, Response};
pub use policy::{
    Action, Auth, AuthDecision, CacheLookup, CachePolicy, CacheStore, HttpFilter, Limit, Plugin,
    RateLimit, RouteTo, Routing, Transform, Verdict,
};

/// Export a type as a Sluice filter of one kind:
/// `export!(auth: MyAuth)`, `export!(rate_limit: ..)`, `export!(transform: ..)`,
/// `export!(routing: ..)`, `export!(cache_policy: ..)` or `export!(http_filter: ..)`.
#[macro_export]
macro_rules! export {
    (auth: $ty:ty) => {
        $crate::__export_world!($ty, auth_world, auth, {
                fn authenticate(
                    req: &$crate::bindings::imports::sluice::filter::types::Request,
                ) -> $crate::bindings::auth_world::exports::sluice::filter::auth::AuthDecision {
                    __with(|p| $crate::__rt::authenticate(p, req))
                }});
    };
    (rate_limit: $ty:ty) => {
        $crate::__export_world!($ty, rate_limit_world, rate_limit, {
                fn check(
                    req: &$crate::bindings::imports::sluice::filter::types::Request,
                ) -> Option<$crate::bindings::rate_limit_world::exports::sluice::filter::rate_limit::Limit> {
                    __with(|p| $crate::__rt::check(p, req))
                }});
    };
    (transform: $ty:ty) => {
        $crate::__export_world!($ty, transform_world, transform, {
                fn on_request(
                    req: &$crate::bindings::imports::sluice::filter::types::Request,
                ) -> $crate::bindings::transform_world::exports::sluice::filter::transform::RequestAction {
                    __with(|p| $crate::__rt::transform_request(p, req))
                }
                fn on_response(
                    req: &$crate::bindings::imports::sluice::filter::types::Request,
                    resp: &$crate::bindings::imports::sluice::filter::types::Response,
                ) -> $crate::bindings::imports::sluice::filter::types::ResponsePhase {
                    __with(|p| $crate::__rt::transform_response(p, req, resp))
                }});
    };
    (routing: $ty:ty) => {
        $crate::__export_world!($ty, routing_world, routing, {
                fn select(
                    req: &$crate::bindings::imports::sluice::filter::types::Request,
                ) -> Option<$crate::bindings::routing_world::exports::sluice::filter::routing::RouteDecision> {
                    __with(|p| $crate::__rt::select(p, req))
                }});
    };
    (cache_policy: $ty:ty) => {
        $crate::__export_world!($ty, cache_policy_world, cache_policy, {
                fn on_request(
                    req: &$crate::bindings::imports::sluice::filter::types::Request,
                ) -> $crate::bindings::cache_policy_world::exports::sluice::filter::cache_policy::Lookup {
                    __with(|p| $crate::__rt::cache_lookup(p, req))
                }
                fn on_response(
                    req: &$crate::bindings::imports::sluice::filter::types::Request,
                    resp: &$crate::bindings::imports::sluice::filter::types::Response,
                ) -> $crate::bindings::cache_policy_world::exports::sluice::filter::cache_policy::Store {
                    __with(|p| $crate::__rt::cache_store(p, req, resp))
                }});
    };
    (http_filter: $ty:ty) => {
        $crate::__export_world!($ty, general_world, http_filter, {
                fn on_request(
                    req: &$crate::bindings::imports::sluice::filter::types::Request,
                ) -> $crate::bindings::general_world::exports::sluice::filter::http_filter::Verdict {
                    __with(|p| $crate::__rt::filter_request(p, req))
                }
                fn on_response(
                    req: &$crate::bindings::imports::sluice::filter::types::Request,
                    resp: &$crate::bindings::imports::sluice::filter::types::Response,
                ) -> $crate::bindings::imports::sluice::filter::types::ResponsePhase {
                    __with(|p| $crate::__rt::filter_response(p, req, resp))
                }});
    };
}

/// The part of [`export!`] every kind shares: the instance slot and `init`.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_world {
    ($ty:ty, $world:ident, $interface:ident, { $($methods:tt)* }) => {
        const _: () = {
            struct __SluiceExport;

            ::std::thread_local! {
                static __PLUGIN: ::std::cell::RefCell<::std::option::Option<$ty>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            fn __with<R>(f: impl FnOnce(&$ty) -> R) -> R {
                __PLUGIN.with(|slot| f(slot.borrow().as_ref().expect("sluice calls init before anything else")))
            }

            impl $crate::bindings::$world::exports::sluice::filter::$interface::Guest for __SluiceExport {
                fn init(config: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                    let plugin = $crate::__rt::init::<$ty>(&config)?;
                    __PLUGIN.with(|slot| *slot.borrow_mut() = ::std::option::Option::Some(plugin));
                    ::std::result::Result::Ok(())
                }
                $($methods)*
            }

            $crate::bindings::$world::export!(__SluiceExport with_types_in $crate::bindings::$world);
        };
    };
}

#[doc(hidden)]
pub mod __rt;
