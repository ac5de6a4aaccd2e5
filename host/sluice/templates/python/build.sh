#!/bin/sh
# Build {{name}}.wasm (or the path given). Needs componentize-py
# (pip install componentize-py==0.25.1).
set -eu
out=$(realpath -m "${1:-{{name}}.wasm}")
cd "$(dirname "$0")"
componentize-py --wit-path wit --world general-filter componentize app -o "$out"
