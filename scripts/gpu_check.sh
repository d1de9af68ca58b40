#!/usr/bin/env bash
# The one GPU check: builds a Release tree, runs every test, compute-sanitizer on a small
# subset, and epcomm-bench; logs go to $OUT (default /tmp/epcomm-gpu-check).
# Usage: scripts/gpu_check.sh [build] [sanitize] [test] [nvshmem] [python] [bench] [llbench]
#        [soak] [soakmpi]
# (default: all but the soaks and nvshmem; run in that order; the test stage runs in-process
# tests without MPS and the multi-process ones under an MPS server; nvshmem runs the tests of
# label nvshmem (the NVSHMEM base, and the conformance suites over Config::transport =
# nvshmem) under MPS; the python stage and soakmpi under MPS too)
# Soak length: SOAK_SECONDS (300), for each of soak (8 ranks in-process) and soakmpi (8 processes).
# Extra bench flags: BENCH_ARGS="--sms 4,8,16 --algorithms flat"; a test subset: CTEST_ARGS="-R Ring";
# low-latency bench flags: LL_BENCH_ARGS="--tokens 1,128"
# The caller passes COMMIT (the device machine gets the tree without .git).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
OUT=${OUT:-/tmp/epcomm-gpu-check}
mkdir -p "$OUT"
stages=${*:-build test sanitize python bench llbench}
SOAK_SECONDS=${SOAK_SECONDS:-300}
summary="$OUT/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
has() { [[ " $stages " == *" $1 "* ]]; }
BUILD=build/gpu-release

# The device machine gets the working tree without .git: the caller passes COMMIT.
note "commit ${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/gpu: /' | tee -a "$summary"

if has build; then
  start=$SECONDS
  generator=""
  command -v ninja >/dev/null && generator="-G Ninja"
  # NVSHMEM: NVSHMEM_HOME, else the pip package nvidia-nvshmem-cu13 of the PyTorch venv.
  nvshmem_home=${NVSHMEM_HOME:-}
  for py in python3 /opt/torch/.venv/bin/python3; do
    [ -n "$nvshmem_home" ] && break
    nvshmem_home=$("$py" -c 'import nvidia.nvshmem as m; print(list(m.__path__)[0])' 2>/dev/null)
  done
  note "nvshmem: ${nvshmem_home:-not found}"
  { cmake -S . -B "$BUILD" $generator -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
      -DEPCOMM_NVSHMEM_HOME="$nvshmem_home" && cmake --build "$BUILD" -j "$(jobs)"; } >"$OUT/build.log" 2>&1
  rc=$?
  note "build: rc=$rc ($((SECONDS - start)) s)"
  [ $rc -ne 0 ] && { tail -40 "$OUT/build.log"; exit 1; }
fi

# Multi-process tests share the one GPU through MPS; without it processes only time-slice.
mps_start() {
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/epcomm-mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/epcomm-mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d && note "mps: started"
}
mps_stop() {
  echo quit | nvidia-cuda-mps-control >/dev/null 2>&1
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  sleep 1
}

if has sanitize; then  # before MPS: the sanitizer does not run under an MPS server
  start=$SECONDS
  conf="$BUILD/tests/epcomm_conformance_tests"
  {
    echo "== memcheck"
    # Ranks wait on each other, and the sanitizer does not run peers' kernels side by side:
    # single-rank cases, and the fault tests that need no concurrent peer.
    timeout 200 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 "$conf" \
      --gtest_filter='Flat/*_R1_*:Ring/*_R1_*:ExpertMajor/*_R1_*:Shapes/CudaLowLatency.*/R1_*:CudaFaults.MissingPeer*:CudaFaults.SmCounts*'
    echo "memcheck rc=$?"
    echo "== racecheck"
    timeout 100 compute-sanitizer --tool racecheck --error-exitcode 9 "$conf" \
      --gtest_filter='Flat/*_R1_T96_*skewed*:Flat/*_R1_T13_*with_holes*:ExpertMajor/*_R1_T96_*:Ring/*_R1_T96_*uniform*:Shapes/CudaLowLatency.*/R1_M32_T32_*'
    echo "racecheck rc=$?"
    echo "== synccheck"
    timeout 100 compute-sanitizer --tool synccheck --error-exitcode 9 "$conf" \
      --gtest_filter='Flat/*_R1_T96_*skewed*:ExpertMajor/*_R1_T96_*:Ring/*_R1_T96_*uniform*:Shapes/CudaLowLatency.*/R1_M32_T32_*'
    echo "synccheck rc=$?"
    # Cross-process regions (cuMem, the default, then legacy IPC handles): mapped and unmapped,
    # every allocation freed.
    root=""; [ "$(id -u)" -eq 0 ] && root="--allow-run-as-root"
    for ipc in cumem legacy; do
      echo "== memcheck + leak check, 2 processes (EPCOMM_IPC=$ipc)"
      EPCOMM_IPC=$ipc timeout 150 mpirun -np 2 --oversubscribe $root -x EPCOMM_IPC \
        compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 \
        "$BUILD/tests/mpi/epcomm_mpi_conformance_test" --first 3
      echo "ipc memcheck ($ipc) rc=$?"
    done
  } >"$OUT/sanitizer.log" 2>&1
  note "sanitizer ($((SECONDS - start)) s): $(grep -E '^(memcheck|racecheck|synccheck|ipc memcheck.*) rc=|ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY' "$OUT/sanitizer.log" | tr '\n' ' ')"
