// The kernels of epcomm's NVSHMEM module: compiled with relocatable device code, device-linked
// with libnvshmem_device.a into a fatbin of their own, embedded in libepcomm and bound to the
// running NVSHMEM job with nvshmemx_cumodule_init when loaded (src/cuda/nvshmem_module.cpp).
#include "cuda/kernels/common/last_block.cuh"
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
  if (threadIdx.x == 0) epcomm::nvshmem::quiet();
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

namespace {

using epcomm::nvshmem::LlPuts;

// Called by every thread once its block's puts are issued: the block's puts complete
// (nvshmem_quiet), then the last block to get here posts every nonzero word with a signal
// set, so each word reaches its PE after all the data of this launch.
template <typename PeOf, typename SignalOf>
__device__ void post_words_after_puts(const LlPuts& a, PeOf pe_of, SignalOf signal_of) {
  __syncthreads();
  if (threadIdx.x == 0) epcomm::nvshmem::quiet();
  if (!epcomm::kernels::last_block_done<true>(a.blocks_done)) return;
  for (int i = threadIdx.x; i < a.num_words; i += blockDim.x) {
    const uint64_t word = a.words[i];
    if (word != 0) epcomm::nvshmem::signal_set(signal_of(i), word, pe_of(i));
  }
}

// Whether the rank has failed: its send kernels then returned without staging anything.
__device__ bool rank_failed(const LlPuts& a) {
  return *reinterpret_cast<const volatile int32_t*>(a.failed) != 0;
}

}  // namespace

// Warp w puts messages w, w + W, ... (W warps in all) from the outbox to their slots: a bf16
// message whole, an fp8 one as its H row bytes and then its scales and header.
extern "C" __global__ void epcomm_nvshmem_ll_dispatch_puts(LlPuts a) {
  if (rank_failed(a)) return;
  const int warps = blockDim.x / 32;
  const size_t bytes = a.layout.message_bytes, row = static_cast<size_t>(a.layout.hidden);
  const size_t scales = a.layout.message_scales_offset();
  for (int i = blockIdx.x * warps + threadIdx.x / 32; i < a.num_messages; i += gridDim.x * warps) {
    const epcomm::nvshmem::LlRemoteMessage m = a.messages[i];
    if (m.rank < 0) continue;  // warp-uniform: the put is collective over the warp
    char* src = a.layout.outbox(a.region, a.buffer, static_cast<size_t>(i));
    char* dst = a.layout.message(a.region, a.buffer, m.local_expert, a.rank, m.slot);
    if (a.fp8) {
      epcomm::nvshmem::put_warp(dst, src, row, m.rank);
      epcomm::nvshmem::put_warp(dst + scales, src + scales, bytes - scales, m.rank);
    } else {
      epcomm::nvshmem::put_warp(dst, src, bytes, m.rank);
    }
  }
  post_words_after_puts(
      a, [&](int e) { return e / a.experts_per_rank; },
      [&](int e) { return a.layout.count(a.region, a.buffer, e % a.experts_per_rank, a.rank); });
}

// Warp w takes rows w, w + W, ... of each local expert; a row whose source is outside this
// rank's domain (a nonzero word) goes from its staging slot, the message slot it arrived in,
// to combine_rows[token][top-k slot] at the source.
extern "C" __global__ void epcomm_nvshmem_ll_combine_puts(LlPuts a) {
  if (rank_failed(a)) return;
  const int warps = blockDim.x / 32, R = a.layout.num_ranks;
  const size_t row_bytes = 2 * static_cast<size_t>(a.layout.hidden);
  for (int le = 0; le < a.experts_per_rank; ++le) {
    const int rows = a.recv_count[le];
    for (int j = blockIdx.x * warps + threadIdx.x / 32; j < rows; j += gridDim.x * warps) {
      const int32_t* src = a.recv_src + (le * a.layout.rows_per_expert() + j) * 3;
      const int s = src[0];
      if (a.words[s] == 0) continue;  // warp-uniform
      const int i = j - a.layout_range[(le * R + s) * 2];
      epcomm::nvshmem::put_warp(a.layout.combine_row(a.region, a.buffer, src[1], src[2]),
                                a.layout.message(a.region, a.buffer, le, s, i), row_bytes, s);
    }
  }
  post_words_after_puts(
      a, [](int s) { return s; },
      [&](int) { return a.layout.delivered(a.region, a.buffer, a.rank); });
}
