// Ring dispatch (DESIGN section 7), the two-stage baseline: sender blocks push each channel's
// rows through a ring of Q entries per destination; receiver blocks copy each entry to its
// final row in the pool (and its meta row), then hand the entry back. Same outputs as flat.
#include "common/meta_row.cuh"
#include "common/ring.cuh"
#include "common/warp_copy.cuh"
#include "launch.hpp"

namespace epcomm::kernels {
namespace {

using cuda::RingParams;

// Final slot = position in chunk + the chunk's first row (from notify), kept in the handle.
__device__ void finalize_slots(const RingParams& p, int2 range) {
  const int R = p.num_ranks;
  for (int i = threadIdx.x; i < (range.y - range.x) * R; i += blockDim.x) {
    const int t = range.x + i / R, d = i % R;
    const size_t k = static_cast<size_t>(t) * R + d;
    const int pos = p.slot[k];
    if (pos >= 0) p.slot[k] = pos + p.chunk_offsets[(t / cuda::kLayoutChunkTokens) * R + d];
  }
}

// Sender of one channel: for each destination, the channel's tokens bound there, in order.
__device__ bool dispatch_send(const RingParams& p, int channel, int* s_counts) {
  const int R = p.num_ranks, lane = threadIdx.x % 32;
  const int2 range = channel_tokens(p, channel);
  if (!p.cached) {
    finalize_slots(p, range);
    __syncthreads();
  }
  const WarpGroup g = make_groups(R);
  if (g.index < 0) return true;
  const size_t row_bytes = p.layout.row_bytes;
  for (int d = g.index; d < R; d += g.count) {
    uint64_t sent = p.sent[channel * R + d];
    for (int base = range.x; base < range.y; base += 32) {
      const int t = base + lane;
      const int slot = t < range.y ? p.slot[static_cast<size_t>(t) * R + d] : -1;
      const uint32_t mask = __ballot_sync(0xffffffffu, slot >= 0);
      if (!mask) continue;
      const bool ok = ring_push(
          p, g, channel, d, __popc(mask), &s_counts[g.index], sent, [&](int j, char* entry) {
            uint32_t rest = mask;  // drop the j lowest set bits: the lowest left is the j-th token
            for (int i = 0; i < j; ++i) rest &= rest - 1;
            const int bit = __ffs(rest) - 1;
            const int token = base + bit;
            const int row = __shfl_sync(0xffffffffu, slot, bit);
            if (lane == 0) *reinterpret_cast<int32_t*>(entry) = row;
            warp_copy(p.layout.entry_row(entry), static_cast<const char*>(p.x) + token * row_bytes,
                      row_bytes, lane);
            const TokenSlots slots =
                p.cached ? TokenSlots{}
                         : load_token_slots(p.topk_idx, p.idx_int64, p.topk_weights, token,
                                            p.num_topk, R * p.experts_per_rank, lane);
            write_meta_row(p.layout.entry_meta(entry), p.layout.meta, slots, p.cached, p.rank,
                           token, d, p.num_topk, p.experts_per_rank,
                           token_scales(p.x_scales, token, p.layout.meta.num_scales), lane);
          });
      if (!ok) return false;
    }
    if (g.leader) p.sent[channel * R + d] = sent;
  }
  return true;
}

// Receiver of one channel: every source's ring, entries to their final rows.
__device__ bool dispatch_receive(const RingParams& p, int channel, int* s_counts) {
  const int R = p.num_ranks, lane = threadIdx.x % 32;
  const WarpGroup g = make_groups(R);
  if (g.index < 0) return true;
  char* local = p.peers[p.rank];
  const cuda::MetaLayout& meta = p.layout.meta;
  for (int src = g.index; src < R; src += g.count) {
    const int total = p.routing.ring_recv_counts[channel * R + src];
    const bool ok = ring_pop(p, g, channel, src, total, &s_counts[g.index], [&](int, char* entry) {
      const int row = *reinterpret_cast<const int32_t*>(entry);
      warp_copy(p.layout.row(local, row), p.layout.entry_row(entry), p.layout.row_bytes, lane);
      char* meta_out = p.layout.meta_row(local, row);
      const char* meta_in = p.layout.entry_meta(entry);
      if (!p.cached) {
        warp_copy(meta_out, meta_in, meta.stride(), lane);
      } else {
        for (int i = lane; i < meta.num_scales; i += 32) {
          reinterpret_cast<float*>(meta_out + meta.scales_offset())[i] =
              reinterpret_cast<const float*>(meta_in + meta.scales_offset())[i];
        }
      }
    });
    if (!ok) return false;
  }
  return true;
}

__global__ void __launch_bounds__(kRingThreads) ring_dispatch_kernel(RingParams p) {
  if (rank_failed(p.wait.state) || !p.wait.state->dispatch_ok) return;
  __shared__ int s_counts[15];
  const int channels = p.layout.ring.channels;
  if (static_cast<int>(blockIdx.x) < channels) {
    dispatch_send(p, blockIdx.x, s_counts);
  } else {
    dispatch_receive(p, blockIdx.x - channels, s_counts);
  }
}

}  // namespace

cudaError_t load_ring_dispatch_kernels() { return load_kernels(ring_dispatch_kernel); }

void launch_ring_dispatch(const cuda::RingParams& p, cudaStream_t stream) {
  ring_dispatch_kernel<<<2 * p.layout.ring.channels, kRingThreads, 0, stream>>>(p);
}

int ring_dispatch_blocks_per_sm() {
  int n = 0;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, ring_dispatch_kernel, kRingThreads, 0);
  return n;
}

}  // namespace epcomm::kernels