fi

if has test; then
  # In-process suites: each gtest binary runs once, all its tests in one process (a process per
  # test spends most of its second creating a CUDA context). In-process ranks need their own
  # hardware queues (CUDA_DEVICE_MAX_CONNECTIONS = 32), which an MPS server does not promise
  # (its clients share one pool of connections): they run without MPS, the multi-process tests
  # (labels mpi, mpi_gpu) under it. docs/design.md, section 12.
  start=$SECONDS
  rc=0
  : >"$OUT/ctest.log"
  for t in epcomm_unit_tests epcomm_conformance_tests; do
    timeout 500 "$BUILD/tests/$t" --gtest_brief=1 ${GTEST_ARGS:-} >>"$OUT/ctest.log" 2>&1 || rc=1
  done
  note "tests, in-process: rc=$rc ($((SECONDS - start)) s): $(grep -E '^\[  PASSED  \]|^\[  FAILED  \] [0-9]+ test' "$OUT/ctest.log" | tr '\n' ' ')"
  grep -E '^\[  FAILED  \] [A-Za-z]' "$OUT/ctest.log" | head -20 | tee -a "$summary"
  start=$SECONDS
  mps_start
  (cd "$BUILD" && timeout 400 ctest -j 1 --timeout 300 --output-on-failure -L mpi -LE nvshmem ${CTEST_ARGS:-}) >"$OUT/ctest_mpi.log" 2>&1
  rc=$?
  note "ctest, processes under MPS: rc=$rc ($((SECONDS - start)) s): $(grep -E 'tests passed|tests failed|No tests' "$OUT/ctest_mpi.log" | tail -1)"
  grep -E '^\s+[0-9]+ - .*(Failed|Timeout|Exception|Not Run)' "$OUT/ctest_mpi.log" | head -20 | tee -a "$summary"
  # The multi-process conformance suites again over legacy CUDA IPC handles (EPCOMM_IPC=legacy;
  # the default is cuMem regions). TEST_LEGACY_IPC=0: not.
  if [ "${TEST_LEGACY_IPC:-1}" != 0 ]; then
    start=$SECONDS
    (cd "$BUILD" && EPCOMM_IPC=legacy timeout 200 ctest -j 1 --timeout 150 --output-on-failure \
      -R 'mpi_(ll_)?conformance_np(2|8)$') >"$OUT/ctest_mpi_legacy_ipc.log" 2>&1
    note "ctest, conformance over legacy IPC handles (EPCOMM_IPC=legacy): rc=$? ($((SECONDS - start)) s): $(grep -E 'tests passed|tests failed|No tests' "$OUT/ctest_mpi_legacy_ipc.log" | tail -1)"
    grep -E '^\s+[0-9]+ - .*(Failed|Timeout|Exception|Not Run)' "$OUT/ctest_mpi_legacy_ipc.log" | head -10 | tee -a "$summary"
  fi
  mps_stop
  # The MoE layer example on the CUDA backend (4 in-process ranks), checked against the dense layer.
  start=$SECONDS
  timeout 200 "$BUILD/examples/epcomm_moe_layer" --backend cuda --ranks 4 --tokens 256 \
    --hidden 1024 --experts 32 --topk 4 --ffn 256 --bench --iters 3 --layout both \
    >"$OUT/example_moe_layer.log" 2>&1
  note "example moe_layer (cuda): rc=$? ($((SECONDS - start)) s): $(grep -E '^bench|^checked' "$OUT/example_moe_layer.log" | tr '\n' ' ')"
  # The installed package, used by a separate project (host and CUDA backends).
  start=$SECONDS
  (cd "$BUILD" && timeout 300 ctest --output-on-failure -V -L package) >"$OUT/ctest_package.log" 2>&1
  note "package consumer: rc=$? ($((SECONDS - start)) s): $(grep -E 'as expected|not run' "$OUT/ctest_package.log" | sed 's/^[0-9]*: //' | tr '\n' ' ')"
