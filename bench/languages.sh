#!/bin/sh
# The same filter in every language `sluice plugin new` offers (it refuses
# requests without a configured header): each project is made, built with
# its own toolchain, and measured directly (size, first compile, instance
# start, request call); see "Filters in other languages" in bench/README.md.
# Needs the toolchains .ci/run installs. Usage: bench/languages.sh [CALLS]
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p sluice
cargo build --release -p sluice-filter --example languages
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
set --  "${1:-20000}"
for lang in rust c go js python; do
    target/release/sluice plugin new --lang "$lang" --dir "$dir" "hello-$lang" >/dev/null
    CARGO_TARGET_DIR="$PWD/target/wasm" "$dir/hello-$lang/build.sh" "$dir/$lang.wasm" >/dev/null 2>&1
    set -- "$@" "$lang=$dir/$lang.wasm"
done
target/release/examples/languages "$@"
