// Parameters of the low-latency kernels (DESIGN section 10), passed by value. Host and device
// code.
#pragma once

#include <cstdint>

#include "../low_latency_layout.hpp"
#include "params.hpp"

namespace epcomm::cuda {

// Rank-private device memory. round[b] counts the rounds (dispatch + combine) completed on
// buffer b, from Config::sequence_start; its sequence_tag tags the message counts and combine
// signals, so a word from another round is caught. Only the last block of the combine receive
// writes it, after every block of that kernel has read it.
struct LowLatencyCounters {
  uint64_t round[2];
  uint32_t blocks_done[2][4];  // [buffer][LowLatencyKernel]
};

// The kernels of a round, indexing LowLatencyCounters::blocks_done.
enum LowLatencyKernel { kLlDispatchSend, kLlDispatchReceive, kLlCombineSend, kLlCombineReceive };

// The outputs of one buffer, in the rank's own memory.
struct LowLatencyOutputs {
  char* recv_x;        // [Le][R * M][row bytes]
  float* recv_scales;  // [Le][R * M][H / 128]
  int* recv_count;     // [Le]
  int32_t* recv_src;   // [Le][R * M][3]: rank, token, top-k slot
  int* layout_range;   // [Le][R][2]
};

struct LowLatencyParams {
  LowLatencyLayout layout;
  char* const* peers;  // [R] low-latency region bases, this rank's included
  int rank, num_ranks, experts_per_rank, num_experts, num_tokens, num_topk, hidden;
  int buffer;
  bool use_fp8;
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
};

}  // namespace epcomm::cuda
