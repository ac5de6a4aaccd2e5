#!/usr/bin/env bash
# Each sample plugin's cost per request with a realistic configuration,
# called directly (no proxy, no network): examples/calls, pinned to one core.
# Usage: bench/plugin_calls.sh [PLUGIN_DIR] [N]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-target/wasm/wasm32-wasip2/release}
n=${2:-50000}
cargo build --quiet --release -p sluice-filter --example calls
core=$(( $(nproc) - 1 ))
exec taskset -c "$core" target/release/examples/calls "$n" \
  "noop=$dir/noop.wasm" \
  "headers=$dir/headers.wasm:{\"request\":{\"set\":{\"x-gateway\":\"sluice\"},\"remove\":[\"x-debug\"]},\"response\":{\"set\":{\"x-frame-options\":\"DENY\"}}}" \
  "rate-limit=$dir/rate_limit.wasm:{\"key\":\"identity\",\"capacity\":1000000000,\"window_secs\":60}" \
  "transform=$dir/transform.wasm:{\"request_headers\":{\"set\":{\"x-bench\":\"1\"}},\"response_headers\":{\"set\":{\"x-served-by\":\"sluice\"}},\"rewrite\":[{\"pattern\":\"^/api/(.*)\$\",\"replacement\":\"/v2/\$1\"}]}" \
  "router=$dir/router.wasm:{\"rules\":[{\"header\":{\"name\":\"x-canary\",\"value\":\"1\"},\"upstream\":\"canary\"}],\"split\":[{\"upstream\":\"stable\",\"weight\":95},{\"upstream\":\"canary\",\"weight\":5}]}" \
  "cache-policy=$dir/cache_policy.wasm:{\"paths\":[\"/static/\"],\"bypass_headers\":[\"authorization\"]}" \
  "${@:3}"
