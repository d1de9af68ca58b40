// Layout step: per token, which ranks it goes to; per chunk of tokens, each token's position
// among the chunk's tokens for each destination and the chunk's count; per expert, the count.
// The expert-major variant does the same per (token, expert) pair and expert.
#include "common/wait.cuh"
#include "launch.hpp"

namespace epcomm::kernels {
namespace {

using cuda::LayoutParams;

__device__ __forceinline__ int64_t load_expert(const LayoutParams& p, size_t i) {
  return p.idx_int64 ? static_cast<const int64_t*>(p.topk_idx)[i]
                     : static_cast<const int32_t*>(p.topk_idx)[i];
}

// Marks, in shared memory, every (token, destination) pair of the chunk and counts experts.
__device__ void mark_destinations(const LayoutParams& p, int first_token, int num_tokens,
                                  unsigned char* s_flags, int* s_experts) {
  const int K = p.num_topk;
  for (int i = threadIdx.x; i < num_tokens * K; i += blockDim.x) {
    const int t = i / K, k = i % K;
    const int64_t e = load_expert(p, static_cast<size_t>(first_token + t) * K + k);
    if (e < -1 || e >= p.num_experts) {
      record_error(p.errors, cuda::kDevInvalidExpert, cuda::kPhaseNone, p.rank, p.rank, 0, 0,
                   first_token + t, k, e);
      if (p.invalid_flag) atomicExch(p.invalid_flag, 1);
      continue;  // treated as -1, so the protocol still completes on every rank
    }
    if (e < 0) continue;
    atomicAdd(&s_experts[e], 1);
    s_flags[t * p.num_ranks + static_cast<int>(e / p.experts_per_rank)] = 1;
  }
}

// One warp per destination: a ballot scan gives each token its position in the chunk.
__device__ void scan_destinations(const LayoutParams& p, int chunk, int first_token, int num_tokens,
                                  const unsigned char* s_flags) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;
  const int R = p.num_ranks;
  for (int d = warp; d < R; d += num_warps) {
    int running = 0;
    for (int base = 0; base < num_tokens; base += 32) {
      const int t = base + lane;
      const bool sent = t < num_tokens && s_flags[t * R + d];
      const uint32_t ballot = __ballot_sync(0xffffffffu, sent);
      if (t < num_tokens) {
        const size_t i = static_cast<size_t>(first_token + t) * R + d;
        if (p.slot) p.slot[i] = sent ? running + __popc(ballot & lanemask_lt()) : -1;
        if (p.is_token_in_rank) p.is_token_in_rank[i] = sent;
      }
      running += __popc(ballot);
    }
    if (lane == 0) {
      if (p.chunk_counts) p.chunk_counts[chunk * R + d] = running;
      if (p.tokens_per_rank && running) atomicAdd(&p.tokens_per_rank[d], running);
    }
  }
}

__global__ void __launch_bounds__(256) layout_kernel(LayoutParams p) {
  extern __shared__ int s_experts[];  // [E], then flags [chunk tokens][R]
  auto* s_flags = reinterpret_cast<unsigned char*>(s_experts + p.num_experts);
  const int chunk = blockIdx.x;
  const int first_token = chunk * cuda::kLayoutChunkTokens;
  const int num_tokens = min(cuda::kLayoutChunkTokens, p.num_tokens - first_token);
  for (int i = threadIdx.x; i < p.num_experts; i += blockDim.x) s_experts[i] = 0;
  for (int i = threadIdx.x; i < cuda::kLayoutChunkTokens * p.num_ranks; i += blockDim.x) {
    s_flags[i] = 0;
  }
  __syncthreads();
  mark_destinations(p, first_token, num_tokens, s_flags, s_experts);
  __syncthreads();
  for (int e = threadIdx.x; e < p.num_experts; e += blockDim.x) {
    if (s_experts[e]) atomicAdd(&p.expert_counts[e], s_experts[e]);
  }
  scan_destinations(p, chunk, first_token, num_tokens, s_flags);
}

// Expert-major layout of one chunk (docs/design.md section 24). Each (token, slot) whose expert
// no earlier slot of the token names is a pair; one warp per expert ranks the chunk's pairs of
// that expert by token with a ballot scan, so that pairs keep their source-token order.
__global__ void __launch_bounds__(512) pair_layout_kernel(LayoutParams p) {
  extern __shared__ int s_ids[];  // [chunk tokens][K]: the pair's expert, or -1
  const int chunk = blockIdx.x, K = p.num_topk, E = p.num_experts;
  const int first_token = chunk * cuda::kLayoutChunkTokens;
  const int num_tokens = min(cuda::kLayoutChunkTokens, p.num_tokens - first_token);
  for (int i = threadIdx.x; i < num_tokens * K; i += blockDim.x) {
    const int t = i / K, k = i % K;
    const size_t row = static_cast<size_t>(first_token + t) * K;
    const int64_t e = load_expert(p, row + k);
    bool pair = e >= 0 && e < E;
    if (e < -1 || e >= E) {
      record_error(p.errors, cuda::kDevInvalidExpert, cuda::kPhaseNone, p.rank, p.rank, 0, 0,
                   first_token + t, k, e);
      if (p.invalid_flag) atomicExch(p.invalid_flag, 1);
    }
    for (int j = 0; j < k && pair; ++j) pair = load_expert(p, row + j) != e;
    s_ids[i] = pair ? static_cast<int>(e) : -1;
    if (!pair) p.pair_pos[row + k] = -1;
  }
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;
  for (int e = warp; e < E; e += num_warps) {
    int running = 0;
    for (int base = 0; base < num_tokens; base += 32) {
      const int t = base + lane;
      int k_of = -1;  // the slot of token t that is its pair with e (at most one)
      for (int k = 0; k < K && t < num_tokens; ++k) {
        if (s_ids[t * K + k] == e) k_of = k;
      }
      const uint32_t ballot = __ballot_sync(0xffffffffu, k_of >= 0);
      if (k_of >= 0) {
        p.pair_pos[static_cast<size_t>(first_token + t) * K + k_of] =
            running + __popc(ballot & lanemask_lt());
      }
      running += __popc(ballot);
    }
    if (lane == 0) {
      p.chunk_expert_counts[static_cast<size_t>(chunk) * E + e] = running;
      if (running) atomicAdd(&p.expert_counts[e], running);
    }
  }
}

}  // namespace

