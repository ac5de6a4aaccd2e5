//! The policy kinds of `sluice:filter`, listed once. A plugin implements
//! exactly one kind: the WIT interface it exports, which decides its phase.
//! The host (its enum of kinds, the exports it looks for, how it calls
//! them) and the guest SDK (its `export!` arms) are generated from this
//! list, and a test holds the README's table to it.
//!
//! [`for_each_kind!`] calls a macro with every kind, in two groups, each
//! in the order its phases run: the kinds called on a connection when it
//! is accepted (TCP listeners), then those called on each HTTP request:
//!
//! ```text
//! $callback! {
//!     connection: [ $( $Kind:ident $snake:ident $interface:literal $world:literal
//!                      connect: $connect:ident $call_connect:ident ; )* ]
//!     request: [ $( $Kind:ident $snake:ident $interface:literal $world:literal
//!                   request: $request:ident $call_request:ident
//!                   response: [$($response:ident $call_response:ident)?] ; )* ]
//! }
//! ```
//!
//! - `Kind`: the Rust name of the kind (and of the SDK trait a plugin implements);
//! - `snake`: the generated bindings' module (and the `export!` keyword);
//! - `interface` and `world`: the WIT interface it exports and the world a plugin targets;
//! - `connect`: its export called on each connection (the function a guest
//!   implements, and the name of the host's generated call for it);
//! - `request`: likewise, its export called on each request;
//! - `response`: the same for its export called on the response, if it has one.
#![no_std]
#![deny(missing_docs)]

/// Call `$callback!` with every policy kind, in phase order (see the crate
/// docs). Tokens after the callback's name (`for_each_kind!(cb, $)`) are
/// passed first, which lets a callback define a macro of its own.
#[macro_export]
macro_rules! for_each_kind {
    ($callback:ident $(, $($first:tt)*)?) => {
        $callback! {
            $($($first)*)?
            connection: [
                Connection connection "connection" "connection-filter"
                    connect: on_connect call_on_connect;
            ]
            request: [
                Auth auth "auth" "auth-filter"
                    request: authenticate call_authenticate
                    response: [];
                RateLimit rate_limit "rate-limit" "rate-limit-filter"
                    request: check call_check
                    response: [];
                Transform transform "transform" "transform-filter"
                    request: on_request call_on_request
                    response: [on_response call_on_response];
                HttpFilter http_filter "http-filter" "general-filter"
                    request: on_request call_on_request
                    response: [on_response call_on_response];
                Routing routing "routing" "routing-filter"
                    request: select call_select
                    response: [];
                CachePolicy cache_policy "cache-policy" "cache-policy-filter"
                    request: on_request call_on_request
                    response: [on_response call_on_response];
            ]
        }
    };
}