fi

if has nvshmem; then  # NVSHMEM runs several PEs on one GPU only under MPS
  start=$SECONDS
  mps_start
  # Verbose: the log keeps the passing tests' output too (cases run, transport, domains).
  (cd "$BUILD" && timeout 450 ctest -j 1 --timeout 300 -V -L nvshmem ${CTEST_ARGS:-}) \
    >"$OUT/ctest_nvshmem.log" 2>&1
  rc=$?
  note "ctest nvshmem, processes under MPS: rc=$rc ($((SECONDS - start)) s): $(grep -E 'tests passed|tests failed|No tests' "$OUT/ctest_nvshmem.log" | tail -1)"
  grep -E '^\s+[0-9]+ - .*(Failed|Timeout|Exception|Not Run)' "$OUT/ctest_nvshmem.log" | head -20 | tee -a "$summary"
  # The bench over both transports with the same MPS share per process (12 %, as NVSHMEM's
  # PEs on one GPU need the shares to sum to at most 100): 8 processes, flat path.
  lib=$(sed -n 's/^EPCOMM_NVSHMEM_HOST:FILEPATH=\(.*\)\/[^/]*$/\1/p' "$BUILD/CMakeCache.txt")
  root=""; [ "$(id -u)" -eq 0 ] && root="--allow-run-as-root"
  # run_bench TRANSPORT MODE [RANKS_PER_DOMAIN]: one bench under mpirun, logged and summarized.
  run_bench() {
    local transport=$1 mode=$2 domain=${3:-} args tag
    args=${NVSHMEM_BENCH_ARGS:---sms 4,8,14 --layouts token_major}
    [ "$mode" = ll ] && args=${NVSHMEM_LL_BENCH_ARGS:---sms 8 --tokens 1,128}
    tag=${transport}_${mode}${domain:+_rpd$domain}
    start=$SECONDS
    CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=12 NVSHMEM_REMOTE_TRANSPORT=none NVSHMEM_DISABLE_NVLS=1 \
      NVSHMEM_SYMMETRIC_SIZE=${NVSHMEM_BENCH_HEAP:-4294967296} LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}" \
      timeout 150 mpirun -np 8 --oversubscribe $root -x CUDA_MPS_ACTIVE_THREAD_PERCENTAGE \
      -x NVSHMEM_REMOTE_TRANSPORT -x NVSHMEM_DISABLE_NVLS -x NVSHMEM_SYMMETRIC_SIZE -x LD_LIBRARY_PATH \
      "$BUILD/bench/epcomm-bench" --launcher mpi --backend cuda --mode "$mode" --transport "$transport" \
      ${domain:+--ranks-per-domain $domain} $args >"$OUT/bench_mpi_${tag}.log" 2>&1
    note "bench $mode under mpirun, transport $transport${domain:+, $domain ranks per domain} (8 processes, MPS 12 %): rc=$? ($((SECONDS - start)) s)"
    sed -n '/^epcomm-bench/,$p' "$OUT/bench_mpi_${tag}.log" | grep -vE '^\s*$' | head -36 | tee -a "$summary"
  }
  for transport in ${NVSHMEM_BENCH_TRANSPORTS-ipc nvshmem}; do  # e.g. "" to skip these
    for mode in ht ll; do run_bench $transport $mode; done
  done
  # Both modes across domains (NVSHMEM_HT_DOMAINS, NVSHMEM_LL_DOMAINS: ranks per domain,
  # space-separated).
  for domain in ${NVSHMEM_HT_DOMAINS-4 1}; do run_bench nvshmem ht "$domain"; done
  for domain in ${NVSHMEM_LL_DOMAINS-4 1}; do run_bench nvshmem ll "$domain"; done
  mps_stop
fi

