#!/usr/bin/env bash
# Builds the dev preset (Debug, tests) and runs every test under ctest.
# CUDA tests skip when no GPU is present; every kernel is still compiled when nvcc is found.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_packages cmake g++ make libgtest-dev libopenmpi-dev openmpi-bin
# The Python package's CPU tests: Debian's Python, pybind11 and (CPU-only) PyTorch.
ensure_packages python3-dev pybind11-dev python3-pytest python3-numpy python3-torch
# The Python package's CPU tests run on the first interpreter that has PyTorch, pytest and
# numpy: Debian's, with the packages above, else python3 on PATH. The module is built in the
# dev tree, so the library is compiled once.
python=""
for candidate in /usr/bin/python3 "$(command -v python3)"; do
  if "$candidate" -c "import torch, pytest, numpy" 2>/dev/null; then python=$candidate; break; fi
done
[ -n "$python" ] || { echo "error: no python3 with torch, pytest and numpy" >&2; exit 1; }
# NVSHMEM (headers and libraries from PyPI) so that the NVSHMEM transport compiles here too.
nvshmem_home="${NVSHMEM_HOME:-$(ensure_nvshmem build/deps/nvshmem)}"
cmake --preset dev -DEPCOMM_BUILD_PYTHON=ON -DPython_EXECUTABLE="$python" \
  -DEPCOMM_NVSHMEM_HOME="$nvshmem_home"
cmake --build --preset dev -j "$(jobs)"
# With a GPU present, one test process at a time: processes sharing a GPU without MPS only
# time-slice, and every CUDA test waits on peer kernels.
parallel="$(jobs)"
nvidia-smi -L >/dev/null 2>&1 && parallel=1
ctest --preset dev -j "$parallel" --timeout 900
# The Python package on CPU tensors (host backend, ranks as threads).
PYTHONPATH=python:build/dev/python "$python" -m pytest -q -p no:cacheprovider tests/python/cpu
