//! Generated bindings, kept out of the public API. One module per world so a
//! plugin's component exports only the kind it implements; the imports are
//! generated once and shared.

#![allow(missing_docs, unsafe_code, clippy::all)]

pub mod imports {
    wit_bindgen::generate!({ path: "../wit", world: "imports" });
}

macro_rules! world {
    ($module:ident, $world:literal) => {
        pub mod $module {
            wit_bindgen::generate!({
                path: "../wit",
                world: $world,
                pub_export_macro: true,
                export_macro_name: "export",
                with: {
                    "sluice:filter/types@0.1.0": crate::bindings::imports::sluice::filter::types,
                    "sluice:filter/log@0.1.0": crate::bindings::imports::sluice::filter::log,
                    "sluice:filter/clock@0.1.0": crate::bindings::imports::sluice::filter::clock,
                    "sluice:filter/kv@0.1.0": crate::bindings::imports::sluice::filter::kv,
                    "sluice:filter/outbound@0.1.0": crate::bindings::imports::sluice::filter::outbound,
                    "sluice:filter/metrics@0.1.0": crate::bindings::imports::sluice::filter::metrics,
                },
            });
        }
    };
}

world!(auth_world, "auth-filter");
world!(rate_limit_world, "rate-limit-filter");
world!(transform_world, "transform-filter");
world!(routing_world, "routing-filter");
world!(cache_policy_world, "cache-policy-filter");
world!(general_world, "general-filter");
