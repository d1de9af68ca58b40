#!/usr/bin/env bash
# Builds the dev preset (Debug, tests) and runs every test under ctest.
# CUDA tests skip when no GPU is present; every kernel is still compiled when nvcc is found.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_packages cmake g++ make libgtest-dev
cmake --preset dev
cmake --build --preset dev -j "$(jobs)"
ctest --preset dev -j "$(jobs)" --timeout 900
