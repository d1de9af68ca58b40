// Gather combine (DESIGN section 6). A one-block kernel raises this rank's ready signal at
// every peer and waits for every peer's; then a wide kernel with no waits gathers, for each
// local token, the expert outputs from the ranks it was sent to, in ascending rank order,
// accumulates in fp32, adds the optional biases (bias, then bias2) and rounds once to bf16.
// Expert-major handles gather each token's pairs instead, in ascending slot order, weighted by
// fmaf when asked (docs/design.md section 24). Where bulk copies may read peer memory
// (GatherParams::bulk), the rows come into shared memory through the TMA engine instead of
// registers, so that an SM keeps more bytes in flight (docs/design.md section 26); the sum is
// the same, term for term.
#include "common/bulk_copy.cuh"
#include "common/wait.cuh"
#include "common/warp_copy.cuh"
#include "launch.hpp"

namespace epcomm::kernels {
namespace {

constexpr int kGatherThreads = 1024;
constexpr int kGatherUnroll = 2;  // 16-byte vectors per lane per pass
constexpr int kGatherBatch = 4;   // source ranks whose loads are in flight together
// Bulk gather: 8 warps a block, each with kGatherSlots chunk buffers (and an mbarrier each) that
// its next pieces (kGatherChunk bytes of one row) load into ahead of the sums.
constexpr int kBulkGatherThreads = 256;
constexpr int kBulkGatherWarps = kBulkGatherThreads / 32;
constexpr uint32_t kGatherChunk = 2048;  // 4 vectors a lane
constexpr int kGatherChunkVectors = static_cast<int>(kGatherChunk / 16 / 32);
constexpr int kGatherSlots = 12;
constexpr size_t kGatherBulkAlign = 128;

// One ready round: this rank's y is in its pool, and every peer has finished the work before
// its own round (its previous gather included, which a repeated combine relies on).
// NOTE: after a rejected dispatch (every rank reached the same verdict) the routing is not
// final; every rank skips the combine and the error surfaces at synchronize().
__global__ void __launch_bounds__(128) combine_ready_kernel(cuda::CombineReadyParams p) {
  cuda::DeviceState* state = p.wait.state;
  if (rank_failed(state) || !state->dispatch_ok) return;
  const uint64_t seq = state->combine_seq + 1ull;
  // y was written by earlier work in this stream; make it visible system-wide, then signal.
  __threadfence_system();
  __syncthreads();
  for (int d = threadIdx.x; d < p.num_ranks; d += blockDim.x) {
    red_add_release_sys(p.layout.ready(p.peers[d]) + p.rank, 1);
  }
  const uint64_t* ready = p.layout.ready(p.peers[p.rank]);
  bool ok = true;
  for (int src = threadIdx.x; src < p.num_ranks && ok; src += blockDim.x) {
    ok = wait_at_least(p.wait, ready + src, seq, cuda::kPhaseCombineReady, src);
  }
  if (!__syncthreads_and(ok)) return;
  if (threadIdx.x == 0) state->combine_seq = seq;
}

// Rows one warp lists per token: one per rank, or (expert-major) one per top-k slot.
EPCOMM_HD int gather_width(const cuda::GatherParams& p) {
  return p.expert_major && p.num_topk > p.num_ranks ? p.num_topk : p.num_ranks;
}

// Adds the biases (bias, then bias2) to the sum of output vector `vec` (of all [T][H / 8]) and
// stores it rounded once to bf16.
template <bool kBias>
__device__ __forceinline__ void finish_vector(const cuda::GatherParams& p, float (&acc)[8],
                                              size_t vec, uint4* out) {
  if (kBias && p.bias) accumulate_bf16x8(acc, reinterpret_cast<const uint4*>(p.bias)[vec]);
  if (kBias && p.bias2) accumulate_bf16x8(acc, reinterpret_cast<const uint4*>(p.bias2)[vec]);
  st_na(out, to_bf16x8(acc));
}

// One warp gathers token t from the `n` rows listed in `rows`, in list order. kBias: add the
// biases the params name; kWeighted: acc = fmaf(weights[j], row j, acc) (instantiations of their
// own, so that the common combine without them keeps its registers).
template <bool kBias, bool kWeighted>
__device__ __forceinline__ void gather_token(const cuda::GatherParams& p, const uint4* const* rows,
                                             const float* weights, int n, int t, int lane) {
  const int num_vec = p.hidden / 8;
  auto* out = reinterpret_cast<uint4*>(p.out + static_cast<size_t>(t) * p.hidden);
  for (int v0 = lane; v0 < num_vec; v0 += 32 * kGatherUnroll) {
    float acc[kGatherUnroll][8];
#pragma unroll
    for (int u = 0; u < kGatherUnroll; ++u) {
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[u][i] = 0.f;
    }
    for (int j0 = 0; j0 < n; j0 += kGatherBatch) {
      uint4 vec[kGatherBatch][kGatherUnroll];
#pragma unroll
      for (int b = 0; b < kGatherBatch; ++b) {
#pragma unroll
        for (int u = 0; u < kGatherUnroll; ++u) {
          if (j0 + b < n && v0 + 32 * u < num_vec) vec[b][u] = ld_na(rows[j0 + b] + v0 + 32 * u);
        }
      }
#pragma unroll
      for (int b = 0; b < kGatherBatch; ++b) {
#pragma unroll
        for (int u = 0; u < kGatherUnroll; ++u) {
          if (j0 + b < n && v0 + 32 * u < num_vec) {
            if (kWeighted) {
              fma_bf16x8(acc[u], weights[j0 + b], vec[b][u]);
            } else {
              accumulate_bf16x8(acc[u], vec[b][u]);
            }
          }
        }
      }
    }
    const size_t token_vec = static_cast<size_t>(t) * num_vec;
#pragma unroll
    for (int u = 0; u < kGatherUnroll; ++u) {
      const int v = v0 + 32 * u;
      if (v < num_vec) finish_vector<kBias>(p, acc[u], token_vec + v, out + v);
    }
  }
}

// Lists token t's rows: expert-major, its pairs in ascending slot order (with their weights);
// else one row per rank it was sent to, in ascending rank order. Returns how many.
__device__ __forceinline__ int list_rows(const cuda::GatherParams& p, int t, const uint4** rows,
                                         float* weights, int lane) {
  int n = 0;
  if (p.expert_major) {
    const int K = p.num_topk;
    const size_t i = static_cast<size_t>(t) * K + lane;
    const int row = lane < K ? p.routing.pair_row[i] : -1;
    const uint32_t mask = __ballot_sync(0xffffffffu, row >= 0);
    if (row >= 0) {
      const int j = __popc(mask & lanemask_lt());
      rows[j] = reinterpret_cast<const uint4*>(
          p.layout.combine_row(p.peers[p.routing.pair_dest[i]], row));
      weights[j] = p.routing.pair_weight[i];
    }
    return __popc(mask);
  }
  for (int base = 0; base < p.num_ranks; base += 32) {
    const int d = base + lane;
    const int slot = d < p.num_ranks ? p.slot[static_cast<size_t>(t) * p.num_ranks + d] : -1;
    const uint32_t mask = __ballot_sync(0xffffffffu, slot >= 0);
    if (slot >= 0) {
      rows[n + __popc(mask & lanemask_lt())] =
          reinterpret_cast<const uint4*>(p.layout.combine_row(p.peers[d], slot));
    }
    n += __popc(mask);
  }
  return n;
}

template <bool kBias, bool kWeighted>
__global__ void __launch_bounds__(kGatherThreads) gather_kernel(cuda::GatherParams p) {
  if (rank_failed(p.state) || !p.state->dispatch_ok) return;
  // [warps][width] rows of this warp's token, then [warps][width] their weights
  extern __shared__ const uint4* s_rows[];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;
  const int width = gather_width(p);
  const uint4** rows = s_rows + warp * width;
  float* weights = reinterpret_cast<float*>(s_rows + num_warps * width) + warp * width;
  for (int t = blockIdx.x * num_warps + warp; t < p.num_tokens; t += gridDim.x * num_warps) {
    const int n = list_rows(p, t, rows, weights, lane);
    __syncwarp();
    gather_token<kBias, kWeighted>(p, rows, weights, n, t, lane);
    __syncwarp();
  }
}

// Shared memory of a bulk gather block: [warps][2][width] row lists, then their weights, then
// (128-byte aligned) mbarriers [warps][slots] and chunk buffers [warps][slots][kGatherChunk].
EPCOMM_HD size_t bulk_lists_bytes(int width) {
  return (sizeof(const uint4*) + sizeof(float)) * kBulkGatherWarps * 2 * width;
}
size_t bulk_gather_shared_bytes(int width) {
  const size_t lists =
      (bulk_lists_bytes(width) + kGatherBulkAlign - 1) / kGatherBulkAlign * kGatherBulkAlign;
  return lists + kBulkGatherWarps * kGatherSlots * (sizeof(uint64_t) + kGatherChunk);
}

// A warp's pieces in the order it sums them: for each of its tokens, for each chunk of the
// row, each listed row. Piece k uses slot k % kGatherSlots at phase parity k / kGatherSlots.
struct PieceCursor {
  int list = 0;   // which of the two row lists (the token's)
  int chunk = 0;  // chunk of the row
  int row = 0;    // index in the list
};

// Lane 0 starts loading the piece `at` of the token whose rows are `rows` into `buf`, whose
// mbarrier `bar` counts its bytes.
__device__ __forceinline__ void load_piece(const uint4* const* rows, const PieceCursor& at,
                                           uint32_t row_bytes, char* buf, uint64_t* bar, int lane) {
  if (lane != 0) return;
  const uint32_t offset = static_cast<uint32_t>(at.chunk) * kGatherChunk;
  // The lanes read this buffer's previous piece through the generic proxy (ordered before this
  // point by the warp barrier); the engine's write comes after them.
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  bulk_load(buf, reinterpret_cast<const char*>(rows[at.row]) + offset,
            min(kGatherChunk, row_bytes - offset), bar);
}

template <bool kBias, bool kWeighted>
__global__ void __launch_bounds__(kBulkGatherThreads, 1) gather_bulk_kernel(cuda::GatherParams p) {
  if (rank_failed(p.state) || !p.state->dispatch_ok) return;
  extern __shared__ __align__(128) char s_area[];  // bulk_gather_shared_bytes
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int width = gather_width(p);
  // List l of this warp (l = 0, 1: by turns the current token's and the next one's) is
  // lists + l * width, its weights weights + l * width (no arrays: a runtime index would put
  // them in local memory).
  const uint4** lists = reinterpret_cast<const uint4**>(s_area) + warp * 2 * width;
  float* weights = reinterpret_cast<float*>(reinterpret_cast<const uint4**>(s_area) +
                                            kBulkGatherWarps * 2 * width) +
                   warp * 2 * width;
  char* area = s_area + (bulk_lists_bytes(width) + kGatherBulkAlign - 1) / kGatherBulkAlign *
                            kGatherBulkAlign;
  uint64_t* bars = reinterpret_cast<uint64_t*>(area) + warp * kGatherSlots;
  char* bufs = area + kBulkGatherWarps * kGatherSlots * sizeof(uint64_t) +
               static_cast<size_t>(warp) * kGatherSlots * kGatherChunk;
  if (lane < kGatherSlots) mbarrier_init(bars + lane);
  fence_mbarrier_init();
  // Peers published their rows before the ready round this kernel follows; the engine reads
  // them after this thread's generic accesses.
  fence_generic_to_bulk();
  __syncthreads();

  const auto row_bytes = static_cast<uint32_t>(p.hidden) * 2u;
  const int num_chunks = static_cast<int>((row_bytes + kGatherChunk - 1) / kGatherChunk);
  const int stride = gridDim.x * kBulkGatherWarps;
  int t = blockIdx.x * kBulkGatherWarps + warp;
  if (t >= p.num_tokens) return;  // warp-uniform; no piece of this warp is in flight
  int n0 = list_rows(p, t, lists, weights, lane);
  int n1 = t + stride < p.num_tokens
               ? list_rows(p, t + stride, lists + width, weights + width, lane)
               : 0;
  __syncwarp();

  // The loader runs at most kGatherSlots pieces ahead of the sums, never past the next token.
  PieceCursor next{0, 0, 0};
  uint32_t issued = 0, summed = 0;
  auto load_ahead = [&](int current) {
    while (issued < summed + kGatherSlots) {
      const int l = next.list, n = l ? n1 : n0;
      if (next.chunk >= num_chunks || n == 0) {  // that token is all loaded (or has no rows)
        if (l != current) return;                // the next token: wait for it to be current
        next = PieceCursor{l ^ 1, 0, 0};
        continue;
      }
      const int slot = static_cast<int>(issued % kGatherSlots);
      load_piece(lists + l * width, next, row_bytes, bufs + slot * kGatherChunk, bars + slot, lane);
      ++issued;
      if (++next.row == n) next = PieceCursor{l, next.chunk + 1, 0};
    }
  };

  const int num_vec = p.hidden / 8;
  for (int cur = 0;; cur ^= 1) {
    const int n = cur ? n1 : n0;
    const float* w = weights + cur * width;
    for (int c = 0; c < num_chunks; ++c) {
      float acc[kGatherChunkVectors][8];
#pragma unroll
      for (int u = 0; u < kGatherChunkVectors; ++u) {
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[u][i] = 0.f;
      }
      for (int j = 0; j < n; ++j) {
        load_ahead(cur);
        const int slot = static_cast<int>(summed % kGatherSlots);
        mbarrier_wait(bars + slot, (summed / kGatherSlots) & 1u);
        const auto* piece = reinterpret_cast<const uint4*>(bufs + slot * kGatherChunk);
#pragma unroll
        for (int u = 0; u < kGatherChunkVectors; ++u) {
          const int v = c * kGatherChunkVectors * 32 + u * 32 + lane;
          if (v >= num_vec) continue;
          if (kWeighted) {
            fma_bf16x8(acc[u], w[j], piece[u * 32 + lane]);
          } else {
            accumulate_bf16x8(acc[u], piece[u * 32 + lane]);
          }
        }
        __syncwarp();  // every lane has read the slot before it is loaded again
        ++summed;
      }
      const size_t token_vec = static_cast<size_t>(t) * num_vec;
      auto* out = reinterpret_cast<uint4*>(p.out) + token_vec;
#pragma unroll
      for (int u = 0; u < kGatherChunkVectors; ++u) {
        const int v = c * kGatherChunkVectors * 32 + u * 32 + lane;
        if (v < num_vec) finish_vector<kBias>(p, acc[u], token_vec + v, out + v);
      }
    }
    // The token after the next one takes this token's list, once every piece of it is summed
    // (the loader may already be in the next token's pieces, never past them). A loader still
    // on this list (all its pieces loaded, or none to load) moves to the next token's first.
    if (next.list == cur) next = PieceCursor{cur ^ 1, 0, 0};
    t += stride;
    if (t >= p.num_tokens) break;
    const int after = t + stride < p.num_tokens ? list_rows(p, t + stride, lists + cur * width,
                                                            weights + cur * width, lane)
                                                : 0;
    (cur ? n1 : n0) = after;
    __syncwarp();
  }
}

}  // namespace

cudaError_t load_gather_combine_kernels() {
  // The bulk kernels take more than the default 48 KB of dynamic shared memory: allow what a
  // block of this device may opt in to (the backend uses them only where their size fits).
  int device = 0, optin = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  }
  for (const void* k : {reinterpret_cast<const void*>(gather_bulk_kernel<false, false>),
                        reinterpret_cast<const void*>(gather_bulk_kernel<true, false>),
                        reinterpret_cast<const void*>(gather_bulk_kernel<false, true>),
                        reinterpret_cast<const void*>(gather_bulk_kernel<true, true>)}) {
    if (err == cudaSuccess) {
      err = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, optin);
    }
  }
  if (err != cudaSuccess) return err;
  return load_kernels(combine_ready_kernel, gather_kernel<false, false>, gather_kernel<true, false>,
                      gather_kernel<false, true>, gather_kernel<true, true>,
                      gather_bulk_kernel<false, false>, gather_bulk_kernel<true, false>,
                      gather_bulk_kernel<false, true>, gather_bulk_kernel<true, true>);
}

