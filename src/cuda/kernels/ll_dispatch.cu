// Low-latency dispatch (DESIGN section 10). Send: every block takes a contiguous range of this
// rank's tokens, computes each (token, expert) message's slot as the token's position among
// this rank's tokens routed to that expert, and writes the message straight into the expert's
// rank. The block that finishes last publishes every expert's message count (tagged with the
// round and whether rows are fp8). Receive: every block waits for every source's count of every
// local expert, then packs an equal share of all messages into recv_x (expert, then source, then
// token order). No atomics decide a slot, so the output is deterministic.
#include <algorithm>

#include "common/ll_common.cuh"
#include "common/wait.cuh"
#include "launch.hpp"

namespace epcomm::kernels {
namespace {

using cuda::LowLatencyParams;

// A message this block sends: token t's row under top-k slot k, to `dst` in the expert's rank.
struct Message {
  char* dst;
  int token, k;
};
constexpr int kMaxBatchMessages = 512;
// Set in a posted count when the sender cast its rows to fp8: receivers read rows as they were
// written or report the mismatch.
constexpr uint32_t kFp8CountFlag = 1u << 31;
// Set beside kFp8CountFlag when the sender's scales are powers of two (round_scale).
constexpr uint32_t kRoundScaleCountFlag = 1u << 30;
constexpr uint32_t kCountFlags = kFp8CountFlag | kRoundScaleCountFlag;

// The cast mode a count carries or a rank uses: bit 0 fp8, bit 1 round_scale.
__device__ __forceinline__ uint32_t cast_mode(const LowLatencyParams& p) {
  return (p.use_fp8 ? 1u : 0u) | (p.round_scale ? 2u : 0u);
}

// The batch's token b (of n_tokens) goes to messages batch[first[b] .. first[b + 1]).
// Each token's row is read once and written to all its messages: threads take 16-byte columns
// (bf16) or a half-warp takes a 128-element group (fp8, cast once per token) of kUnroll items
// at a time, loads them all, then stores each to every message of its token.
__device__ void send_batch(const LowLatencyParams& p, const Message* batch, const int* first,
                           int n_tokens) {
  const size_t header_offset = p.layout.message_header_offset();
  for (int j = threadIdx.x; j < first[n_tokens]; j += blockDim.x) {
    st_na(
        reinterpret_cast<uint4*>(batch[j].dst + header_offset),
        make_uint4(static_cast<uint32_t>(batch[j].token), static_cast<uint32_t>(batch[j].k), 0, 0));
  }
  const int H = p.hidden;
  auto x_row = [&](int b) { return p.x + static_cast<size_t>(batch[first[b]].token) * H; };
  if (!p.use_fp8) {
    // The loads of the next kUnroll items are issued before the stores of the current ones, so
    // the block's stores do not stop for load latency.
    constexpr int kUnroll = 4;
    const int row_vectors = H / 8;
    const int items = n_tokens * row_vectors, step = kUnroll * blockDim.x;
    auto load = [&](int i0, uint4(&v)[kUnroll]) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int i = i0 + u * blockDim.x + threadIdx.x;
        if (i < items) {
          v[u] = ld_nc_na(reinterpret_cast<const uint4*>(x_row(i / row_vectors)) + i % row_vectors);
        }
      }
    };
    uint4 v[kUnroll], next[kUnroll];
    load(0, v);
    for (int i0 = 0; i0 < items; i0 += step) {
      load(i0 + step, next);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int i = i0 + u * blockDim.x + threadIdx.x;
        if (i >= items) continue;
        const int b = i / row_vectors, c = i % row_vectors;
        for (int j = first[b]; j < first[b + 1]; ++j) {
          st_na(reinterpret_cast<uint4*>(batch[j].dst) + c, v[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) v[u] = next[u];
    }
    return;
  }
  constexpr int kUnroll = 2;
  const int groups = H / 128, items = n_tokens * groups;
  const int half_warps = blockDim.x / 16, hw = threadIdx.x / 16, sub = threadIdx.x % 16;
  const size_t scales_offset = p.layout.message_scales_offset();
  // NOTE: the bound is the same for both halves of a warp: the shuffles need every lane.
  for (int i0 = 0; i0 < items; i0 += kUnroll * half_warps) {
    uint4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = i0 + u * half_warps + hw;
      v[u] = make_uint4(0, 0, 0, 0);
      if (i < items) {
        v[u] =
            ld_nc_na(reinterpret_cast<const uint4*>(x_row(i / groups) + (i % groups) * 128) + sub);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = i0 + u * half_warps + hw;
      float scale;
      const uint2 q = cast_group_to_fp8(v[u], p.round_scale, &scale);
      if (i >= items) continue;
      const int b = i / groups, g = i % groups;
      for (int j = first[b]; j < first[b + 1]; ++j) {
        *reinterpret_cast<uint2*>(batch[j].dst + g * 128 + sub * 8) = q;
        if (sub == 0) reinterpret_cast<float*>(batch[j].dst + scales_offset)[g] = scale;
      }
    }
  }
}

// Counts, per expert, the messages of tokens before `t_begin` (s_next: this block's first slot)
// and of all tokens (s_total). Block 0 reports ids out of range (they are sent nowhere).
__device__ void count_messages(const LowLatencyParams& p, int t_begin, int* s_next, int* s_total) {
  const int K = p.num_topk;
  for (int i = threadIdx.x; i < p.num_tokens * K; i += blockDim.x) {
    const int t = i / K, k = i % K;
    const int e = first_expert(p.topk_idx, p.idx_int64, t, k, K, p.num_experts);
    if (e >= 0) {
      atomicAdd(&s_total[e], 1);
      if (t < t_begin) atomicAdd(&s_next[e], 1);
      continue;
    }
    const int64_t raw = load_topk(p.topk_idx, p.idx_int64, i);
    if (blockIdx.x == 0 && (raw < -1 || raw >= p.num_experts)) {
      record_error(p.wait.errors, cuda::kDevLlInvalidExpert, cuda::kPhaseNone, p.rank, -1, 0, 0, t,
                   k, raw);
    }
  }
}

// Warp 0 lists the messages of the batch's n tokens (from t_first, experts in s_expert) in token
// order; a message's slot is the token's position among this rank's tokens routed to the
// expert. The tokens with at least one message get s_first entries (their first message; one
// past the last at the end); returns how many tokens that is.
__device__ int plan_batch(const LowLatencyParams& p, char* const* peers, const int* s_expert,
                          int t_first, int n, int* s_next, Message* s_batch, int* s_first,
                          int lane) {
  int messages = 0, tokens = 0;
  for (int b = 0; b < n; ++b) {
    const int e = lane < p.num_topk ? s_expert[b * p.num_topk + lane] : -1;
    const uint32_t mask = __ballot_sync(0xffffffffu, e >= 0);
    const int t = t_first + b;
    bool remote = false;
    if (e >= 0) {  // the experts of one token are distinct: no two lanes share s_next[e]
      const int d = e / p.experts_per_rank, le = e % p.experts_per_rank, slot = s_next[e]++;
      remote = !same_domain(p, d);
      char* dst = nullptr;
      if (remote) {  // staged; the module's puts take it to its slot
        const size_t i = static_cast<size_t>(t) * p.num_topk + lane;
        dst = p.layout.outbox(peers[p.rank], p.buffer, i);
        p.remote_messages[i] = nvshmem::LlRemoteMessage{d, le, slot, 0};
      } else {
        dst = p.layout.message(peers[d], p.buffer, le, p.rank, slot);
      }
      s_batch[messages + __popc(mask & lanemask_lt())] = Message{dst, t, lane};
    }
    if (p.remote_messages != nullptr && lane < p.num_topk && !remote) {
      p.remote_messages[static_cast<size_t>(t) * p.num_topk + lane].rank = -1;
    }
    if (mask != 0) {
      if (lane == 0) s_first[tokens] = messages;
      ++tokens;
    }
    messages += __popc(mask);
    __syncwarp();  // a later token's lane may take the same s_next[e] (racecheck)
  }
  if (lane == 0) s_first[tokens] = messages;
  return tokens;
}

__global__ void __launch_bounds__(kLlThreads, 1) ll_dispatch_send_kernel(LowLatencyParams p) {
  if (rank_failed(p.wait.state)) return;
  const int E = p.num_experts;
  extern __shared__ int s_ints[];
  int* s_next = s_ints;       // [E]
  int* s_total = s_ints + E;  // [E]
  auto* s_batch = reinterpret_cast<Message*>(s_total + E);
  auto** s_peers = reinterpret_cast<char**>(s_batch + kMaxBatchMessages);
  __shared__ int s_first[kMaxBatchMessages + 1];  // per token of the batch: its first message
  __shared__ int s_expert[kMaxBatchMessages];     // [token of the batch][k]: first_expert
  __shared__ int s_batch_tokens;
  __shared__ bool s_masked[cuda::kMaxCudaRanks];
  for (int e = threadIdx.x; e < E; e += blockDim.x) s_next[e] = s_total[e] = 0;
  for (int d = threadIdx.x; d < p.num_ranks; d += blockDim.x) {
    s_peers[d] = p.peers[d];
    s_masked[d] = rank_masked(p, d);
  }
  // Read before any block of this round can finish: the tag is the same for every block.
  const uint32_t tag = round_tag(p);
  __syncthreads();

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int t_begin =
      static_cast<int>(static_cast<long long>(p.num_tokens) * blockIdx.x / gridDim.x);
  const int t_end =
      static_cast<int>(static_cast<long long>(p.num_tokens) * (blockIdx.x + 1) / gridDim.x);
  count_messages(p, t_begin, s_next, s_total);
  // The combine of this round reads rows by the dispatch's ids: each block saves its tokens'.
  for (int i = t_begin * p.num_topk + threadIdx.x; i < t_end * p.num_topk; i += blockDim.x) {
    p.dispatch_topk[i] = load_topk(p.topk_idx, p.idx_int64, i);
  }
  __syncthreads();
  const int batch_tokens = kMaxBatchMessages / p.num_topk;
  for (int t0 = t_begin; t0 < t_end; t0 += batch_tokens) {
    // The ids are read by all threads at once, so warp 0's walk in token order touches shared
    // memory only.
    const int n = min(batch_tokens, t_end - t0);
    for (int i = threadIdx.x; i < n * p.num_topk; i += blockDim.x) {
      const int e =
          first_expert(p.topk_idx, p.idx_int64, t0 + i / p.num_topk, i % p.num_topk, p.num_topk, E);
      s_expert[i] = e >= 0 && s_masked[e / p.experts_per_rank] ? -1 : e;  // masked: not sent
    }
    __syncthreads();
    if (warp == 0) {
      const int tokens = plan_batch(p, s_peers, s_expert, t0, n, s_next, s_batch, s_first, lane);
      if (lane == 0) s_batch_tokens = tokens;
    }
    __syncthreads();
    send_batch(p, s_batch, s_first, s_batch_tokens);
    __syncthreads();  // the batch area is reused; all messages written before the counts below
  }

  // The last block to finish posts every expert's count, also 0: the receivers wait for all.
  if (!last_block_done<true>(&p.counters->blocks_done[p.buffer][cuda::kLlDispatchSend])) return;
  const uint32_t flags =
      (p.use_fp8 ? kFp8CountFlag : 0u) | (p.round_scale ? kRoundScaleCountFlag : 0u);
  auto word = [&](int e) {
    return (static_cast<uint64_t>(tag) << 32) | flags | static_cast<uint32_t>(s_total[e]);
  };
  if (p.remote_words != nullptr) {  // the module's puts post these after the staged messages
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
      const int d = e / p.experts_per_rank;
      p.remote_words[e] = same_domain(p, d) || s_masked[d] ? 0 : word(e);
    }
  }
  post_signals(
      E,
      [&](int e) {
        const int d = e / p.experts_per_rank;
        return s_masked[d] || !same_domain(p, d)
                   ? nullptr
                   : p.layout.count(s_peers[d], p.buffer, e % p.experts_per_rank, p.rank);
      },
      word);
}

// The message count in a posted word. A count with another round's tag, another cast mode
// (use_fp8, round_scale), or more than M messages reads as 0; the expert's owner block records
// it as an error.
__device__ int checked_count(const LowLatencyParams& p, uint64_t word, int s, uint32_t tag,
                             bool owner) {
  const uint32_t low = static_cast<uint32_t>(word);
  const int n = static_cast<int>(low & ~kCountFlags);
  const uint32_t mode =
      ((low & kFp8CountFlag) != 0 ? 1u : 0u) | ((low & kRoundScaleCountFlag) != 0 ? 2u : 0u);
  int32_t code = cuda::kDevNone;
  uint64_t expected = 0, seen = 0;
  if (static_cast<uint32_t>(word >> 32) != tag) {
    code = cuda::kDevLlRoundMismatch, expected = tag, seen = word >> 32;
  } else if (mode != cast_mode(p)) {
    code = cuda::kDevLlFp8Mismatch, expected = cast_mode(p), seen = mode;
  } else if (n > p.layout.max_tokens) {
    code = cuda::kDevLlOverflow, expected = p.layout.max_tokens, seen = n;
  }
  if (code == cuda::kDevNone) return n;
  if (owner) {
    record_error(p.wait.errors, code, cuda::kPhaseLlDispatch, p.rank, s, expected, seen);
    *reinterpret_cast<volatile int32_t*>(&p.wait.state->failed) = 1;
  }
  return 0;
}

// The threads of the block wait for all Le x R counts (bounded; a thread per count, pausing
// between polls) and write count[le][s] to counts[le * (R + 1) + s] (0 for a count never posted
// or not valid, and for a masked source). The owner block of le adds each wait to the stats.
__device__ void wait_for_counts(const LowLatencyParams& p, uint32_t tag, int own_begin, int own_end,
                                int* counts) {
  constexpr uint32_t kBackoffNs = 100;
  const int R = p.num_ranks;
  char* local = p.peers[p.rank];
  for (int i = threadIdx.x; i < p.experts_per_rank * R; i += blockDim.x) {
    const int le = i / R, s = i % R;
    const bool owner = le >= own_begin && le < own_end;
    uint64_t word = 0, waited = 0;
    const PeerWait how = wait_on_peer(
        p, p.layout.count(local, p.buffer, le, s), [](uint64_t v) { return v != 0; },
        static_cast<uint64_t>(tag) << 32, cuda::kPhaseLlDispatch, s, p.verdicts + s, &word, &waited,
        kBackoffNs);
    if (owner) add_wait_cost(p, s, waited);
    counts[le * (R + 1) + s] =
        how == PeerWait::kArrived ? checked_count(p, word, s, tag, owner) : 0;
  }
}

// Every block waits for all Le x R counts and so knows where every row goes; it then copies an
// equal share of all rows (block b: rows [N*b/G, N*(b+1)/G) of the N in expert, source, token
// order), whatever experts they belong to. Block b owns local experts
// [Le*b/G, Le*(b+1)/G): it writes their layout_range and recv_count, adds their rows to rows_from
// and reports their bad counts.
__global__ void __launch_bounds__(kLlThreads, 1) ll_dispatch_recv_kernel(LowLatencyParams p) {
  if (rank_failed(p.wait.state)) return;
  const int R = p.num_ranks, Le = p.experts_per_rank;
  const int own_begin = static_cast<int>(static_cast<long long>(Le) * blockIdx.x / gridDim.x);
  const int own_end = static_cast<int>(static_cast<long long>(Le) * (blockIdx.x + 1) / gridDim.x);
  auto owns = [&](int le) { return le >= own_begin && le < own_end; };
  extern __shared__ int s_tables[];
  int* s_first = s_tables;                // [Le][R + 1]: each source's first row in the expert
  int* s_rows = s_tables + Le * (R + 1);  // [Le + 1]: each expert's first row in the block's order
  const uint32_t tag = round_tag(p);
  wait_for_counts(p, tag, own_begin, own_end, s_first);
  __syncthreads();
  for (int le = threadIdx.x; le < Le; le += blockDim.x) {
    int* first = s_first + le * (R + 1);
    int row = 0;
    for (int s = 0; s < R; ++s) {
      const int n = first[s];
      first[s] = row;
      if (owns(le)) {
        if (n > 0) atomicAdd(&p.rows_from[s], static_cast<uint32_t>(n));  // for the combine
        p.recv.layout_range[(le * R + s) * 2] = row;
        p.recv.layout_range[(le * R + s) * 2 + 1] = n;
      }
      row += n;
    }
    first[R] = row;
    s_rows[le] = row;
    if (owns(le)) p.recv.recv_count[le] = row;
  }
  __syncthreads();
  if (threadIdx.x < 32) warp_exclusive_scan(s_rows, Le, threadIdx.x);
  __syncthreads();

  char* local = p.peers[p.rank];
  const size_t rows_per_expert = p.layout.rows_per_expert();
  // Row r (of all rows): its expert le, its row j within the expert, its source s.
  struct Place {
    int le, j, s;
  };
  auto place_of = [&](int r) {
    Place at;
    at.le = last_at_most(s_rows, Le, r);
    at.j = r - s_rows[at.le];
    at.s = last_at_most(s_first + at.le * (R + 1), R - 1, at.j);
    return at;
  };
  auto message_of = [&](const Place& at) {
    const int* first = s_first + at.le * (R + 1);
    return p.layout.message(local, p.buffer, at.le, at.s, at.j - first[at.s]);
  };
  auto out_row = [&](const Place& at) { return at.le * rows_per_expert + at.j; };
  const int total = s_rows[Le];
  const int r_begin = static_cast<int>(static_cast<long long>(total) * blockIdx.x / gridDim.x);
  const int r_end = static_cast<int>(static_cast<long long>(total) * (blockIdx.x + 1) / gridDim.x);
  for (int r = r_begin + threadIdx.x; r < r_end; r += blockDim.x) {
    const Place at = place_of(r);
    const uint4 header =  // a peer wrote it
        ld_na(reinterpret_cast<const uint4*>(message_of(at) + p.layout.message_header_offset()));
    int32_t* src = p.recv.recv_src + out_row(at) * 3;
    src[0] = at.s;
    src[1] = static_cast<int32_t>(header.x);
    src[2] = static_cast<int32_t>(header.y);
  }
  const size_t row_bytes = static_cast<size_t>(p.hidden) * (p.use_fp8 ? 1 : 2);
  block_copy_rows<false>(
      r_end - r_begin, row_bytes, [&](int i) { return message_of(place_of(r_begin + i)); },
      [&](int i) { return p.recv.recv_x + out_row(place_of(r_begin + i)) * row_bytes; });
  if (p.use_ue8m0) {  // one code per scale: its biased exponent (the scales are powers of two)
    const int groups = p.hidden / 128;
    const size_t scales_offset = p.layout.message_scales_offset();
    for (int i = threadIdx.x; i < (r_end - r_begin) * groups; i += blockDim.x) {
      const Place at = place_of(r_begin + i / groups);
      const int g = i % groups;
      const uint32_t bits = reinterpret_cast<const uint32_t*>(message_of(at) + scales_offset)[g];
      p.recv.recv_scale_codes[out_row(at) * groups + g] = static_cast<uint8_t>(bits >> 23);
    }
  } else if (p.use_fp8) {  // the scales: 16 bytes at a time where a row of them is a multiple of 16
    const int groups = p.hidden / 128;
    const bool by_vector = groups % 4 == 0;
    const int per_row = by_vector ? groups / 4 : groups;
    const size_t scales_offset = p.layout.message_scales_offset();
    for (int i = threadIdx.x; i < (r_end - r_begin) * per_row; i += blockDim.x) {
      const Place at = place_of(r_begin + i / per_row);
      const int c = i % per_row;
      const char* src = message_of(at) + scales_offset;
      float* dst = p.recv.recv_scales + out_row(at) * groups;
      if (by_vector) {
        reinterpret_cast<uint4*>(dst)[c] = ld_na(reinterpret_cast<const uint4*>(src) + c);
      } else {
        dst[c] = reinterpret_cast<const float*>(src)[c];
      }
    }
  }
  // Counts are reset once every block has read them; a source writes this buffer's counts
  // again only after this rank's next dispatch on it, which comes after this kernel.
  if (last_block_done<false>(&p.counters->blocks_done[p.buffer][cuda::kLlDispatchReceive])) {
    for (int i = threadIdx.x; i < Le * R; i += blockDim.x) {
      *p.layout.count(local, p.buffer, i / R, i % R) = 0;
    }
    for (int s = threadIdx.x; s < R; s += blockDim.x) p.verdicts[s] = cuda::kPeerUndecided;
  }
}

}  // namespace

