#!/usr/bin/env bash
# Builds the release preset and runs epcomm-bench: on the GPUs present, or the host reference
# backend when there are none. Extra arguments go to epcomm-bench (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_packages cmake g++ make libgtest-dev
cmake --preset release
cmake --build --preset release -j "$(jobs)" --target epcomm-bench
exec build/release/bench/epcomm-bench "$@"
