#!/bin/sh
# Build as-headers.wasm (or the path given): a proxy-wasm module, as for
# Envoy. Needs Node.js and npm; installs AssemblyScript and the SDK from npm.
set -eu
out=$(realpath -m "${1:-as-headers.wasm}")
cd "$(dirname "$0")"
[ -d node_modules/assemblyscript ] || npm ci --no-audit --no-fund --silent
npx asc assembly/index.ts --config asconfig.json -o "$out"
