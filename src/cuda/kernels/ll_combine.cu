// Low-latency combine (DESIGN section 10). Send: each block takes an equal share of the packed
// rows of y and returns each to its source rank's combine rows at [token][top-k slot] (both known
// from recv_src); the last block to finish posts each source the number of rows returned to it
// (tagged, release). Receive: every block counts the rows each peer owes it (from the
// dispatch's topk_idx, saved by its send, locally), waits for every peer's signal and checks it,
// and reduces its tokens: acc = fmaf(w[t][k], y[t][k], acc) over k ascending from 0 in fp32,
// rounded once to bf16.
#include "common/ll_common.cuh"
#include "common/wait.cuh"
#include "launch.hpp"

namespace epcomm::kernels {
namespace {

using cuda::LowLatencyParams;

// Block b copies rows [N*b/G, N*(b+1)/G) of the N packed rows (expert order), whatever experts
// they belong to.
__global__ void __launch_bounds__(kLlThreads, 1) ll_combine_send_kernel(LowLatencyParams p) {
  if (rank_failed(p.wait.state)) return;
  const int R = p.num_ranks, Le = p.experts_per_rank, H = p.hidden;
  extern __shared__ int s_rows[];  // [Le + 1]: each expert's first row in the packed order
  __shared__ bool s_masked[cuda::kMaxCudaRanks];
  const uint32_t tag = round_tag(p);
  for (int le = threadIdx.x; le < Le; le += blockDim.x) s_rows[le] = p.recv.recv_count[le];
  for (int s = threadIdx.x; s < R; s += blockDim.x) s_masked[s] = rank_masked(p, s);
  __syncthreads();
  if (threadIdx.x < 32) warp_exclusive_scan(s_rows, Le, threadIdx.x);
  __syncthreads();
  const int total = s_rows[Le];
  const int r_begin = static_cast<int>(static_cast<long long>(total) * blockIdx.x / gridDim.x);
  const int r_end = static_cast<int>(static_cast<long long>(total) * (blockIdx.x + 1) / gridDim.x);
  const size_t rows_per_expert = p.layout.rows_per_expert();
  auto packed_row = [&](int r) {
    const int le = last_at_most(s_rows, Le, r);
    return le * rows_per_expert + (r - s_rows[le]);
  };
  block_copy_rows<true>(
      r_end - r_begin, 2 * static_cast<size_t>(H),
      [&](int i) { return p.y + packed_row(r_begin + i) * H; },
      [&](int i) -> char* {
        const size_t row = packed_row(r_begin + i);
        const int32_t* src = p.recv.recv_src + row * 3;  // rank, token, slot
        const int s = src[0];
        if (s_masked[s]) return nullptr;  // masked since the dispatch: not returned
        if (same_domain(p, s)) return p.layout.combine_row(p.peers[s], p.buffer, src[1], src[2]);
        // Another domain: staged in the message slot the row arrived in (read by the dispatch
        // receive already; no peer writes it again before this rank's combine signal), from
        // where the module's puts take it to the source.
        const int le = static_cast<int>(row / rows_per_expert);
        const int j = static_cast<int>(row % rows_per_expert);
        return p.layout.message(p.peers[p.rank], p.buffer, le, s,
                                j - p.recv.layout_range[(le * R + s) * 2]);
      });
  // As in the dispatch send, the last block to finish posts each source's signal, also when
  // it returns no rows: every rank's combine receive waits for every peer, which orders this
  // rank's dispatch receive (and its resets) before any peer's next round on this buffer.
  if (!last_block_done<true>(&p.counters->blocks_done[p.buffer][cuda::kLlCombineSend])) return;
  auto word = [&](int s) {
    const uint32_t rows = p.rows_from[s];  // summed by the dispatch receive
    return (static_cast<uint64_t>(tag) << 32) | rows;
  };
  if (p.remote_words != nullptr) {  // the module's puts post these after the staged rows
    for (int s = threadIdx.x; s < R; s += blockDim.x) {
      p.remote_words[s] = same_domain(p, s) || s_masked[s] ? 0 : word(s);
    }
    __syncthreads();  // rows_from is reset below
  }
  post_signals(
      R,
      [&](int s) {
        return s_masked[s] || !same_domain(p, s) ? nullptr
                                                 : p.layout.delivered(p.peers[s], p.buffer, p.rank);
      },
      [&](int s) {
        const uint64_t w = word(s);
        p.rows_from[s] = 0;
        return w;
      });
}

// Rows each peer owes this rank: this rank's (token, expert) messages to the peer's experts.
// Threads d < R then wait for every peer's signal and check it; s_masked[d] tells the peers
// that return nothing (masked before or, with shrink, during the wait). Block 0 adds each wait
// to the stats.
__device__ void wait_for_rows(const LowLatencyParams& p, int* s_expected, bool* s_masked) {
  const int R = p.num_ranks, K = p.num_topk;
  for (int d = threadIdx.x; d < R; d += blockDim.x) s_expected[d] = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < p.num_tokens * K; i += blockDim.x) {
    const int e = first_expert(p.topk_idx, p.idx_int64, i / K, i % K, K, p.num_experts);
    if (e >= 0) atomicAdd(&s_expected[e / p.experts_per_rank], 1);
    if (blockIdx.x != 0) continue;
    // p.topk_idx holds the dispatch's ids; other ones given to the combine are reported.
    const int64_t given = load_topk(p.combine_topk, p.combine_topk_int64, i);
    const int64_t dispatched = p.dispatch_topk[i];
    if (given != dispatched) {
      record_error(p.wait.errors, cuda::kDevLlTopkChanged, cuda::kPhaseNone, p.rank, -1, 0,
                   static_cast<uint64_t>(dispatched), i / K, i % K, given);
    }
  }
  __syncthreads();
  const uint32_t tag = round_tag(p);
  char* local = p.peers[p.rank];
  for (int d = threadIdx.x; d < R; d += blockDim.x) {
    uint64_t word = 0, waited = 0;
    const PeerWait how = wait_on_peer(
        p, p.layout.delivered(local, p.buffer, d), [](uint64_t v) { return v != 0; },
        static_cast<uint64_t>(tag) << 32 | static_cast<uint32_t>(s_expected[d]),
        cuda::kPhaseLlCombine, d, p.verdicts + d, &word, &waited);
    if (blockIdx.x == 0) add_wait_cost(p, d, waited);
    s_masked[d] = how == PeerWait::kMasked;
    if (how != PeerWait::kArrived) continue;
    const uint32_t seen_tag = static_cast<uint32_t>(word >> 32);
    const uint32_t rows = static_cast<uint32_t>(word);
    if (seen_tag != tag || rows != static_cast<uint32_t>(s_expected[d])) {
      record_error(p.wait.errors,
                   seen_tag != tag ? cuda::kDevLlRoundMismatch : cuda::kDevLlOverflow,
                   cuda::kPhaseLlCombine, p.rank, d, seen_tag != tag ? tag : s_expected[d],
                   seen_tag != tag ? seen_tag : rows);
      *reinterpret_cast<volatile int32_t*>(&p.wait.state->failed) = 1;
    }
  }
  __syncthreads();
}

// (token, slot) entries a combine-receive block tables at once.
constexpr int kSlotTable = 512;

// The first slot of token t naming the expert of slot k (whose row holds y[t][k]), or -1 when
// slot k adds nothing (no expert, or one on a masked rank).
__device__ __forceinline__ int row_slot(const LowLatencyParams& p, const bool* s_masked, int t,
                                        int k) {
  const size_t row = static_cast<size_t>(t) * p.num_topk;
  const int64_t e = load_topk(p.topk_idx, p.idx_int64, row + k);
  if (e < 0 || e >= p.num_experts || s_masked[e / p.experts_per_rank]) return -1;
  int first = 0;
  while (load_topk(p.topk_idx, p.idx_int64, row + first) != e) ++first;
  return first;
}

// Block b reduces tokens b, b + G, ...: for a batch of them it tables every slot's row and
// weight, then each thread sums 16-byte output vectors of the batch:
// acc = fmaf(w[t][k], y[t][k], acc) over k ascending from 0, rounded once to bf16. The loads of
// up to kSlotsInFlight slots are issued before their sums.
__global__ void __launch_bounds__(kLlThreads, 1) ll_combine_recv_kernel(LowLatencyParams p) {
  if (rank_failed(p.wait.state)) return;
  constexpr int kSlotsInFlight = 8;
  extern __shared__ int s_expected[];  // [R]
  __shared__ int s_row_slot[kSlotTable];
  __shared__ float s_weight[kSlotTable];
  __shared__ bool s_masked[cuda::kMaxCudaRanks];
  wait_for_rows(p, s_expected, s_masked);
  // After a failed wait the rows are incomplete: the error is reported at synchronize.
  const int K = p.num_topk, vectors = p.hidden / 8;
  char* local = p.peers[p.rank];
  const int my_tokens =
      blockIdx.x < p.num_tokens ? (p.num_tokens - blockIdx.x + gridDim.x - 1) / gridDim.x : 0;
  const int batch = kSlotTable / K;
  auto token_of = [&](int l) { return blockIdx.x + l * gridDim.x; };
  for (int l0 = 0; l0 < my_tokens; l0 += batch) {
    const int n = min(batch, my_tokens - l0);
    __syncthreads();  // the previous batch's table is no longer read
    for (int i = threadIdx.x; i < n * K; i += blockDim.x) {
      const int t = token_of(l0 + i / K);
      s_row_slot[i] = row_slot(p, s_masked, t, i % K);
      s_weight[i] = p.topk_weights[static_cast<size_t>(t) * K + i % K];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n * vectors; i += blockDim.x) {
      const int l = i / vectors, c = i % vectors, t = token_of(l0 + l);
      const int* slots = s_row_slot + l * K;
      const float* weights = s_weight + l * K;
      float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      for (int k0 = 0; k0 < K; k0 += kSlotsInFlight) {
        uint4 v[kSlotsInFlight];
#pragma unroll
        for (int u = 0; u < kSlotsInFlight; ++u) {
          const int k = k0 + u;
          if (k < K && slots[k] >= 0) {
            v[u] = ld_na(
                reinterpret_cast<const uint4*>(p.layout.combine_row(local, p.buffer, t, slots[k])) +
                c);
          }
        }
#pragma unroll
        for (int u = 0; u < kSlotsInFlight; ++u) {
          const int k = k0 + u;
          if (k >= K || slots[k] < 0) continue;
          float f[8];
          bf16x8_to_float(v[u], f);
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[j] = __fmaf_rn(weights[k], f[j], acc[j]);
        }
      }
      reinterpret_cast<uint4*>(p.out + static_cast<size_t>(t) * p.hidden)[c] = to_bf16x8(acc);
    }
  }
  // Signals are reset once every block has read them; a peer posts this buffer's signal again
  // only after this rank's next dispatch on it, which comes after this kernel.
  // The round advances here, the last kernel of a round on this buffer.
  if (last_block_done<false>(&p.counters->blocks_done[p.buffer][cuda::kLlCombineReceive])) {
    for (int d = threadIdx.x; d < p.num_ranks; d += blockDim.x) {
      *p.layout.delivered(local, p.buffer, d) = 0;
      p.verdicts[d] = cuda::kPeerUndecided;
    }
    if (threadIdx.x == 0) p.counters->round[p.buffer] += 1;
  }
}

}  // namespace

int ll_combine_blocks_per_sm() {
  int send = 0, recv = 0;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&send, ll_combine_send_kernel, kLlThreads, 0);
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&recv, ll_combine_recv_kernel, kLlThreads, 0);
  return send < recv ? send : recv;
}

cudaError_t load_ll_combine_kernels() {
  return load_kernels(ll_combine_send_kernel, ll_combine_recv_kernel);
}

void launch_ll_combine_send(const cuda::LowLatencyParams& p, int num_blocks, cudaStream_t stream) {
  ll_combine_send_kernel<<<num_blocks, kLlThreads, sizeof(int) * (p.experts_per_rank + 1),
                           stream>>>(p);
}

void launch_ll_combine_recv(const cuda::LowLatencyParams& p, int num_blocks, cudaStream_t stream) {
  ll_combine_recv_kernel<<<num_blocks, kLlThreads, sizeof(int) * p.num_ranks, stream>>>(p);
}

}  // namespace epcomm::kernels
