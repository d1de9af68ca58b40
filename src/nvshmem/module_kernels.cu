// The kernels of epcomm's NVSHMEM module: compiled with relocatable device code, device-linked
// with libnvshmem_device.a into a fatbin of their own, embedded in libepcomm and bound to the
// running NVSHMEM job with nvshmemx_cumodule_init when loaded (src/cuda/nvshmem_module.cpp).
#include "cuda/kernels/common/last_block.cuh"
#include "nvshmem/module_abi.hpp"
#include "nvshmem/nvshmem_transport.cuh"

using epcomm::nvshmem::PutSignalOp;
using epcomm::nvshmem::SignalWait;

// Block b carries out ops b, b + gridDim.x, ...; each thread 0 then waits until its block's
// puts have completed (nvshmem_quiet), so the source may be reused after the kernel.
extern "C" __global__ void epcomm_nvshmem_put_signal(const PutSignalOp* ops, int n) {
  for (int i = blockIdx.x; i < n; i += gridDim.x) {  // block-uniform: the put is collective
    const PutSignalOp op = ops[i];
    epcomm::nvshmem::put_signal_block(op.dst, op.src, op.bytes, op.signal, op.add, op.pe);
  }
  __syncthreads();
  if (threadIdx.x == 0) epcomm::nvshmem::quiet();
}

// Thread i waits for waits[i], at most timeout_ns each, and reports what it saw.
extern "C" __global__ void epcomm_nvshmem_wait_signals(SignalWait* waits, int n,
                                                       uint64_t timeout_ns) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    uint64_t seen = 0;
    const bool arrived = epcomm::nvshmem::wait_signal_at_least(waits[i].signal, waits[i].expected,
                                                               timeout_ns, &seen);
    waits[i].seen = seen;
    waits[i].timed_out = arrived ? 0 : 1;
  }
}

namespace {

using epcomm::nvshmem::LlPuts;

// Called by every thread once its block's puts are issued: the block's puts complete
// (nvshmem_quiet), then the last block to get here posts every nonzero word with a signal
// set, so each word reaches its PE after all the data of this launch.
template <typename PeOf, typename SignalOf>
__device__ void post_words_after_puts(const LlPuts& a, PeOf pe_of, SignalOf signal_of) {
  __syncthreads();
  if (threadIdx.x == 0) epcomm::nvshmem::quiet();
  if (!epcomm::kernels::last_block_done<true>(a.blocks_done)) return;
  for (int i = threadIdx.x; i < a.num_words; i += blockDim.x) {
    const uint64_t word = a.words[i];
    if (word != 0) epcomm::nvshmem::signal_set(signal_of(i), word, pe_of(i));
  }
}

// Whether the rank has failed: its send kernels then returned without staging anything.
__device__ bool rank_failed(const LlPuts& a) {
  return *reinterpret_cast<const volatile int32_t*>(a.failed) != 0;
}

}  // namespace

// Warp w puts messages w, w + W, ... (W warps in all) from the outbox to their slots: a bf16
// message whole, an fp8 one as its H row bytes and then its scales and header.
extern "C" __global__ void epcomm_nvshmem_ll_dispatch_puts(LlPuts a) {
  if (rank_failed(a)) return;
  const int warps = blockDim.x / 32;
  const size_t bytes = a.layout.message_bytes, row = static_cast<size_t>(a.layout.hidden);
  const size_t scales = a.layout.message_scales_offset();
  for (int i = blockIdx.x * warps + threadIdx.x / 32; i < a.num_messages; i += gridDim.x * warps) {
    const epcomm::nvshmem::LlRemoteMessage m = a.messages[i];
    if (m.rank < 0) continue;  // warp-uniform: the put is collective over the warp
    char* src = a.layout.outbox(a.region, a.buffer, static_cast<size_t>(i));
    char* dst = a.layout.message(a.region, a.buffer, m.local_expert, a.rank, m.slot);
    if (a.fp8) {
      epcomm::nvshmem::put_warp(dst, src, row, m.rank);
      epcomm::nvshmem::put_warp(dst + scales, src + scales, bytes - scales, m.rank);
    } else {
      epcomm::nvshmem::put_warp(dst, src, bytes, m.rank);
    }
  }
  post_words_after_puts(
      a, [&](int e) { return e / a.experts_per_rank; },
      [&](int e) { return a.layout.count(a.region, a.buffer, e % a.experts_per_rank, a.rank); });
}

