#!/bin/sh
# Build {{name}}.wasm (or the path given). Needs Node.js and npm.
set -eu
out=$(realpath -m "${1:-{{name}}.wasm}")
cd "$(dirname "$0")"
[ -d node_modules/@bytecodealliance/componentize-js ] || npm install --no-audit --no-fund --silent
# `http` and `fetch-event` would import wasi:http (for fetch), which Sluice does not offer.
npx componentize-js filter.js --wit wit --world-name general-filter \
    --disable http fetch-event -o "$out"
