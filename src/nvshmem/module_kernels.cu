// The kernels of epcomm's NVSHMEM module: compiled with relocatable device code, device-linked
// with libnvshmem_device.a into a fatbin of their own, embedded in libepcomm and bound to the
// running NVSHMEM job with nvshmemx_cumodule_init when loaded (src/cuda/nvshmem_module.cpp).
#include "nvshmem/module_abi.hpp"
#include "nvshmem/nvshmem_transport.cuh"

using epcomm::nvshmem::PutSignalOp;
using epcomm::nvshmem::SignalWait;

// Block b carries out ops b, b + gridDim.x, ...; each thread 0 then waits until its block's
// puts have completed (nvshmem_quiet), so the source may be reused after the kernel.
extern "C" __global__ void epcomm_nvshmem_put_signal(const PutSignalOp* ops, int n) {
  for (int i = blockIdx.x; i < n; i += gridDim.x) {  // block-uniform: the put is collective
    const PutSignalOp op = ops[i];
    epcomm::nvshmem::put_signal_block(op.dst, op.src, op.bytes, op.signal, op.add, op.pe);
  }
  __syncthreads();
  if (threadIdx.x == 0) nvshmem_quiet();
}

// Thread i waits for waits[i], at most timeout_ns each, and reports what it saw.
extern "C" __global__ void epcomm_nvshmem_wait_signals(SignalWait* waits, int n,
                                                       uint64_t timeout_ns) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    uint64_t seen = 0;
    const bool arrived = epcomm::nvshmem::wait_signal_at_least(waits[i].signal, waits[i].expected,
                                                               timeout_ns, &seen);
    waits[i].seen = seen;
    waits[i].timed_out = arrived ? 0 : 1;
  }
}
