// Flat dispatch send (DESIGN section 5, steps 4-5): every block is a sender for a contiguous
// range of tokens. A warp reads each token's row once and writes it and a meta row straight into
// every destination's receive pool at the token's final slot (expert-major: one row per (token,
// expert) pair, at the pair's final row in its expert's group). Rows move in 16-byte vectors
// through registers, or (SendParams::bulk) in bulk copies through two shared-memory chunk
// buffers per warp. After its writes, a block publishes the number of rows it delivered to each
// destination. Across NVLink domains a token bound for other domains is also staged once as a
// record, which the NVSHMEM module puts to its forwarders (domain_forward.cu).
#include <algorithm>

#include "common/bulk_copy.cuh"
#include "common/meta_row.cuh"
#include "common/wait.cuh"
#include "common/warp_copy.cuh"
#include "launch.hpp"

namespace epcomm::kernels {
namespace {

using cuda::SendParams;

constexpr int kSendThreads = 1024;
constexpr int kSendWarps = kSendThreads / 32;
constexpr int kUnroll = 4;  // 16-byte vectors per lane in flight per row pass
// Bulk copies: bytes per chunk, two chunk buffers and two mbarriers per warp (192.5 KB a block).
constexpr uint32_t kBulkChunk = 3072;
constexpr size_t kBulkAlign = 128;

// Shared memory: peers [R], delivered counts [R]; with bulk copies then, 128-byte aligned,
// mbarriers [warps][2] and chunk buffers [warps][2][kBulkChunk].
EPCOMM_HD size_t bulk_area_offset(int num_ranks) {
  return cuda::align_up((sizeof(char*) + sizeof(int)) * num_ranks, kBulkAlign);
}
size_t send_shared_bytes(int num_ranks, bool bulk) {
  return bulk ? bulk_area_offset(num_ranks) + kSendWarps * 2 * (sizeof(uint64_t) + kBulkChunk)
              : (sizeof(char*) + sizeof(int)) * num_ranks;
}

// A warp's two chunk buffers (buffer b at buf + b * kBulkChunk, its mbarrier at bar + b). Every
// lane keeps the same copy of `parity` (bit b: the parity of buffer b's next phase), so that all
// lanes can wait on a buffer's load. No arrays: indexing one by a chunk number would put the
// struct in local memory.
struct BulkBuffers {
  char* buf;
  uint64_t* bar;
  uint32_t parity;
};

__device__ __forceinline__ uint32_t chunk_bytes(uint32_t row_bytes, int c) {
  return min(kBulkChunk, row_bytes - static_cast<uint32_t>(c) * kBulkChunk);
}

// Lane 0 starts loading chunk c of `src` into buffer c & 1, once every lane's stores have read
// what that buffer held.
__device__ __forceinline__ void load_chunk(const BulkBuffers& b, const char* src,
                                           uint32_t row_bytes, int c, int lane) {
  bulk_wait_read<0>();
  __syncwarp();
  if (lane == 0) {
    bulk_load(b.buf + (c & 1) * kBulkChunk, src + static_cast<size_t>(c) * kBulkChunk,
              chunk_bytes(row_bytes, c), b.bar + (c & 1));
  }
}

// The bulk form of send_row: chunk c + 1 loads while the lanes in `mask` store chunk c, each to
// its own destination row, in a bulk group of its own.
template <bool kPairs>
__device__ __forceinline__ void send_row_bulk(const SendParams& p, char* const* peers, int t,
                                              int dest_base, uint32_t mask, int my_slot,
                                              int my_dest, int lane, BulkBuffers& b) {
  const auto row_bytes = static_cast<uint32_t>(p.layout.row_bytes);
  const char* src = static_cast<const char*>(p.x) + static_cast<size_t>(t) * row_bytes;
  const bool mine = (mask >> lane) & 1u;
  char* dst = mine ? p.layout.row(peers[kPairs ? my_dest : dest_base + lane], my_slot) : nullptr;
  const int n = static_cast<int>((row_bytes + kBulkChunk - 1) / kBulkChunk);
  load_chunk(b, src, row_bytes, 0, lane);
  for (int c = 0; c < n; ++c) {  // warp-uniform
    const int cur = c & 1;
    if (c + 1 < n) load_chunk(b, src, row_bytes, c + 1, lane);
    mbarrier_wait(b.bar + cur, (b.parity >> cur) & 1u);
    b.parity ^= 1u << cur;
    if (mine) {
      bulk_store(dst + static_cast<size_t>(c) * kBulkChunk, b.buf + cur * kBulkChunk,
                 chunk_bytes(row_bytes, c));
      bulk_commit();
    }
  }
}

// Writes the row of token t to each lane j in `mask`: at row my_slot of lane j, on rank
// dest_base + j (kPairs: on rank my_dest of lane j).
template <bool kPairs>
__device__ __forceinline__ void send_row_vectors(const SendParams& p, char* const* peers, int t,
                                                 int dest_base, uint32_t mask, int my_slot,
                                                 int my_dest, int lane) {
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
      const int d = kPairs ? __shfl_sync(0xffffffffu, my_dest, j) : dest_base + j;
      auto* dst = reinterpret_cast<uint4*>(p.layout.row(peers[d], row));
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (v0 + 32 * u < num_vec) st_na(dst + v0 + 32 * u, vec[u]);
      }
    }
  }
}