size_t pair_layout_shared_bytes(int max_topk) {
  return sizeof(int) * static_cast<size_t>(cuda::kLayoutChunkTokens) * max_topk;
}

void launch_pair_layout(const cuda::LayoutParams& p, cudaStream_t stream) {
  const int chunks = (p.num_tokens + cuda::kLayoutChunkTokens - 1) / cuda::kLayoutChunkTokens;
  if (chunks == 0) return;
  pair_layout_kernel<<<chunks, 512, pair_layout_shared_bytes(p.num_topk), stream>>>(p);
}

size_t layout_shared_bytes(int num_experts, int num_ranks) {
  return sizeof(int) * static_cast<size_t>(num_experts) +
         static_cast<size_t>(cuda::kLayoutChunkTokens) * num_ranks;
}

cudaError_t load_layout_kernels() { return load_kernels(layout_kernel, pair_layout_kernel); }

void launch_layout(const cuda::LayoutParams& p, cudaStream_t stream) {
  const int chunks = (p.num_tokens + cuda::kLayoutChunkTokens - 1) / cuda::kLayoutChunkTokens;
  if (chunks == 0) return;
  layout_kernel<<<chunks, 256, layout_shared_bytes(p.num_experts, p.num_ranks), stream>>>(p);
}

}  // namespace epcomm::kernels
