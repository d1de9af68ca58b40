// Device side of the NVSHMEM transport: the operations the kernels use for a peer outside the
// load/store domain. Data put before its signal is visible at the destination once the signal
// is (NVSHMEM's put-with-signal ordering); waits are bounded and report what they saw.
#pragma once

#include <nvshmem.h>
#include <nvshmemx.h>

#include <cstdint>

#include "cuda/kernels/common/ptx.cuh"

namespace epcomm::nvshmem {

// The calling block puts `bytes` from local `src` to `dst` (a symmetric address) on `pe`, then
// adds `add` to the symmetric `signal` on `pe`. Every thread of the block calls it.
__device__ inline void put_signal_block(void* dst, const void* src, size_t bytes, uint64_t* signal,
                                        uint64_t add, int pe) {
  nvshmemx_putmem_signal_nbi_block(dst, src, bytes, signal, add, NVSHMEM_SIGNAL_ADD, pe);
}

// The calling warp puts `bytes` from local `src` to `dst` (a symmetric address) on `pe`, without
// waiting; every lane of the warp calls it. Complete once quiet() returns.
__device__ inline void put_warp(void* dst, const void* src, size_t bytes, int pe) {
  nvshmemx_putmem_nbi_warp(dst, src, bytes, pe);
}

// Every put this PE issued before the call has completed (delivered at its target) on return.
__device__ inline void quiet() { nvshmem_quiet(); }

// Sets the symmetric `signal` on `pe` to `value` (atomically, for waiters polling it).
__device__ inline void signal_set(uint64_t* signal, uint64_t value, int pe) {
  nvshmemx_signal_op(signal, value, NVSHMEM_SIGNAL_SET, pe);
}

// Waits until the local symmetric `signal` is at least `value`, at most `timeout_ns`. Returns
// true on arrival; on timeout returns false with the last value seen in *seen.
__device__ inline bool wait_signal_at_least(uint64_t* signal, uint64_t value, uint64_t timeout_ns,
                                            uint64_t* seen) {
  const uint64_t start = kernels::global_timer_ns();
  uint64_t now_value = nvshmem_signal_fetch(signal);
  while (now_value < value) {
    if (kernels::global_timer_ns() - start > timeout_ns) {
      *seen = now_value;
      return false;
    }
    now_value = nvshmem_signal_fetch(signal);
  }
  *seen = now_value;
  return true;
}

}  // namespace epcomm::nvshmem
