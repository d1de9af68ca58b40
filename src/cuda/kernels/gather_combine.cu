// Gather combine (DESIGN section 6). A one-block kernel raises this rank's ready signal at
// every peer and waits for every peer's; then a wide kernel with no waits gathers, for each
// local token, the expert outputs from the ranks it was sent to, in ascending rank order,
// accumulates in fp32, adds the optional biases (bias, then bias2) and rounds once to bf16.
// Expert-major handles gather each token's pairs instead, in ascending slot order, weighted by
// fmaf when asked (docs/design.md section 24).
#include "common/gather_rows.cuh"
#include "common/wait.cuh"
#include "launch.hpp"

namespace epcomm::kernels {
namespace {

constexpr int kGatherThreads = 1024;

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
  // Across NVLink domains only the ranks of this domain (non-null peers) read this pool.
  for (int d = threadIdx.x; d < p.num_ranks; d += blockDim.x) {
    if (p.peers[d] != nullptr) red_add_release_sys(p.layout.ready(p.peers[d]) + p.rank, 1);
  }
  const uint64_t* ready = p.layout.ready(p.peers[p.rank]);
  bool ok = true;
  for (int src = threadIdx.x; src < p.num_ranks && ok; src += blockDim.x) {
    if (p.peers[src] != nullptr) {
      ok = wait_at_least(p.wait, ready + src, seq, cuda::kPhaseCombineReady, src);
    }
  }
  if (!__syncthreads_and(ok)) return;
  if (threadIdx.x == 0) state->combine_seq = seq;
}

// Rows one warp lists per token: one per rank, or (expert-major) one per top-k slot.
EPCOMM_HD int gather_width(const cuda::GatherParams& p) {
  return p.expert_major && p.num_topk > p.num_ranks ? p.num_topk : p.num_ranks;
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

}  // namespace

cudaError_t load_gather_combine_kernels() {
  return load_kernels(combine_ready_kernel, gather_kernel<false, false>, gather_kernel<true, false>,
                      gather_kernel<false, true>, gather_kernel<true, true>);
}

void launch_combine_ready(const cuda::CombineReadyParams& p, cudaStream_t stream) {
  combine_ready_kernel<<<1, 128, 0, stream>>>(p);
}

void launch_gather(const cuda::GatherParams& p, int num_blocks, cudaStream_t stream) {
  if (p.num_tokens == 0) return;
  const size_t shared =
      (sizeof(const uint4*) + sizeof(float)) * (kGatherThreads / 32) * gather_width(p);
  const bool bias = p.bias != nullptr || p.bias2 != nullptr;
  const bool weighted = p.expert_major && p.apply_weights;
  auto kernel = bias ? (weighted ? gather_kernel<true, true> : gather_kernel<true, false>)
                     : (weighted ? gather_kernel<false, true> : gather_kernel<false, false>);
  kernel<<<num_blocks, kGatherThreads, shared, stream>>>(p);
}

}  // namespace epcomm::kernels
