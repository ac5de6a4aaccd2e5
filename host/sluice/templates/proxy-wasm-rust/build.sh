#!/bin/sh
# Build {{name}}.wasm (or the path given): a proxy-wasm module, as for Envoy.
# Needs `rustup target add wasm32-wasip1`.
set -eu
out=$(realpath -m "${1:-{{name}}.wasm}")
cd "$(dirname "$0")"
cargo build --release --target wasm32-wasip1
cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip1/release/{{crate}}.wasm" "$out"
