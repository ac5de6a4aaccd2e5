#!/bin/sh
# Build {{name}}.wasm (or the path given). Needs `rustup target add wasm32-wasip2`.
set -eu
out=$(realpath -m "${1:-{{name}}.wasm}")
cd "$(dirname "$0")"
cargo build --release --target wasm32-wasip2
cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/{{crate}}.wasm" "$out"