// Warp w takes rows w, w + W, ... of each local expert; a row whose source is outside this
// rank's domain (a nonzero word) goes from its staging slot, the message slot it arrived in,
// to combine_rows[token][top-k slot] at the source.
extern "C" __global__ void epcomm_nvshmem_ll_combine_puts(LlPuts a) {
  if (rank_failed(a)) return;
  const int warps = blockDim.x / 32, R = a.layout.num_ranks;
  const size_t row_bytes = 2 * static_cast<size_t>(a.layout.hidden);
  for (int le = 0; le < a.experts_per_rank; ++le) {
    const int rows = a.recv_count[le];
    for (int j = blockIdx.x * warps + threadIdx.x / 32; j < rows; j += gridDim.x * warps) {
      const int32_t* src = a.recv_src + (le * a.layout.rows_per_expert() + j) * 3;
      const int s = src[0];
      if (a.words[s] == 0) continue;  // warp-uniform
      const int i = j - a.layout_range[(le * R + s) * 2];
      epcomm::nvshmem::put_warp(a.layout.combine_row(a.region, a.buffer, src[1], src[2]),
                                a.layout.message(a.region, a.buffer, le, s, i), row_bytes, s);
    }
  }
  post_words_after_puts(
      a, [](int s) { return s; },
      [&](int) { return a.layout.delivered(a.region, a.buffer, a.rank); });
}

namespace {

using epcomm::nvshmem::HtPuts;

__device__ bool ht_skip(const HtPuts& a, bool needs_verdict) {
  if (*reinterpret_cast<const volatile int32_t*>(a.failed) != 0) return true;
  return needs_verdict && *reinterpret_cast<const volatile int32_t*>(a.dispatch_ok) == 0;
}

__device__ uint64_t tagged(uint64_t sequence, uint32_t value) {
  return (static_cast<uint64_t>(epcomm::cuda::sequence_tag(sequence)) << 32) | value;
}

// Whether any rank of `domain` holds a slot in `slots` (indexed by rank); warp-uniform.
__device__ bool reaches(const epcomm::cuda::DomainLayout& dl, const int32_t* slots, int domain) {
  bool any = false;
  for (int j = threadIdx.x % 32; j < dl.ranks_per_domain; j += 32) {
    any |= slots[domain * dl.ranks_per_domain + j] >= 0;
  }
  return __any_sync(0xffffffffu, any);
}

// Every thread of every block calls it once its block's puts are issued: they complete
// (nvshmem_quiet), then the last block sets `word` to `value` on every PE partner(rank, D) of
// the other domains D, so each word follows all the data of this launch.
__device__ void set_word_after_puts(const HtPuts& a, uint64_t* word, uint64_t value) {
  __syncthreads();
  if (threadIdx.x == 0) epcomm::nvshmem::quiet();
  if (!epcomm::kernels::last_block_done<true>(a.blocks_done)) return;
  const epcomm::cuda::DomainLayout& dl = a.domains;
  const int mine = dl.domain_of(a.rank);
  for (int d = threadIdx.x; d < dl.num_domains(); d += blockDim.x) {
    if (d != mine) epcomm::nvshmem::signal_set(word, value, dl.partner(a.rank, d));
  }
}

}  // namespace

