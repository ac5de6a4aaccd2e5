#!/usr/bin/env bash
# Each sample plugin's cost per request with a realistic configuration,
# called directly (no proxy, no network): examples/calls, pinned to one core.
# Usage: bench/plugin_calls.sh [PLUGIN_DIR] [N] [name=path.wasm[:config] ...]
#
# With INSTRUCTIONS=1, each plugin's instructions per request instead of its
# time, counted by valgrind (callgrind) over two runs of different lengths,
# so start-up cancels out: the same on a busy machine as on a quiet one.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-target/wasm/wasm32-wasip2/release}
n=${2:-50000}
specs=(
  "noop=$dir/noop.wasm"
  "headers=$dir/headers.wasm:{\"request\":{\"set\":{\"x-gateway\":\"sluice\"},\"remove\":[\"x-debug\"]},\"response\":{\"set\":{\"x-frame-options\":\"DENY\"}}}"
  "rate-limit=$dir/rate_limit.wasm:{\"key\":\"identity\",\"capacity\":1000000000,\"window_secs\":60}"
  "transform=$dir/transform.wasm:{\"request_headers\":{\"set\":{\"x-bench\":\"1\"}},\"response_headers\":{\"set\":{\"x-served-by\":\"sluice\"}},\"rewrite\":[{\"pattern\":\"^/api/(.*)\$\",\"replacement\":\"/v2/\$1\"}]}"
  "router=$dir/router.wasm:{\"rules\":[{\"header\":{\"name\":\"x-canary\",\"value\":\"1\"},\"upstream\":\"canary\"}],\"split\":[{\"upstream\":\"stable\",\"weight\":95},{\"upstream\":\"canary\",\"weight\":5}]}"
  "cache-policy=$dir/cache_policy.wasm:{\"paths\":[\"/static/\"],\"bypass_headers\":[\"authorization\"]}"
  "${@:3}"
)
cargo build --quiet --release -p sluice-filter --example calls
calls=target/release/examples/calls
if [ -z "${INSTRUCTIONS:-}" ]; then
  core=$(( $(nproc) - 1 ))
  exec taskset -c "$core" "$calls" "$n" "${specs[@]}"
fi
# Compiled once into a cache, under valgrind too (the CPU features it
# reports are part of the cache's key), so the counted runs do not compile.
export CALLS_CACHE=${CALLS_CACHE:-$PWD/target/calls-cache} CALLS_INSTANCES=4 CALLS_TIMEOUT=60s
for spec in "${specs[@]}"; do valgrind --tool=none -q "$calls" 100 "$spec" >/dev/null; done
collected() { # N SPEC: instructions of a whole run
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$calls" "$1" "$2" 2>&1 |
    sed -n 's/.*Collected : //p'
}
short=200 long=600
for spec in "${specs[@]}"; do
  a=$(collected $short "$spec") b=$(collected $long "$spec")
  # Three rounds of N requests each.
  echo "${spec%%=*}: $(( (b - a) / (3 * (long - short)) )) instructions per request"
done
