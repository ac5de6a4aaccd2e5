//! The one place the WIT contract is turned into Rust for the host: the
//! current version (`wit/` at the repository root) and the previous one,
//! which the host still loads (`compat.rs` adapts it). Both map the
//! contract's resources onto the same host types, entries of the store's
//! resource table.
#![allow(missing_docs)] // generated

/// The host's bindings of one version of the contract, at `$path`.
macro_rules! contract {
    ($path:literal $(, $extra:literal: $host:ty)* $(; $new:ident)*) => {
        wasmtime::component::bindgen!({
            path: $path,
            world: "host",
            imports: {
                // These wait on the state store or the network.
                "sluice:filter/kv": async | trappable,
                "sluice:filter/outbound": async | trappable,
                default: trappable,
            },
            exports: { default: async },
            with: {
                "sluice:filter/types.headers": crate::handles::HeadersEntry,
                "sluice:filter/types.request": crate::handles::RequestEntry,
                "sluice:filter/types.response": crate::handles::ResponseEntry,
                $($extra: $host,)*
            },
        });

        pub use self::exports::sluice::filter as policies;
        pub use self::sluice::filter::{clock, kv, log, metrics, outbound, types $(, $new)*};
    };
}

/// `sluice:filter@0.2.5`, which also loads components built for 0.2.0
/// to 0.2.4 (wasmtime matches semver-compatible names; 0.2.1 added
/// `crypto`, 0.2.2 `request.keep-instance`, 0.2.3 `header` and
/// `edit-headers` on requests and responses, 0.2.4 the `connection` kind,
/// 0.2.5 `request.subject`).
pub mod v2 {
    contract!(
        "../../wit",
        "sluice:filter/crypto.hmac-key": crate::capability::keys::HmacKey,
        "sluice:filter/crypto.public-key": crate::capability::keys::PublicKey;
        crypto
    );
}

/// `sluice:filter@0.1.0`, as components built for it import and export it.
pub mod v1 {
    contract!("wit-0.1.0");
}
