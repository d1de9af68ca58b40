// Arguments and results of get_dispatch_layout, dispatch and combine.
//
// Pointers live in the backend's memory: host memory for Backend::kHost, device memory of the
// communicator's GPU for Backend::kCuda. Shapes use T = num_tokens, K = num_topk,
// H = Config::hidden, R = ranks, E = Config::num_experts, Le = E / R.
#pragma once

#include <cstdint>
#include <memory>

#include "epcomm/types.hpp"

namespace epcomm {

namespace detail {
struct HandleState;
}

// Routing of one dispatch: what combine and a cached dispatch reuse. Cheap to copy; it keeps
// its routing tables alive on its own, so a cached dispatch may use an old handle.
class DispatchHandle {
 public:
  DispatchHandle() = default;
  explicit DispatchHandle(std::shared_ptr<const detail::HandleState> state);

  bool valid() const { return state_ != nullptr; }
  int num_tokens() const;  // T of the dispatch that made it
  int num_recv() const;    // rows this rank received; -1 if the dispatch did not wait for it
  uint64_t epoch() const;  // the dispatch's sequence number on its communicator (1, 2, ...)
  const detail::HandleState* state() const { return state_.get(); }

 private:
  std::shared_ptr<const detail::HandleState> state_;
};

// get_dispatch_layout outputs, as DeepEP defines them.
struct LayoutOutputs {
  int* num_tokens_per_rank = nullptr;    // [R]: tokens with at least one expert on each rank
  int* num_tokens_per_expert = nullptr;  // [E]: top-k slots naming each expert
  bool* is_token_in_rank = nullptr;      // [T][R]
};

struct DispatchInputs {
  const void* x = nullptr;              // [T][H] of Config::dtype
  const float* x_scales = nullptr;      // [T][H/128] for fp8; must be null for bf16
  int scales_per_token = -1;            // x_scales' row length, checked when >= 0
  const void* topk_idx = nullptr;       // [T][K] of Config::index_type, values in [-1, E)
  const float* topk_weights = nullptr;  // [T][K], optional
  int num_tokens = 0;                   // T, 0 <= T <= max_tokens_per_rank
  int num_topk = 0;                     // K, 1 <= K <= max_topk
};

// Caller-owned output buffers, each sized for recv_capacity() rows. A null pointer means the
// communicator's own buffer, valid until the next dispatch on this communicator.
struct DispatchOutputs {
  void* recv_x = nullptr;  // when set, rows are copied here; else recv_x views the receive pool
  float* recv_scales = nullptr;
  void* recv_topk_idx = nullptr;
  float* recv_topk_weights = nullptr;
  RecvSource* recv_src = nullptr;
  int* num_recv_per_expert = nullptr;  // [Le]
};

// How a dispatch lays out the rows it receives.
// kTokenMajor: one row per received token, ordered by source rank, then source token.
// kExpertMajor: one row per (token, local expert) pair (a token naming an expert in several
// top-k slots once, under the first), grouped by local expert ascending; each group starts at a
// multiple of the expert alignment (DispatchOptions::expert_alignment, else
// Config::expert_alignment) rows (expert_offsets), holds its pairs by source rank,
// then source token, and ends with padding rows up to the next group: x and scales zero,
// recv_src {-1, -1}, recv_topk_slot -1, recv_weight 0. Ready for a grouped GEMM. The CUDA
// backend builds it on the flat path (Config::algorithm = kRing refuses it, kUnsupported).
enum class RecvLayout { kTokenMajor, kExpertMajor };
const char* to_string(RecvLayout layout);  // "token_major", "expert_major"

struct DispatchOptions {
  // true: the host waits until the row count is known and returns it (exact sizes).
  // false: nothing waits on the host; buffers are worst-case sized and the call may be
  // captured in a CUDA graph. num_recv is then only in num_recv_device.
  bool wait_num_recv = true;
  DispatchOutputs outputs;  // kExpertMajor: recv_topk_idx and recv_topk_weights must be null
  RecvLayout layout = RecvLayout::kTokenMajor;  // a cached dispatch keeps its handle's
  // kExpertMajor: each group starts at a multiple of this many rows; 0 means
  // Config::expert_alignment (DeepEP's callers choose the alignment per call).
  int expert_alignment = 0;
};

// Token-major rows are ordered by source rank ascending, then source token ascending; see
// RecvLayout for expert-major rows.
struct DispatchResult {
  DispatchHandle handle;
  int num_recv = -1;  // -1 unless wait_num_recv
  const int* num_recv_device = nullptr;
  void* recv_x = nullptr;              // [num_recv][H] of Config::dtype
  float* recv_scales = nullptr;        // [num_recv][H/128], fp8 only
  void* recv_topk_idx = nullptr;       // [num_recv][K]: local expert id (idx - rank*Le) or -1
  float* recv_topk_weights = nullptr;  // [num_recv][K]: weight where local, else 0 (also 0 from
                                       // a source that passed no topk_weights)
  RecvSource* recv_src = nullptr;      // [num_recv]
  int* num_recv_per_expert = nullptr;  // [Le], each rounded up to Config::expert_alignment
  // Expert-major only (null otherwise; recv_topk_idx and recv_topk_weights are then null):
  int32_t* recv_topk_slot = nullptr;  // [num_recv]: the top-k slot of the pair's token
  float* recv_weight = nullptr;       // [num_recv]: topk_weights at that slot (0 without them)
  int* expert_offsets = nullptr;      // [Le + 1]: each group's first row, then num_recv
};

// Extras of a high-throughput combine.
struct CombineOptions {
  // Optional [T][H] bf16 rows added to the combined output (DeepEP's bias, one tensor or a
  // pair): out[t] = bf16(sum of the expert rows + bias[t] + bias2[t]), all in fp32, rounded once.
  const void* bias = nullptr;
  const void* bias2 = nullptr;
  // Expert-major handles only: out[t] = bf16(acc + bias + bias2) with, over the token's pairs
  // in ascending order of their top-k slots, acc = fmaf(w[t][k], y[pair row], acc) (weights
  // the dispatch was given) when true, acc += y[pair row] when false; acc starts at 0 in fp32.
  bool apply_weights = false;
};

}  // namespace epcomm
