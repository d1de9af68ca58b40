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

struct DispatchOptions {
  // true: the host waits until the row count is known and returns it (exact sizes).
  // false: nothing waits on the host; buffers are worst-case sized and the call may be
  // captured in a CUDA graph. num_recv is then only in num_recv_device.
  bool wait_num_recv = true;
  DispatchOutputs outputs;
};

// Rows are ordered by source rank ascending, then source token ascending.
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
};

// Extras of a high-throughput combine.
struct CombineOptions {
  // Optional [T][H] bf16 rows added to the combined output (DeepEP's bias, one tensor or a
  // pair): out[t] = bf16(sum of the expert rows + bias[t] + bias2[t]), all in fp32, rounded once.
  const void* bias = nullptr;
  const void* bias2 = nullptr;
};

}  // namespace epcomm