size_t gather_bulk_shared_bytes(int num_ranks, bool expert_major, int num_topk) {
  cuda::GatherParams p{};
  p.num_ranks = num_ranks;
  p.expert_major = expert_major;
  p.num_topk = num_topk;
  return bulk_gather_shared_bytes(gather_width(p));
}

void launch_combine_ready(const cuda::CombineReadyParams& p, cudaStream_t stream) {
  combine_ready_kernel<<<1, 128, 0, stream>>>(p);
}

void launch_gather(const cuda::GatherParams& p, int num_blocks, cudaStream_t stream) {
  if (p.num_tokens == 0) return;
  const bool bias = p.bias != nullptr || p.bias2 != nullptr;
  const bool weighted = p.expert_major && p.apply_weights;
  if (p.bulk) {
    auto kernel =
        bias ? (weighted ? gather_bulk_kernel<true, true> : gather_bulk_kernel<true, false>)
             : (weighted ? gather_bulk_kernel<false, true> : gather_bulk_kernel<false, false>);
    kernel<<<num_blocks, kBulkGatherThreads, bulk_gather_shared_bytes(gather_width(p)), stream>>>(
        p);
    return;
  }
  const size_t shared =
      (sizeof(const uint4*) + sizeof(float)) * (kGatherThreads / 32) * gather_width(p);
  auto kernel = bias ? (weighted ? gather_kernel<true, true> : gather_kernel<true, false>)
                     : (weighted ? gather_kernel<false, true> : gather_kernel<false, false>);
  kernel<<<num_blocks, kGatherThreads, shared, stream>>>(p);
}

}  // namespace epcomm::kernels