int ll_combine_blocks_per_sm();  // ll_combine.cu

int ll_blocks_per_sm() {
  int send = 0, recv = 0;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&send, ll_dispatch_send_kernel, kLlThreads, 0);
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&recv, ll_dispatch_recv_kernel, kLlThreads, 0);
  return std::min({send, recv, ll_combine_blocks_per_sm()});
}

cudaError_t load_ll_dispatch_kernels() {
  return load_kernels(ll_dispatch_send_kernel, ll_dispatch_recv_kernel);
}

size_t ll_send_shared_bytes(int num_experts, int num_ranks) {
  return 2 * sizeof(int) * num_experts + sizeof(Message) * kMaxBatchMessages +
         sizeof(char*) * num_ranks;
}

void launch_ll_dispatch_send(const cuda::LowLatencyParams& p, int num_blocks, cudaStream_t stream) {
  ll_dispatch_send_kernel<<<num_blocks, kLlThreads,
                            ll_send_shared_bytes(p.num_experts, p.num_ranks), stream>>>(p);
}

size_t ll_recv_shared_bytes(int experts_per_rank, int num_ranks) {
  return sizeof(int) *
         (static_cast<size_t>(experts_per_rank) * (num_ranks + 1) + experts_per_rank + 1);
}

void launch_ll_dispatch_recv(const cuda::LowLatencyParams& p, int num_blocks, cudaStream_t stream) {
  ll_dispatch_recv_kernel<<<num_blocks, kLlThreads,
                            ll_recv_shared_bytes(p.experts_per_rank, p.num_ranks), stream>>>(p);
}

}  // namespace epcomm::kernels
