#!/bin/sh
# Build cors.wasm (or the path given) from cors.js, against the repository's
# wit/. Needs Node.js and npm; installs componentize-js 0.23 from npm.
set -eu
out=$(realpath -m "${1:-cors.wasm}")
cd "$(dirname "$0")"
[ -d node_modules/@bytecodealliance/componentize-js ] || npm ci --no-audit --no-fund --silent
# `http` and `fetch-event` pull in wasi:http for fetch(), which this filter does not use.
npx componentize-js cors.js --wit ../../../wit --world-name general-filter \
    --disable http fetch-event -o "$out"
