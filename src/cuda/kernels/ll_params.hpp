// Parameters of the low-latency kernels (DESIGN section 10), passed by value. Host and device
// code.
#pragma once

#include <cstdint>

#include "../low_latency_layout.hpp"
#include "nvshmem/module_abi.hpp"
#include "params.hpp"

namespace epcomm::cuda {

// Rank-private device memory. round[b] counts the rounds (dispatch + combine) completed on
// buffer b, from Config::sequence_start; its sequence_tag tags the message counts and combine
// signals, so a word from another round is caught. Only the last block of the combine receive
// writes it, after every block of that kernel has read it.
struct LowLatencyCounters {
  uint64_t round[2];
  uint32_t blocks_done[2][6];  // [buffer][LowLatencyKernel]
};

// The kernels of a round, indexing LowLatencyCounters::blocks_done (the two puts kernels run
// only across domains, from the NVSHMEM module).
enum LowLatencyKernel {
  kLlDispatchSend,
  kLlDispatchReceive,
  kLlCombineSend,
  kLlCombineReceive,
  kLlDispatchPuts,
  kLlCombinePuts
};

// The outputs of one buffer, in the rank's own memory.
struct LowLatencyOutputs {
  char* recv_x;               // [Le][R * M][row bytes]
  float* recv_scales;         // [Le][R * M][H / 128]
  uint8_t* recv_scale_codes;  // [Le][R * M][H / 128] UE8M0 (the recv_scales memory, reused)
  int* recv_count;            // [Le]
  int32_t* recv_src;          // [Le][R * M][3]: rank, token, top-k slot
  int* layout_range;          // [Le][R][2]
};

struct LowLatencyParams {
  LowLatencyLayout layout;
  char* const* peers;  // [R] low-latency region bases, this rank's included
  int rank, num_ranks, experts_per_rank, num_experts, num_tokens, num_topk, hidden;
  int buffer;
  bool use_fp8;
  bool round_scale;  // dispatch: power-of-two scales (this rank's cast)
  bool use_ue8m0;    // dispatch receive: scales written as UE8M0 codes
  bool idx_int64;
  const uint16_t* x;         // dispatch: [T][H] bf16
  const void* topk_idx;      // [T][K]: dispatch: the caller's; combine: dispatch_topk below
  int64_t* dispatch_topk;    // [M][K] of this buffer: the dispatch's ids, saved by its send
  const void* combine_topk;  // combine receive: the caller's ids, checked against the saved
  bool combine_topk_int64;
  const float* topk_weights;  // combine: [T][K]
  const uint16_t* y;          // combine: [Le][R * M][H] bf16
  uint16_t* out;              // combine: [T][H] bf16
  LowLatencyOutputs recv;
  uint32_t* rows_from;  // [R]: rows received from each source (summed by the dispatch
                        // receive, read and reset by the combine send)
  LowLatencyCounters* counters;
  WaitContext wait;
  // [R], rank-private: 1 where this rank masks the rank (neither sent to nor waited for).
  // Written by the host's stream-ordered updates and, with shrink, by a receive kernel whose
  // wait on the rank timed out.
  int32_t* mask;
  bool shrink;  // Config::ll_enable_shrink: a timed-out wait masks its peer instead of failing
  // [R] per receive kernel of this buffer (dispatch, then combine): what the kernel's blocks
  // agreed about each peer (PeerVerdict); reset by the kernel's last block.
  uint32_t* verdicts;
  int64_t* wait_cost_stats;  // [R] or null: nanoseconds waited per peer, added
  // Domains (DESIGN section 11): ranks r and d share one when r / L == d / L. peers[d] is null
  // for a rank outside this rank's domain: the send kernels stage what goes there (dispatch:
  // the outbox and remote_messages [M][K]; combine: this rank's own message slots) and leave
  // the signal words they would post in remote_words (dispatch [E], combine [R]; 0: none),
  // which the NVSHMEM module's put kernels send after the data.
  int ranks_per_domain;
  nvshmem::LlRemoteMessage* remote_messages;
  uint64_t* remote_words;
};

__host__ __device__ inline bool same_domain(const LowLatencyParams& p, int d) {
  return d / p.ranks_per_domain == p.rank / p.ranks_per_domain;
}

// What the blocks of one receive kernel agreed about a peer (first writer wins, by CAS).
enum PeerVerdict : uint32_t { kPeerUndecided = 0, kPeerArrived = 1, kPeerMasked = 2 };

}  // namespace epcomm::cuda
