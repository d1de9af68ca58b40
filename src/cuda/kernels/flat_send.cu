// Flat dispatch send (DESIGN section 5, steps 4-5): every block is a sender for a contiguous
// range of tokens. A warp reads each token's row once, in 16-byte vectors, and writes it and a
// meta row straight into every destination's receive pool at the token's final slot. After
// its writes, a block publishes the number of rows it delivered to each destination.
#include "common/meta_row.cuh"
#include "common/wait.cuh"
#include "launch.hpp"

namespace epcomm::kernels {
namespace {

using cuda::SendParams;

constexpr int kSendThreads = 1024;
constexpr int kUnroll = 4;  // 16-byte vectors per lane in flight per row pass

// Writes the row of token t to each destination in `mask` (bit j = destination dest_base + j).
__device__ __forceinline__ void send_row(const SendParams& p, char* const* peers, int t,
                                         int dest_base, uint32_t mask, int my_slot, int lane) {
  const size_t row_bytes = p.layout.row_bytes;
  const int num_vec = static_cast<int>(row_bytes / 16);
  const auto* src = reinterpret_cast<const uint4*>(static_cast<const char*>(p.x) + t * row_bytes);
  // NOTE: the loop bound is warp-uniform: the shuffles below need every lane, also when a row
  // has fewer than 32 vectors.
  for (int base = 0; base < num_vec; base += 32 * kUnroll) {
    const int v0 = base + lane;
    uint4 vec[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (v0 + 32 * u < num_vec) vec[u] = ld_nc_na(src + v0 + 32 * u);
    }
    for (uint32_t m = mask; m; m &= m - 1) {
      const int j = __ffs(m) - 1;
      const int row = __shfl_sync(0xffffffffu, my_slot, j);
      auto* dst = reinterpret_cast<uint4*>(p.layout.row(peers[dest_base + j], row));
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (v0 + 32 * u < num_vec) st_na(dst + v0 + 32 * u, vec[u]);
      }
    }
  }
}

// Writes the meta row of token t for each destination in `mask`.
__device__ __forceinline__ void send_meta(const SendParams& p, char* const* peers, int t,
                                          int dest_base, uint32_t mask, int my_slot, int lane) {
  const TokenSlots slots =
      p.cached ? TokenSlots{}
               : load_token_slots(p.topk_idx, p.idx_int64, p.topk_weights, t, p.num_topk,
                                  p.num_ranks * p.experts_per_rank, lane);
  for (uint32_t m = mask; m; m &= m - 1) {
    const int j = __ffs(m) - 1, d = dest_base + j;
    const int row = __shfl_sync(0xffffffffu, my_slot, j);
    write_meta_row(p.layout.meta_row(peers[d], row), p.layout.meta, slots, p.cached, p.rank, t, d,
                   p.num_topk, p.experts_per_rank, p.x_scales, lane);
  }
}

__global__ void __launch_bounds__(kSendThreads) flat_send_kernel(SendParams p) {
  if (rank_failed(p.state) || !p.state->dispatch_ok) return;
  extern __shared__ char* s_peers[];  // [R], then delivered counts [R]
  auto* s_delivered = reinterpret_cast<int*>(s_peers + p.num_ranks);
  const int R = p.num_ranks;
  for (int d = threadIdx.x; d < R; d += blockDim.x) {
    s_peers[d] = p.peers[d];
    s_delivered[d] = 0;
  }
  __syncthreads();

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;
  const int t_begin = static_cast<int>(static_cast<long long>(p.num_tokens) * blockIdx.x / gridDim.x);
  const int t_end = static_cast<int>(static_cast<long long>(p.num_tokens) * (blockIdx.x + 1) / gridDim.x);
  for (int t = t_begin + warp; t < t_end; t += num_warps) {
    for (int dest_base = 0; dest_base < R; dest_base += 32) {
      const int d = dest_base + lane;
      int my_slot = d < R ? p.slot[static_cast<size_t>(t) * R + d] : -1;
      if (!p.cached && my_slot >= 0) {  // final slot, kept in the handle for combine and reuse
        my_slot += p.chunk_offsets[(t / cuda::kLayoutChunkTokens) * R + d];
        p.slot[static_cast<size_t>(t) * R + d] = my_slot;
      }
      const uint32_t mask = __ballot_sync(0xffffffffu, my_slot >= 0);
      if (!mask) continue;
      send_row(p, s_peers, t, dest_base, mask, my_slot, lane);
      send_meta(p, s_peers, t, dest_base, mask, my_slot, lane);
      if (my_slot >= 0) atomicAdd(&s_delivered[d], 1);
    }
  }
  // NOTE: the barrier comes before the release: publishing first would let a counter
  // overtake rows other warps of this block are still writing.
  __syncthreads();
  for (int d = threadIdx.x; d < R; d += blockDim.x) {
    if (s_delivered[d] == 0) continue;
    __threadfence_system();
    red_add_release_sys(p.layout.arrived(s_peers[d]) + p.rank, s_delivered[d]);
  }
}

}  // namespace

cudaError_t load_flat_send_kernels() { return load_kernels(flat_send_kernel); }

void launch_flat_send(const cuda::SendParams& p, int num_blocks, cudaStream_t stream) {
  if (p.num_tokens == 0) return;
  const size_t shared = (sizeof(char*) + sizeof(int)) * p.num_ranks;
  flat_send_kernel<<<num_blocks, kSendThreads, shared, stream>>>(p);
}

}  // namespace epcomm::kernels