template <bool kPairs, bool kBulk>
__device__ __forceinline__ void send_row(const SendParams& p, char* const* peers, int t,
                                         int dest_base, uint32_t mask, int my_slot, int my_dest,
                                         int lane, BulkBuffers& b) {
  if (kBulk) {
    send_row_bulk<kPairs>(p, peers, t, dest_base, mask, my_slot, my_dest, lane, b);
  } else {
    send_row_vectors<kPairs>(p, peers, t, dest_base, mask, my_slot, my_dest, lane);
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
                   p.num_topk, p.experts_per_rank,
                   token_scales(p.x_scales, t, p.layout.meta.num_scales), lane);
  }
}

// Writes the meta row of each pair (lane k: slot k of token t) in `mask`: source (rank, t), the
// slot and its weight in the first id and weight words, and fp8 scales (cached: scales only).
__device__ __forceinline__ void send_pair_meta(const SendParams& p, char* const* peers, int t,
                                               uint32_t mask, int my_row, int my_dest,
                                               float my_weight, int lane) {
  for (uint32_t m = mask; m; m &= m - 1) {
    const int k = __ffs(m) - 1;
    const int row = __shfl_sync(0xffffffffu, my_row, k);
    const int d = __shfl_sync(0xffffffffu, my_dest, k);
    const float w = __shfl_sync(0xffffffffu, my_weight, k);
    char* out = p.layout.meta_row(peers[d], row);
    if (!p.cached && lane == 0) {
      reinterpret_cast<int32_t*>(out)[0] = p.rank;
      reinterpret_cast<int32_t*>(out)[1] = t;
      reinterpret_cast<int32_t*>(out + p.layout.meta.ids_offset())[0] = k;
      reinterpret_cast<float*>(out + p.layout.meta.weights_offset())[0] = w;
    }
    auto* scales = reinterpret_cast<float*>(out + p.layout.meta.scales_offset());
    const int S = p.layout.meta.num_scales;
    for (int i = lane; i < S; i += 32) scales[i] = p.x_scales[static_cast<size_t>(t) * S + i];
  }
}

