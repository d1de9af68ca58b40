#!/usr/bin/env bash
# The 8-GPU run (machine kind nvidia-h200-x8), planned as device calls of < 10 minutes each:
#   scripts/gpu8_check.sh tests   build; compute-sanitizer; every test with one rank per GPU,
#                                 in-process and under mpirun (np 2, 4, 8); logs as gpu_check.sh
#   scripts/gpu8_check.sh bench   flat and ring at 8, 16, 24, 32 SMs per rank, bf16 and fp8,
#                                 in-process (with the peer copy probe and NVLink fractions),
#                                 then 8 processes under mpirun
#   scripts/gpu8_check.sh llbench the low-latency mode, one rank per GPU (T = 1, 32, 128, 256;
#                                 bf16 and fp8; eager, hook and graph)
# NVLink multicast stays off: nothing here creates multicast objects, and the variables below
# keep libraries that could from doing so.
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "$gpus" -lt 8 ]; then
  echo "gpu8_check.sh needs 8 GPUs, found $gpus" >&2
  exit 2
fi
OUT=${OUT:-/tmp/epcomm-gpu8}
mkdir -p "$OUT"
BUILD=build/gpu-release

case "${1:-}" in
  tests)
    OUT="$OUT" bash scripts/gpu_check.sh build sanitize test
    ;;
  bench)
    [ -x "$BUILD/bench/epcomm-bench" ] || OUT="$OUT" bash scripts/gpu_check.sh build
    for dtype in bf16 fp8; do
      start=$SECONDS
      timeout 240 "$BUILD/bench/epcomm-bench" --algorithms flat,ring --sms 8,16,24,32 \
        --dtype "$dtype" --json "$OUT/bench_$dtype.json" >"$OUT/bench_$dtype.log" 2>&1
      echo "bench $dtype: rc=$? ($((SECONDS - start)) s)"
      sed -n '/^epcomm-bench/,$p' "$OUT/bench_$dtype.log"
    done
    python3 scripts/plot_bench.py "$OUT/bench_bf16.json" "$OUT/bench_bf16.png" || true
    root=""; [ "$(id -u)" -eq 0 ] && root="--allow-run-as-root"
    start=$SECONDS
    timeout 150 mpirun -np 8 $root "$BUILD/bench/epcomm-bench" --launcher mpi \
      --algorithms flat,ring --sms 16,32 >"$OUT/bench_mpi.log" 2>&1
    echo "bench under mpirun (8 processes, one per GPU): rc=$? ($((SECONDS - start)) s)"
    sed -n '/^epcomm-bench/,$p' "$OUT/bench_mpi.log"
    ;;
  llbench)
    [ -x "$BUILD/bench/epcomm-bench" ] || OUT="$OUT" bash scripts/gpu_check.sh build
    start=$SECONDS
    timeout 300 "$BUILD/bench/epcomm-bench" --mode ll --json "$OUT/bench_ll.json" \
      >"$OUT/bench_ll.log" 2>&1
    echo "low-latency bench: rc=$? ($((SECONDS - start)) s)"
    sed -n '/^epcomm-bench/,$p' "$OUT/bench_ll.log"
    ;;
  *)
    echo "usage: scripts/gpu8_check.sh tests|bench|llbench" >&2
    exit 2
    ;;
esac
