#!/usr/bin/env bash
# The Python package on the GPU machine: installs it with pip as the README says (no network),
# runs the GPU pytest suite (high-throughput and low-latency calls) on 2, 4 and 8 processes (one
# rank each, sharing the GPU), the low-latency file across NVSHMEM domains (4 processes), then
# the DeepEP-style caller and the README example. Logs and
# summary.txt go to $OUT (default /tmp/epcomm-python-check); exits non-zero when any step fails.
# Every step is bounded by `timeout`; the whole check takes under 6 minutes.
# Expects the caller to have started MPS and exported CUDA_MPS_PIPE_DIRECTORY and
# CUDA_MPS_LOG_DIRECTORY (scripts/gpu_check.sh does); it starts nothing MPS-related itself.
# PYTHON_SUITE_PROCESSES (default "2 4 8"), PYTHON_DOMAINS=0 and PYTHON_SCRIPTS=0 leave steps out.
# BUILD: an existing build tree of this checkout to add the module to (only the module is
# compiled); unset, pip builds its own Release tree under build/py-<python tag>.
# PYTHON: the interpreter with PyTorch (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/epcomm-python-check}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
failed=0
check_started=$SECONDS
# Seconds a step may take: its own cap, and never past 330 s into the whole check.
limit() {
  local left=$((330 - (SECONDS - check_started)))
  [ "$left" -lt "$1" ] && echo $((left > 1 ? left : 1)) || echo "$1"
}

note "python: $("$PYTHON" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1)"
note "mps: ${CUDA_MPS_PIPE_DIRECTORY:-not set}"

# pip install --target: a fresh directory, so no older install can answer the imports (and
# PEP 668 does not apply to it).
site="$OUT/site"
rm -rf "$site"
start=$SECONDS
EPCOMM_BUILD_DIR="${BUILD:-}" timeout "$(limit 100)" "$PYTHON" -m pip install -v \
  --no-build-isolation --no-deps --target "$site" . >"$OUT/install.log" 2>&1
rc=$?
note "pip install: rc=$rc ($((SECONDS - start)) s); $(grep -om1 'epcomm: Python module.*' "$OUT/install.log")"
if [ $rc -ne 0 ]; then
  tail -30 "$OUT/install.log"
  exit 1
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
built=$("$PYTHON" -c 'import _epcomm; print(_epcomm.BUILT_WITH_CUDA)' 2>&1)
note "module built with CUDA: $built"
[ "$built" = "True" ] || exit 1

pytest_args=(-q -p no:cacheprovider -rfE)
for n in ${PYTHON_SUITE_PROCESSES-2 4 8}; do
  start=$SECONDS
  log="$OUT/pytest_np$n.log"
  timeout "$(limit $((40 + 8 * n)))" "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$n" \
    -m pytest "${pytest_args[@]}" tests/python/gpu/test_buffer_gpu.py \
    tests/python/gpu/test_expert_major_gpu.py tests/python/gpu/test_low_latency_gpu.py >"$log" 2>&1
  rc=$?
  [ $rc -ne 0 ] && failed=1
  note "pytest, $n processes: rc=$rc ($((SECONDS - start)) s): $(grep -cE '^[0-9]+ passed in' "$log") of $n ranks passed all ($(grep -oE '^[0-9]+ passed' "$log" | head -1))"
  [ $rc -ne 0 ] && grep -E '^(FAILED|ERROR)' "$log" | sort -u | head -10 | tee -a "$summary"
done

# The high-throughput and low-latency suites across NVLink domains: 4 processes over NVSHMEM
# (shares of 24 % each, as NVSHMEM runs several PEs on one GPU only with MPS shares summing to
# at most 100), every rank its own domain, so every row and message to another rank crosses
# through NVSHMEM puts.
if [ "${PYTHON_DOMAINS:-1}" != 0 ]; then
  start=$SECONDS
  log="$OUT/pytest_np4_nvshmem_4x1.log"
  CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=24 NVSHMEM_REMOTE_TRANSPORT=none NVSHMEM_DISABLE_NVLS=1 \
    NVSHMEM_SYMMETRIC_SIZE=2147483648 EPCOMM_TEST_TRANSPORT=nvshmem EPCOMM_TEST_RANKS_PER_DOMAIN=1 \
    timeout "$(limit 150)" "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 4 \
    -m pytest "${pytest_args[@]}" tests/python/gpu/test_buffer_gpu.py \
    tests/python/gpu/test_low_latency_gpu.py >"$log" 2>&1
  rc=$?
  [ $rc -ne 0 ] && failed=1
  note "pytest high-throughput and low-latency, 4 processes over nvshmem, 4 domains of 1: rc=$rc ($((SECONDS - start)) s): $(grep -cE '^[0-9]+ passed in' "$log") of 4 ranks passed all ($(grep -oE '^[0-9]+ passed' "$log" | head -1))"
  [ $rc -ne 0 ] && grep -E '^(FAILED|ERROR)' "$log" | sort -u | head -10 | tee -a "$summary"
fi

if [ "${PYTHON_SCRIPTS:-1}" != 0 ]; then
  start=$SECONDS
  log="$OUT/scripts.log"
  timeout "$(limit 150)" "$PYTHON" -m pytest "${pytest_args[@]}" -s tests/python/gpu/test_scripts.py >"$log" 2>&1
  rc=$?
  [ $rc -ne 0 ] && failed=1
  note "DeepEP-style caller and README example: rc=$rc ($((SECONDS - start)) s): $(grep -E '[0-9]+ (passed|failed)' "$log" | tail -1)"
  grep -E "dispatch \+ combine:" "$log" | head -1 | tee -a "$summary"
  [ $rc -ne 0 ] && grep -E '^(FAILED|ERROR)' "$log" | head -10 | tee -a "$summary"
fi

note "python check: $([ $failed -eq 0 ] && echo passed || echo FAILED) ($((SECONDS - check_started)) s)"
exit $failed
