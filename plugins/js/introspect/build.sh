#!/bin/sh
# Build introspect.wasm (or the path given) from introspect.js, against the
# repository's wit/. Needs Node.js and npm; installs componentize-js 0.23 from npm.
set -eu
out=$(realpath -m "${1:-introspect.wasm}")
cd "$(dirname "$0")"
[ -d node_modules/@bytecodealliance/componentize-js ] || npm ci --no-audit --no-fund --silent
# fetch() is kept: it imports wasi:http, which the gateway maps onto the
# granted upstreams. `fetch-event` (an incoming-request handler) is not used.
npx componentize-js introspect.js --wit ../../../wit --world-name auth-filter \
    --disable fetch-event -o "$out"