// Across domains: the record of token t for the forwarders of the remote domains it reaches
// (domain_layout.hpp): its final slots at every rank (written by the caller), row, fp8 scales,
// and (fresh) its top-k ids and weights; tagged with this dispatch's epoch last.
__device__ __forceinline__ void stage_record(const SendParams& p, char* record, int t, int lane) {
  const cuda::DomainLayout& dl = p.domains.layout;
  warp_copy(dl.row(record), static_cast<const char*>(p.x) + t * p.layout.row_bytes,
            p.layout.row_bytes, lane);
  const float* scales = token_scales(p.x_scales, t, dl.num_scales);
  for (int i = lane; i < dl.num_scales; i += 32) dl.scales(record)[i] = scales[i];
  if (!p.cached) {
    const TokenSlots slots = load_token_slots(p.topk_idx, p.idx_int64, p.topk_weights, t,
                                              p.num_topk, p.num_ranks * p.experts_per_rank, lane);
    if (lane < p.num_topk) {
      dl.ids(record)[lane] = static_cast<int32_t>(slots.expert);
      dl.weights(record)[lane] = slots.weight;
    }
  }
  __syncwarp();
  if (lane == 0) {
    dl.header(record)->token = t;
    dl.header(record)->tag = cuda::sequence_tag(p.state->epoch);
  }
}

// Expert-major: lane k < K handles slot k of token t. A fresh dispatch makes the pair's row
// final (its chunk's first row for the expert + its position among them) and keeps row,
// destination and weight in the handle; a cached one reads them back.
template <bool kBulk>
__device__ __forceinline__ void send_pairs(const SendParams& p, char* const* peers, int t,
                                           int* s_delivered, int lane, BulkBuffers& b) {
  const int K = p.num_topk, E = p.num_ranks * p.experts_per_rank;
  int row = -1, dest = -1;
  float weight = 0.f;
  if (lane < K) {
    const size_t i = static_cast<size_t>(t) * K + lane;
    row = p.routing.pair_row[i];
    if (p.cached) {
      dest = row >= 0 ? p.routing.pair_dest[i] : -1;
    } else {
      if (row >= 0) {  // a pair: its id is in range (the layout step checked)
        const int64_t e = p.idx_int64 ? static_cast<const int64_t*>(p.topk_idx)[i]
                                      : static_cast<const int32_t*>(p.topk_idx)[i];
        row += p.chunk_expert_offsets[static_cast<size_t>(t / cuda::kLayoutChunkTokens) * E + e];
        dest = static_cast<int>(e / p.experts_per_rank);
        if (p.topk_weights) weight = p.topk_weights[i];
      }
      p.routing.pair_row[i] = row;
      p.routing.pair_dest[i] = dest;
      p.routing.pair_weight[i] = weight;
    }
  }
  const uint32_t mask = __ballot_sync(0xffffffffu, row >= 0);
  if (!mask) return;
  send_row<true, kBulk>(p, peers, t, 0, mask, row, dest, lane, b);
  send_pair_meta(p, peers, t, mask, row, dest, weight, lane);
  if (row >= 0) atomicAdd(&s_delivered[dest], 1);
}

