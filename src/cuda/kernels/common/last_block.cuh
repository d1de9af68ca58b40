// The "last block" hand-off of kernels whose blocks each finish a share of the work and whose
// last block then publishes or resets what all of them wrote (the low-latency kernels and the
// NVSHMEM module's puts).
#pragma once

#include <cstdint>

#include "ptx.cuh"

namespace epcomm::kernels {

// Called by every thread of every block at the end of a kernel: true in the one block that
// finishes last, after every other block's earlier reads and writes. That block may then reset
// what all blocks read (and the counter itself, for the next launch), or publish them: see
// post_signals. kWroteRemote: the block wrote peers' memory, which it fences at system scope
// before counting itself done, so each block's publish is self-sufficient: the last block's
// signal then follows every block's own system-scope release, not only the gpu-scope atomics.
template <bool kWroteRemote>
__device__ __forceinline__ bool last_block_done(uint32_t* blocks_done) {
  __shared__ bool s_last;
  __syncthreads();
  if (threadIdx.x == 0) {
    if (kWroteRemote) fence_acq_rel_sys();
    s_last = atomic_add_acq_rel_gpu(blocks_done, 1) == gridDim.x - 1;
    if (s_last) *blocks_done = 0;
  }
  __syncthreads();
  return s_last;
}

}  // namespace epcomm::kernels
