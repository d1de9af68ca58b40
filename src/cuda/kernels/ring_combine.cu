// Ring combine (DESIGN section 7): the dispatch's rings run backwards. Sender blocks push the
// y rows each source's channel received, in row order; receiver blocks take a wave of tokens
// (at most Q, so a wave always fits in the rings), wait for each token's rows, sum them in
// ascending rank order in fp32 and round once to bf16: the same bits as gather combine.
#include <algorithm>

#include "common/ring.cuh"
#include "common/warp_copy.cuh"
#include "launch.hpp"

namespace epcomm::kernels {
namespace {

using cuda::RingParams;

// Sender: the rows this rank received from source s's channel are contiguous in its pool.
__device__ bool combine_send(const RingParams& p, int channel, int* s_counts) {
  const int R = p.num_ranks, lane = threadIdx.x % 32;
  const WarpGroup g = make_groups(R);
  if (g.index < 0) return true;
  char* local = p.peers[p.rank];
  for (int src = g.index; src < R; src += g.count) {
    int first = 0;
    for (int s = 0; s < src; ++s) first += p.routing.recv_counts[s];
    for (int c = 0; c < channel; ++c) first += p.routing.ring_recv_counts[c * R + src];
    const int total = p.routing.ring_recv_counts[channel * R + src];
    uint64_t sent = p.sent[channel * R + src];
    const bool ok = ring_push(p, g, channel, src, total, &s_counts[g.index], sent,
                              [&](int j, char* entry) {
      warp_copy(p.layout.entry_row(entry), p.layout.combine_row(local, first + j),
                p.layout.combine_row_bytes, lane);
    });
    if (!ok) return false;
    if (g.leader) p.sent[channel * R + src] = sent;
  }
  return true;
}

// Receiver: warp w of a wave takes token k0 + w. Its row from rank d is entry
// (consumed so far + rows earlier tokens of the wave take from d) of ring (channel, d).
__device__ bool combine_receive(const RingParams& p, int channel) {
  __shared__ uint32_t s_masks[32];
  __shared__ uint64_t s_consumed[32];
  __shared__ const uint4* s_rows[32][32];
  const int R = p.num_ranks, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int wave = min(static_cast<int>(blockDim.x / 32), p.layout.ring.slots);
  const int2 range = channel_tokens(p, channel);
  char* local = p.peers[p.rank];
  if (threadIdx.x < R) s_consumed[threadIdx.x] = p.received[channel * R + threadIdx.x];
  __syncthreads();
  const int num_vec = p.hidden / 8;
  for (int k0 = range.x; k0 < range.y; k0 += wave) {
    const int t = k0 + warp;
    const bool mine = warp < wave && t < range.y;
    if (warp < wave) {
      const int slot = mine && lane < R ? p.slot[static_cast<size_t>(t) * R + lane] : -1;
      const uint32_t mask = __ballot_sync(0xffffffffu, slot >= 0);
      if (lane == 0) s_masks[warp] = mask;
    }
    __syncthreads();
    bool failed = false;
    if (mine) {
      const uint32_t mask = s_masks[warp];
      if ((mask >> lane) & 1u) {  // lane d waits for its source's entry
        uint64_t index = s_consumed[lane];
        for (int w = 0; w < warp; ++w) index += (s_masks[w] >> lane) & 1u;
        failed = !wait_at_least(p.wait, p.layout.ring_tail(local, channel, lane), index + 1,
                                cuda::kPhaseRingData, lane);
        s_rows[warp][__popc(mask & lanemask_lt())] = reinterpret_cast<const uint4*>(
            p.layout.entry_row(p.layout.ring_entry(local, channel, lane, index)));
      }
      failed = __any_sync(0xffffffffu, failed);
      __syncwarp();
      const int n = __popc(mask);
      uint4* out = reinterpret_cast<uint4*>(p.out + static_cast<size_t>(t) * p.hidden);
      for (int v = lane; v < num_vec && !failed; v += 32) {
        float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        for (int j = 0; j < n; ++j) accumulate_bf16x8(acc, ld_na(s_rows[warp][j] + v));
        const size_t at = static_cast<size_t>(t) * num_vec + v;
        if (p.bias) accumulate_bf16x8(acc, reinterpret_cast<const uint4*>(p.bias)[at]);
        if (p.bias2) accumulate_bf16x8(acc, reinterpret_cast<const uint4*>(p.bias2)[at]);
        st_na(out + v, to_bf16x8(acc));
      }
    }
    if (__syncthreads_or(failed)) return false;
    if (threadIdx.x < R) {  // hand the wave's entries back
      int n = 0;
      for (int w = 0; w < wave; ++w) n += (s_masks[w] >> threadIdx.x) & 1u;
      if (n) {
        red_add_release_sys(p.layout.ring_head(p.peers[threadIdx.x], channel, p.rank), n);
        s_consumed[threadIdx.x] += n;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x < R) p.received[channel * R + threadIdx.x] = s_consumed[threadIdx.x];
  return true;
}

__global__ void __launch_bounds__(kRingThreads) ring_combine_kernel(RingParams p) {
  if (rank_failed(p.wait.state) || !p.wait.state->dispatch_ok) return;  // as gather_kernel
  __shared__ int s_counts[15];
  const int channels = p.layout.ring.channels;
  if (static_cast<int>(blockIdx.x) < channels) {
    combine_send(p, blockIdx.x, s_counts);
  } else {
    combine_receive(p, blockIdx.x - channels);
  }
}

}  // namespace

cudaError_t load_ring_dispatch_kernels();
int ring_dispatch_blocks_per_sm();

int ring_blocks_per_sm() {
  int n = 0;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, ring_combine_kernel, kRingThreads, 0);
  return std::min(n, ring_dispatch_blocks_per_sm());
}

cudaError_t load_ring_kernels() {
  const cudaError_t err = load_ring_dispatch_kernels();
  return err != cudaSuccess ? err : load_kernels(ring_combine_kernel);
}

void launch_ring_combine(const cuda::RingParams& p, cudaStream_t stream) {
  ring_combine_kernel<<<2 * p.layout.ring.channels, kRingThreads, 0, stream>>>(p);
}

}  // namespace epcomm::kernels