if has bench; then
  start=$SECONDS
  timeout 240 "$BUILD/bench/epcomm-bench" ${BENCH_ARGS:---algorithms flat,ring --sms 4,8,16} \
    --json "$OUT/bench.json" --plot "$OUT/bench.png" >"$OUT/bench.log" 2>&1
  note "bench: rc=$? ($((SECONDS - start)) s)"
  sed -n '/^epcomm-bench/,$p' "$OUT/bench.log" | tee -a "$summary"
  grep -E 'MISMATCH|error' "$OUT/bench.log" | head -5 | tee -a "$summary"
  if [ -n "${BENCH_EXTRA_ARGS:-}" ]; then  # a second in-process sweep, appended to bench.log
    echo "== extra: $BENCH_EXTRA_ARGS" >>"$OUT/bench.log"
    timeout 150 "$BUILD/bench/epcomm-bench" $BENCH_EXTRA_ARGS >>"$OUT/bench.log" 2>&1
    note "bench extra: rc=$?"
  fi
  # The same table from 8 processes (one rank each) sharing the GPU through MPS (BENCH_MPI=0: not).
  if [ -x "$(command -v mpirun)" ] && [ "${BENCH_MPI:-1}" != 0 ]; then
    start=$SECONDS
    mps_start
    root=""; [ "$(id -u)" -eq 0 ] && root="--allow-run-as-root"
    timeout 200 mpirun -np 8 --oversubscribe $root "$BUILD/bench/epcomm-bench" --launcher mpi \
      ${BENCH_MPI_ARGS:---algorithms flat --sms 4,8,16} >"$OUT/bench_mpi.log" 2>&1
    note "bench under mpirun (8 processes, MPS): rc=$? ($((SECONDS - start)) s)"
    sed -n '/^epcomm-bench/,$p' "$OUT/bench_mpi.log" | tee -a "$summary"
    # The same over legacy CUDA IPC handles instead of cuMem regions (BENCH_MPI_LEGACY=0: not).
    if [ "${BENCH_MPI_LEGACY:-1}" != 0 ]; then
      start=$SECONDS
      EPCOMM_IPC=legacy timeout 200 mpirun -np 8 --oversubscribe $root -x EPCOMM_IPC \
        "$BUILD/bench/epcomm-bench" --launcher mpi ${BENCH_MPI_ARGS:---algorithms flat --sms 4,8,16} \
        --layouts token_major >"$OUT/bench_mpi_legacy_ipc.log" 2>&1
      note "bench under mpirun, legacy IPC handles (EPCOMM_IPC=legacy): rc=$? ($((SECONDS - start)) s)"
      sed -n '/^epcomm-bench/,$p' "$OUT/bench_mpi_legacy_ipc.log" | grep -E '^flat|^epcomm' | tee -a "$summary"
    fi
    mps_stop
  fi
fi

if has python; then  # the Python package: pytest with 2, 4 and 8 processes under MPS
  start=$SECONDS
  mps_start
  BUILD="$BUILD" OUT="$OUT/python" timeout 400 bash scripts/python_gpu_check.sh >"$OUT/python.log" 2>&1
  note "python: rc=$? ($((SECONDS - start)) s): $(grep -E '(passed|failed|error)' "$OUT/python.log" | tail -3 | tr '\n' ' ')"
  mps_stop
fi

# Random back-to-back calls against the host reference: 8 ranks as threads, then 8 processes.
if has soak; then
  start=$SECONDS
  timeout $((SOAK_SECONDS + 120)) "$BUILD/bench/epcomm-bench" --mode soak --seconds "$SOAK_SECONDS" \
    ${SOAK_ARGS:-} >"$OUT/soak.log" 2>&1
  note "soak, 8 ranks in-process: rc=$? ($((SECONDS - start)) s): $(grep -E '^soak: done|MISMATCH|ERROR' "$OUT/soak.log" | head -3 | tr '\n' ' ')"
fi
if has soakmpi; then
  start=$SECONDS
  mps_start
  root=""; [ "$(id -u)" -eq 0 ] && root="--allow-run-as-root"
  timeout $((SOAK_SECONDS + 120)) mpirun -np 8 --oversubscribe $root "$BUILD/bench/epcomm-bench" \
    --launcher mpi --mode soak --seconds "$SOAK_SECONDS" --seed 1000001 ${SOAK_ARGS:-} \
    >"$OUT/soak_mpi.log" 2>&1
  note "soak, 8 processes (MPS): rc=$? ($((SECONDS - start)) s): $(grep -E '^soak: done|MISMATCH|ERROR' "$OUT/soak_mpi.log" | head -3 | tr '\n' ' ')"
  mps_stop
fi

if has llbench; then  # the low-latency mode, 8 ranks in-process
  start=$SECONDS
  timeout 300 "$BUILD/bench/epcomm-bench" --mode ll ${LL_BENCH_ARGS:-} --json "$OUT/bench_ll.json" \
    >"$OUT/bench_ll.log" 2>&1
  note "ll bench: rc=$? ($((SECONDS - start)) s)"
  sed -n '/^epcomm-bench/,$p' "$OUT/bench_ll.log" | tee -a "$summary"
  grep -E 'MISMATCH|error' "$OUT/bench_ll.log" | head -5 | tee -a "$summary"
fi
# The exit status: 1 when any stage's note above reports a nonzero rc.
! grep -qE '(^| )rc=[1-9]' "$summary"
