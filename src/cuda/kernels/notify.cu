// Count exchange (DESIGN section 5, steps 2-3): post this rank's count row to every peer,
// wait for every peer's row of this epoch, agree on a verdict, then turn per-chunk counts into
// each chunk's first row per destination (the sender adds a token's position in its chunk).
// One block: waiting kernels stay small so peers' kernels can run. Across NVLink domains the
// kernel runs twice (NotifyParams::phase): the post, whose rows for ranks outside the domain go
// to the staging region's count outbox, and after the NVSHMEM module has set those in the
// peers' matrices, the collect.
#include "common/wait.cuh"
#include "launch.hpp"

namespace epcomm::kernels {
namespace {

using cuda::channel_first_chunk;
using cuda::NotifyParams;

__device__ __forceinline__ uint64_t tagged(uint64_t epoch, uint32_t value) {
  return (static_cast<uint64_t>(cuda::sequence_tag(epoch)) << 32) | value;
}

// Shared memory: counts [R][R] (source, destination), status [R], expert sums [Le].
struct NotifyShared {
  int* counts;
  int* status;
  int* experts;
};

// Status word: (top-k << 2) | (expert-major << 1) | bad-id flag for a fresh dispatch; (handle
// epoch << 1) for a cached one, so that ranks replaying different dispatches notice.
__device__ __forceinline__ int32_t my_status(const NotifyParams& p) {
  if (p.cached) return static_cast<int32_t>((p.handle_epoch & 0x3fffffffu) << 1);
  return (p.num_topk << 2) | (p.expert_major ? 2 : 0) | (p.wait.state->invalid_input ? 1 : 0);
}
__device__ __forceinline__ int status_topk(int32_t status) { return status >> 2; }
__device__ __forceinline__ int status_layout(int32_t status) { return (status >> 1) & 1; }

__device__ __forceinline__ bool fresh_expert_major(const NotifyParams& p) {
  return p.expert_major && !p.cached;
}

// NOTE: the post is the pool-reuse barrier: a peer that holds every row of this epoch writes
// into pools this rank's previous gather read (in earlier kernels of this stream). Each
// posting thread fences at system scope first, so its stores are releases that order those
// reads before any write a peer makes after acquiring the row.
__device__ void post_row(const NotifyParams& p, const NotifyShared& s, uint64_t epoch) {
  const int R = p.num_ranks, W = p.layout.count_row_words(), Le = p.experts_per_rank;
  const int slot = static_cast<int>(epoch & 1);
  const int32_t status = my_status(p);
  fence_acq_rel_sys();
  for (int i = threadIdx.x; i < R * W; i += blockDim.x) {
    const int peer = i / W, w = i % W;
    uint32_t value;
    if (w < R) {
      value = s.counts[p.rank * R + w];
    } else if (w == p.layout.status_word()) {
      value = static_cast<uint32_t>(status);
    } else if (w < p.layout.channel_word(0)) {
      value = p.cached ? 0 : p.expert_counts[peer * Le + (w - p.layout.expert_word(0))];
    } else {
      value = p.routing.ring_send_counts[(w - p.layout.channel_word(0)) * R + peer];
    }
    if (p.peers[peer] == nullptr) {  // outside the domain: the NVSHMEM module sets it there
      p.domains.layout.count_outbox(p.domains.staging, peer)[w] = tagged(epoch, value);
    } else {
      st_relaxed_sys(p.layout.count_row(p.peers[peer], slot, p.rank) + w, tagged(epoch, value));
    }
  }
  if (!fresh_expert_major(p)) return;
  const int E = p.layout.num_experts();
  for (int i = threadIdx.x; i < R * E; i += blockDim.x) {
    const int peer = i / E, e = i % E;
    st_relaxed_sys(p.layout.pair_count_row(p.peers[peer], slot, p.rank) + e,
                   tagged(epoch, static_cast<uint32_t>(p.expert_counts[e])));
  }
}

// Expert-major: every source's pairs per expert into pair_matrix, then each expert's group rows
// (padding included). Returns false when a wait timed out.
__device__ bool collect_pair_counts(const NotifyParams& p, uint64_t epoch) {
  const int R = p.num_ranks, E = p.layout.num_experts();
  char* local = p.peers[p.rank];
  const uint32_t tag = cuda::sequence_tag(epoch);
  bool ok = true;
  for (int i = threadIdx.x; i < R * E && ok; i += blockDim.x) {
    const int source = i / E, e = i % E;
    uint64_t word;
    ok =
        wait_tagged(p.wait, p.layout.pair_count_row(local, static_cast<int>(epoch & 1), source) + e,
                    tag, cuda::kPhaseCountExchange, source, &word);
    if (ok) p.pair_matrix[i] = static_cast<int>(static_cast<uint32_t>(word));
  }
  if (!__syncthreads_and(ok)) return false;
  const int align = p.expert_alignment;
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    int n = 0;
    for (int src = 0; src < R; ++src) n += p.pair_matrix[src * E + e];
    p.group_rows[e] = (n + align - 1) / align * align;
  }
  __syncthreads();
  return true;
}

// Returns false when a wait timed out.
__device__ bool collect_rows(const NotifyParams& p, const NotifyShared& s, uint64_t epoch) {
  const int R = p.num_ranks, W = p.layout.count_row_words();
  char* local = p.peers[p.rank];
  const uint32_t tag = cuda::sequence_tag(epoch);
  bool ok = true;
  for (int i = threadIdx.x; i < R * W && ok; i += blockDim.x) {
    const int source = i / W, w = i % W;
    uint64_t word;
    ok = wait_tagged(p.wait, p.layout.count_row(local, static_cast<int>(epoch & 1), source) + w,
                     tag, cuda::kPhaseCountExchange, source, &word);
    if (!ok) break;
    const int value = static_cast<int>(static_cast<uint32_t>(word));
    if (w < R) {
      s.counts[source * R + w] = value;
    } else if (w == p.layout.status_word()) {
      s.status[source] = value;
    } else if (w < p.layout.channel_word(0)) {
      atomicAdd(&s.experts[w - p.layout.expert_word(0)], value);
    } else {
      p.routing.ring_recv_counts[(w - p.layout.channel_word(0)) * R + source] = value;
    }
  }
  return ok;
}

// Every rank sees the same matrix and statuses, so every rank reaches the same verdict.
__device__ bool agree(const NotifyParams& p, const NotifyShared& s) {
  const int R = p.num_ranks;
  bool ok = true;
  if (threadIdx.x == 0) {
    // The replayed dispatch's verdict was every rank's: its routing is not final if rejected.
    if (p.cached && !*p.routing.accepted) {
      record_error(p.wait.errors, cuda::kDevRejectedReplay, cuda::kPhaseCountExchange, p.rank,
                   p.rank, p.handle_epoch, 0);
      ok = false;
    }
    for (int src = 0; src < R && p.cached; ++src) {
      if (s.status[src] != my_status(p)) {
        record_error(p.wait.errors, cuda::kDevStaleHandle, cuda::kPhaseCountExchange, p.rank, src,
                     static_cast<uint32_t>(my_status(p)) >> 1,
                     static_cast<uint32_t>(s.status[src]) >> 1);
        ok = false;
      }
    }
    for (int src = 0; src < R && !p.cached; ++src) {
      if (s.status[src] & 1) {
        record_error(p.wait.errors, cuda::kDevPeerInvalidInput, cuda::kPhaseCountExchange, p.rank,
                     src, 0, 0);
        ok = false;
      } else if (status_layout(s.status[src]) != (p.expert_major ? 1 : 0)) {
        record_error(p.wait.errors, cuda::kDevLayoutMismatch, cuda::kPhaseCountExchange, p.rank,
                     src, p.expert_major ? 1 : 0, status_layout(s.status[src]));
        ok = false;
      } else if (status_topk(s.status[src]) != p.num_topk) {
        record_error(p.wait.errors, cuda::kDevTopkMismatch, cuda::kPhaseCountExchange, p.rank, src,
                     p.num_topk, status_topk(s.status[src]));
        ok = false;
      }
    }
    const int Le = p.experts_per_rank;
    for (int d = 0; d < R; ++d) {
      long long total = 0;
      if (fresh_expert_major(p)) {  // pairs and padding
        for (int le = 0; le < Le && ok; ++le) total += p.group_rows[d * Le + le];
      } else {
        for (int src = 0; src < R; ++src) total += s.counts[src * R + d];
      }
      if (total > p.layout.capacity) {
        record_error(p.wait.errors, cuda::kDevCapacity, cuda::kPhaseCountExchange, p.rank, d,
                     p.layout.capacity, total);
        ok = false;
      }
    }
  }
  return __syncthreads_and(threadIdx.x == 0 ? ok : true);
}

// First row of chunk c on rank d = base(d, rank) + rows earlier chunks send to d.
__device__ void chunk_offsets(const NotifyParams& p, const NotifyShared& s) {
  const int R = p.num_ranks;
  for (int d = threadIdx.x; d < R; d += blockDim.x) {
    int running = 0;
    for (int src = 0; src < p.rank; ++src) running += s.counts[src * R + d];
    for (int c = 0; c < p.num_chunks; ++c) {
      const int n = p.chunk_counts[c * R + d];
      p.chunk_counts[c * R + d] = running;
      running += n;
    }
  }
}

// Expert-major: the first row of chunk c's pairs of expert e at e's rank = the group's first
// row + pairs earlier sources send to e + pairs earlier chunks of this rank send to e.
__device__ void chunk_expert_offsets(const NotifyParams& p) {
  const int E = p.layout.num_experts(), Le = p.experts_per_rank;
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    const int d = e / Le;
    int running = 0;
    for (int le = d * Le; le < e; ++le) running += p.group_rows[le];
    for (int src = 0; src < p.rank; ++src) running += p.pair_matrix[src * E + e];
    for (int c = 0; c < p.num_chunks; ++c) {
      const size_t i = static_cast<size_t>(c) * E + e;
      const int n = p.chunk_expert_counts[i];
      p.chunk_expert_counts[i] = running;
      running += n;
    }
  }
}