// kPairs = p.expert_major (a kernel of its own, so that the token-major one keeps its registers);
// kBulk = p.bulk; kAcross = p.domains.staging != null (token-major vector stores only).
template <bool kPairs, bool kBulk, bool kAcross = false>
__global__ void __launch_bounds__(kSendThreads) flat_send_kernel(SendParams p) {
  if (rank_failed(p.state) || !p.state->dispatch_ok) return;
  extern __shared__ char* s_peers[];  // send_shared_bytes
  auto* s_delivered = reinterpret_cast<int*>(s_peers + p.num_ranks);
  const int R = p.num_ranks;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;
  for (int d = threadIdx.x; d < R; d += blockDim.x) {
    s_peers[d] = p.peers[d];
    s_delivered[d] = 0;
  }
  BulkBuffers bulk{};
  if (kBulk) {
    char* area = reinterpret_cast<char*>(s_peers) + bulk_area_offset(R);
    auto* bars = reinterpret_cast<uint64_t*>(area);
    char* bufs = area + kSendWarps * 2 * sizeof(uint64_t);
    bulk.bar = bars + warp * 2;
    bulk.buf = bufs + static_cast<size_t>(warp) * 2 * kBulkChunk;
    if (lane == 0) {
      mbarrier_init(bulk.bar);
      mbarrier_init(bulk.bar + 1);
      fence_mbarrier_init();
    }
    // The pool rows this kernel overwrites were read by peers' kernels before the count
    // exchange acquired their release; bulk writes come after that in the async proxy too.
    fence_generic_to_bulk();
  }
  __syncthreads();

  const int t_begin =
      static_cast<int>(static_cast<long long>(p.num_tokens) * blockIdx.x / gridDim.x);
  const int t_end =
      static_cast<int>(static_cast<long long>(p.num_tokens) * (blockIdx.x + 1) / gridDim.x);
  for (int t = t_begin + warp; t < t_end; t += num_warps) {
    if (kPairs) {
      send_pairs<kBulk>(p, s_peers, t, s_delivered, lane, bulk);
      continue;
    }
    char* record = kAcross ? p.domains.layout.out_record(p.domains.staging, t) : nullptr;
    bool any_remote = false;
    for (int dest_base = 0; dest_base < R; dest_base += 32) {
      const int d = dest_base + lane;
      int my_slot = d < R ? p.slot[static_cast<size_t>(t) * R + d] : -1;
      if (!p.cached && my_slot >= 0) {  // final slot, kept in the handle for combine and reuse
        my_slot += p.chunk_offsets[(t / cuda::kLayoutChunkTokens) * R + d];
        p.slot[static_cast<size_t>(t) * R + d] = my_slot;
      }
      // A destination outside the domain is reached through a forwarder.
      const bool remote = kAcross && my_slot >= 0 && s_peers[d] == nullptr;
      if (kAcross) {
        if (d < R) p.domains.layout.slots(record)[d] = my_slot;
        any_remote = __ballot_sync(0xffffffffu, remote) != 0 || any_remote;
      }
      const bool local = my_slot >= 0 && !remote;
      const uint32_t mask = __ballot_sync(0xffffffffu, local);
      if (!mask) continue;
      send_row<false, kBulk>(p, s_peers, t, dest_base, mask, my_slot, 0, lane, bulk);
      send_meta(p, s_peers, t, dest_base, mask, my_slot, lane);
      if (local) atomicAdd(&s_delivered[d], 1);
    }
    if (kAcross && any_remote) stage_record(p, record, t, lane);
  }
  if (kBulk) bulk_wait_written();  // every lane's bulk stores have landed
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

cudaError_t load_flat_send_kernels() {
  // The bulk kernels take more than the default 48 KB of dynamic shared memory: allow what a
  // block of this device may opt in to (the backend uses them only where their size fits).
  int device = 0, optin = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  }
  for (const void* k : {reinterpret_cast<const void*>(flat_send_kernel<false, true>),
                        reinterpret_cast<const void*>(flat_send_kernel<true, true>)}) {
    if (err == cudaSuccess) {
      err = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, optin);
    }
  }
  if (err != cudaSuccess) return err;
  return load_kernels(flat_send_kernel<false, false>, flat_send_kernel<true, false>,
                      flat_send_kernel<false, true>, flat_send_kernel<true, true>,
                      flat_send_kernel<false, false, true>);
}

size_t flat_send_shared_bytes(int num_ranks, bool bulk) {
  return send_shared_bytes(num_ranks, bulk);
}

void launch_flat_send(const cuda::SendParams& p, int num_blocks, cudaStream_t stream) {
  if (p.num_tokens == 0) return;
  const size_t shared = send_shared_bytes(p.num_ranks, p.bulk);
  if (p.domains.staging != nullptr) {  // the backend refuses expert-major rows across domains
    flat_send_kernel<false, false, true><<<num_blocks, kSendThreads, shared, stream>>>(p);
  } else if (p.bulk && p.expert_major) {
    flat_send_kernel<true, true><<<num_blocks, kSendThreads, shared, stream>>>(p);
  } else if (p.bulk) {
    flat_send_kernel<false, true><<<num_blocks, kSendThreads, shared, stream>>>(p);
  } else if (p.expert_major) {
    flat_send_kernel<true, false><<<num_blocks, kSendThreads, shared, stream>>>(p);
  } else {
    flat_send_kernel<false, false><<<num_blocks, kSendThreads, shared, stream>>>(p);
  }
}

}  // namespace epcomm::kernels
