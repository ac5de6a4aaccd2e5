//! Generated bindings, kept out of the public API. One module per policy
//! kind's world (from the kinds table), so a plugin's component exports only
//! the kind it implements; the imports are generated once and shared.

#![allow(missing_docs, unsafe_code, clippy::all)]

pub mod imports {
    // Borrowed arguments: an edit list or a record is passed without
    // copying its strings first.
    wit_bindgen::generate!({
        path: "../wit",
        world: "imports",
        ownership: Borrowing { duplicate_if_necessary: false },
    });
}

macro_rules! worlds {
    (
        connection: [$( $CKind:ident $csnake:ident $cinterface:literal $cworld:literal
            connect: $connect:ident $call_connect:ident; )*]
        request: [$( $Kind:ident $snake:ident $interface:literal $world:literal
            request: $request:ident $call_request:ident
            response: [$($response:ident $call_response:ident)?]; )*]
    ) => {
        worlds!(@each $(($csnake $cworld))* $(($snake $world))*);
    };
    (@each $(($snake:ident $world:literal))*) => {
        $(
            #[doc = concat!("The `", $world, "` world.")]
            pub mod $snake {
                wit_bindgen::generate!({
                    path: "../wit",
                    world: $world,
                    pub_export_macro: true,
                    export_macro_name: "export",
                    with: {
                        "sluice:filter/types@0.2.5": crate::bindings::imports::sluice::filter::types,
                        "sluice:filter/log@0.2.5": crate::bindings::imports::sluice::filter::log,
                        "sluice:filter/clock@0.2.5": crate::bindings::imports::sluice::filter::clock,
                        "sluice:filter/kv@0.2.5": crate::bindings::imports::sluice::filter::kv,
                        "sluice:filter/outbound@0.2.5": crate::bindings::imports::sluice::filter::outbound,
                        "sluice:filter/metrics@0.2.5": crate::bindings::imports::sluice::filter::metrics,
                        "sluice:filter/crypto@0.2.5": crate::bindings::imports::sluice::filter::crypto,
                    },
                });
            }
        )*
    };
}

sluice_kinds::for_each_kind!(worlds);