// Expert-major: this rank's groups (offsets, pairs, rows) and num_recv (padding included).
__device__ void publish_groups(const NotifyParams& p) {
  const int E = p.layout.num_experts(), Le = p.experts_per_rank, first = p.rank * Le;
  for (int le = threadIdx.x; le < Le; le += blockDim.x) {
    int pairs = 0;
    for (int src = 0; src < p.num_ranks; ++src) pairs += p.pair_matrix[src * E + first + le];
    p.routing.group_pairs[le] = pairs;
    p.num_recv_per_expert[le] = p.group_rows[first + le];
  }
  if (threadIdx.x == 0) {
    int row = 0;
    for (int le = 0; le < Le; ++le) {
      p.routing.expert_offsets[le] = row;
      row += p.group_rows[first + le];
    }
    p.routing.expert_offsets[Le] = row;
  }
}

__device__ void publish_receive_side(const NotifyParams& p, const NotifyShared& s) {
  const int R = p.num_ranks;
  for (int src = threadIdx.x; src < R; src += blockDim.x) {
    const int n = s.counts[src * R + p.rank];
    p.routing.recv_counts[src] = n;
    p.wait.state->expected_arrived[src] += static_cast<uint64_t>(n);
  }
  if (fresh_expert_major(p)) {
    publish_groups(p);
  } else if (!p.cached) {
    const int align = p.expert_alignment;
    for (int e = threadIdx.x; e < p.experts_per_rank; e += blockDim.x) {
      p.num_recv_per_expert[e] = (s.experts[e] + align - 1) / align * align;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int num_recv = 0;
    for (int src = 0; src < R; ++src) num_recv += s.counts[src * R + p.rank];
    // Expert-major rows include each group's padding (a cached dispatch keeps its handle's).
    if (p.expert_major) num_recv = p.routing.expert_offsets[p.experts_per_rank];
    *p.routing.num_recv = num_recv;
    if (p.mapped_num_recv) {
      *p.mapped_num_recv = num_recv;
      __threadfence_system();
    }
  }
}

__global__ void __launch_bounds__(1024) notify_kernel(NotifyParams p) {
  cuda::DeviceState* state = p.wait.state;
  if (rank_failed(state)) return;
  extern __shared__ int smem[];
  const int R = p.num_ranks;
  NotifyShared s{smem, smem + R * R, smem + R * R + R};
  __shared__ uint64_t s_epoch;
  if (threadIdx.x == 0) s_epoch = state->epoch + 1;
  for (int e = threadIdx.x; e < p.experts_per_rank; e += blockDim.x) s.experts[e] = 0;
  for (int d = threadIdx.x; d < R && p.phase != cuda::kNotifyCollect; d += blockDim.x) {
    int n = 0;
    if (p.cached) {
      n = p.routing.send_counts[d];
    } else if (p.expert_major) {  // pairs: flat path only, no rings
      for (int le = 0; le < p.experts_per_rank; ++le) {
        n += p.expert_counts[d * p.experts_per_rank + le];
      }
      p.routing.send_counts[d] = n;
    } else {
      const int channels = p.layout.ring.channels;
      for (int ch = 0; ch < channels; ++ch) {  // ring path: rows per channel
        int rows = 0;
        const int end = channel_first_chunk(ch + 1, p.num_chunks, channels);
        for (int c = channel_first_chunk(ch, p.num_chunks, channels); c < end; ++c) {
          rows += p.chunk_counts[c * R + d];
        }
        p.routing.ring_send_counts[ch * R + d] = rows;
      }
      for (int c = 0; c < p.num_chunks; ++c) n += p.chunk_counts[c * R + d];
      p.routing.send_counts[d] = n;
    }
    s.counts[p.rank * R + d] = n;
  }
  __syncthreads();
  const uint64_t epoch = s_epoch;

  if (p.phase != cuda::kNotifyCollect) post_row(p, s, epoch);
  if (p.phase == cuda::kNotifyPost) return;
  const bool collected = collect_rows(p, s, epoch);
  if (!__syncthreads_and(collected)) return;  // the error record names the peer
  if (fresh_expert_major(p)) {
    // Only when every rank dispatches expert-major with this top-k do all post pair counts;
    // else agree() names the peer that differs, and nobody waits for counts never posted.
    bool alike = true;
    for (int src = 0; src < R; ++src) alike = alike && s.status[src] == my_status(p);
    if (alike && !collect_pair_counts(p, epoch)) return;
    if (!alike && threadIdx.x == 0) {
      for (int e = 0; e < p.layout.num_experts(); ++e) p.group_rows[e] = 0;
    }
    __syncthreads();
  }
  const bool ok = agree(p, s);
  if (ok) {
    if (fresh_expert_major(p)) {
      chunk_expert_offsets(p);
    } else if (!p.cached) {
      chunk_offsets(p, s);
    }
    publish_receive_side(p, s);
  } else if (threadIdx.x == 0) {
    *p.routing.num_recv = 0;
    if (p.mapped_num_recv) *p.mapped_num_recv = 0;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    if (!p.cached) *p.routing.accepted = ok ? 1 : 0;
    state->dispatch_ok = ok ? 1 : 0;
    state->invalid_input = 0;
    state->epoch = epoch;
  }
}

}  // namespace

size_t notify_shared_bytes(int num_ranks, int experts_per_rank) {
  return sizeof(int) * (static_cast<size_t>(num_ranks) * num_ranks + num_ranks + experts_per_rank);
}

cudaError_t load_notify_kernels() { return load_kernels(notify_kernel); }

void launch_notify(const cuda::NotifyParams& p, cudaStream_t stream) {
  notify_kernel<<<1, 1024, notify_shared_bytes(p.num_ranks, p.experts_per_rank), stream>>>(p);
}

}  // namespace epcomm::kernels
