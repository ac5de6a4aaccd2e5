//! The one place the WIT contract is turned into Rust for the host.
#![allow(missing_docs)] // generated

use wasmtime::component::bindgen;

/// Host side of a `headers` handle: rep 0 is the request's, rep 1 the response's.
pub struct HeadersHandle;
/// Host side of the `request` handle passed to a call (the current exchange's request).
pub struct RequestHandle;
/// Host side of the `response` handle passed to a call (the current exchange's response).
pub struct ResponseHandle;

bindgen!({
    path: "../../wit",
    world: "host",
    imports: {
        // These wait on the state store or the network.
        "sluice:filter/kv": async | trappable,
        "sluice:filter/outbound": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    with: {
        "sluice:filter/types.headers": HeadersHandle,
        "sluice:filter/types.request": RequestHandle,
        "sluice:filter/types.response": ResponseHandle,
    },
});

pub use self::exports::sluice::filter::{
    auth, cache_policy, http_filter, rate_limit, routing, transform,
};
pub use self::sluice::filter::{clock, kv, log, metrics, outbound, types};