// Thread i sets count word i % W of the row for rank i / W, for each rank outside the domain.
extern "C" __global__ void epcomm_nvshmem_ht_count_puts(HtPuts a) {
  if (ht_skip(a, false)) return;
  const epcomm::cuda::DomainLayout& dl = a.domains;
  const int W = dl.count_row_words, R = dl.num_ranks;
  const uint64_t epoch = *reinterpret_cast<const volatile uint64_t*>(a.epoch) + 1;
  for (int i = threadIdx.x; i < R * W; i += blockDim.x) {
    const int peer = i / W, w = i % W;
    if (dl.domain_of(peer) == dl.domain_of(a.rank)) continue;
    uint64_t* dst = a.region.count_row(a.main, static_cast<int>(epoch & 1), a.rank) + w;
    epcomm::nvshmem::signal_set(dst, dl.count_outbox(a.staging, peer)[w], peer);
  }
}

// Warp w takes tokens w, w + W, ...: a record of this dispatch goes whole to the forwarder of
// each remote domain its token reaches, at in_record(this domain, token).
extern "C" __global__ void epcomm_nvshmem_ht_forward_puts(HtPuts a) {
  if (ht_skip(a, true)) return;
  const epcomm::cuda::DomainLayout& dl = a.domains;
  const uint64_t epoch = *reinterpret_cast<const volatile uint64_t*>(a.epoch);
  const uint32_t tag = epcomm::cuda::sequence_tag(epoch);
  const int warps = blockDim.x / 32, mine = dl.domain_of(a.rank);
  for (int t = blockIdx.x * warps + threadIdx.x / 32; t < a.num_tokens; t += gridDim.x * warps) {
    char* record = dl.out_record(a.staging, t);
    if (dl.header(record)->tag != tag) continue;  // warp-uniform: no remote destination
    for (int d = 0; d < dl.num_domains(); ++d) {
      if (d == mine || !reaches(dl, dl.slots(record), d)) continue;
      epcomm::nvshmem::put_warp(dl.in_record(a.staging, mine, t), record, dl.record_bytes,
                                dl.partner(a.rank, d));
    }
  }
  set_word_after_puts(a, dl.forward_word(a.staging, mine),
                      tagged(epoch, static_cast<uint32_t>(a.num_tokens)));
}

// Warp w takes tokens w, w + W, ... of each other domain's source: the partial of a token it
// forwarded in this dispatch goes back to that source's in_partial(this domain, token).
extern "C" __global__ void epcomm_nvshmem_ht_partial_puts(HtPuts a) {
  if (ht_skip(a, true)) return;
  const epcomm::cuda::DomainLayout& dl = a.domains;
  const uint32_t tag =
      epcomm::cuda::sequence_tag(*reinterpret_cast<const volatile uint64_t*>(a.epoch));
  const int warps = blockDim.x / 32, mine = dl.domain_of(a.rank);
  const int buffer =
      static_cast<int>(*reinterpret_cast<const volatile uint64_t*>(a.domain_combines) & 1);
  for (int s = 0; s < dl.num_domains(); ++s) {
    if (s == mine) continue;
    const uint64_t word =
        *reinterpret_cast<const volatile uint64_t*>(dl.forward_word(a.staging, s));
    const int T = static_cast<uint32_t>(word >> 32) == tag
                      ? static_cast<int>(static_cast<uint32_t>(word))
                      : 0;
    for (int t = blockIdx.x * warps + threadIdx.x / 32; t < T; t += gridDim.x * warps) {
      if (dl.header(dl.in_record(a.staging, s, t))->tag != tag) continue;  // warp-uniform
      epcomm::nvshmem::put_warp(dl.in_partial(a.staging, buffer, mine, t),
                                dl.out_partial(a.staging, s, t), dl.partial_bytes,
                                dl.partner(a.rank, s));
    }
  }
  const uint64_t seq = *reinterpret_cast<const volatile uint64_t*>(a.combine_seq);
  set_word_after_puts(a, dl.partial_word(a.staging, buffer, mine), tagged(seq, 1));
}
