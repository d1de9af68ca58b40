#!/usr/bin/env bash
# Builds the dev preset (Debug, tests) and runs every test under ctest.
# CUDA tests skip when no GPU is present; every kernel is still compiled when nvcc is found.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_packages cmake g++ make libgtest-dev libopenmpi-dev openmpi-bin
cmake --preset dev
cmake --build --preset dev -j "$(jobs)"
# With a GPU present, one test process at a time: processes sharing a GPU without MPS only
# time-slice, and every CUDA test waits on peer kernels.
parallel="$(jobs)"
nvidia-smi -L >/dev/null 2>&1 && parallel=1
ctest --preset dev -j "$parallel" --timeout 900
