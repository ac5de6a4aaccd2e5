#!/bin/sh
# Build validate.wasm (or the path given) from app.py, against the
# repository's wit/. Needs componentize-py (pip install componentize-py==0.25.1).
set -eu
out=$(realpath -m "${1:-validate.wasm}")
cd "$(dirname "$0")"
componentize-py --wit-path ../../../wit --world general-filter componentize app -o "$out"
