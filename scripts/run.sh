#!/usr/bin/env bash
# Builds everything (installing missing Debian packages) and starts nesfd,
# the decoding daemon, on the shipped default model (models/lcs6.safetensors)
# on loopback (127.0.0.1:8080, config/nesfd.json).  Extra arguments go to
# nesfd, e.g. scripts/run.sh --listen 127.0.0.1:9000 (nesfd --help lists all).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh build
if [ -f build/build.ninja ]; then meson setup --reconfigure build >/dev/null
else meson setup build >/dev/null; fi
ninja -C build
exec build/server/nesfd --config config/nesfd.json --web-root clients/web "$@"
