// Low-latency mode (decode): fixed-size buffers, no count exchange before sending, nothing
// waits on the host, every call capturable in a CUDA graph. See docs/design.md, "Low-latency
// mode".
//
// Shapes: T tokens on this rank (T <= M = Config::ll_max_tokens_per_rank), K top-k slots,
// H = Config::hidden (a multiple of 128), R ranks, Le = E / R experts per rank.
#pragma once

#include <cstdint>
#include <memory>

namespace epcomm {

namespace detail {
struct LowLatencyState;
}

// Where a low-latency received row came from: the source rank, its token, and the first top-k
// slot of that token naming this expert (a token goes once to each of its experts).
struct LowLatencySource {
  int32_t rank;
  int32_t token;
  int32_t topk_slot;
};

// One low-latency dispatch and its combine. Calls alternate between two buffers, so two
// dispatch/combine pairs (two micro-batches) may be in flight at once.
class LowLatencyHandle {
 public:
  LowLatencyHandle() = default;
  explicit LowLatencyHandle(std::shared_ptr<const detail::LowLatencyState> state);

  bool valid() const { return state_ != nullptr; }
  uint64_t call() const;  // the dispatch's sequence number among low-latency calls (1, 2, ...)
  int buffer() const;     // (call - 1) % 2
  int num_tokens() const;
  int num_topk() const;
  bool use_fp8() const;
  const detail::LowLatencyState* state() const { return state_.get(); }

 private:
  std::shared_ptr<const detail::LowLatencyState> state_;
};

struct LowLatencyDispatchInputs {
  const void* x = nullptr;         // [T][H] bf16
  const void* topk_idx = nullptr;  // [T][K] of Config::index_type, values in [-1, E)
  int num_tokens = 0;              // T
  int num_topk = 0;                // K, 1 <= K <= Config::max_topk
  // Cast rows to fp8 e4m3 in the kernel, one fp32 scale per 128 elements:
  // a = max(amax, 1e-4), scale = a / 448, q = e4m3(x * (448 / a)) (nearest even, saturated).
  bool use_fp8 = false;
  // fp8 only (DeepEP's round_scale): each block's scale is a power of two,
  // scale = 2^ceil(log2(a * (1 / 448))) (the fp32 product), and q = e4m3(x * (1 / scale)), both
  // exact. Every rank passes the same (checked like use_fp8).
  bool round_scale = false;
  // fp8 with round_scale (DeepEP's use_ue8m0): the scales arrive as UE8M0 codes, the biased fp32
  // exponent of each scale (scale = 2^(code - 127)), one byte per block, in recv_scale_codes
  // instead of recv_scales. A receive-side format: ranks may differ.
  bool use_ue8m0 = false;
  // [R] int64 in the backend's memory, or null: the receive adds, per source rank, the
  // nanoseconds its wait for that source's message counts took (summed over the local experts,
  // like DeepEP's dispatch_wait_recv_cost_stats). The host reference has no device waits and
  // leaves it unchanged.
  int64_t* wait_cost_stats = nullptr;
};

struct LowLatencyCombineOptions {
  // [R] int64 or null: the combine receive adds, per rank, the nanoseconds it waited for that
  // rank's returned rows (DeepEP's combine_wait_recv_cost_stats). Unchanged by the host reference.
  int64_t* wait_cost_stats = nullptr;
};

// Views of the call's buffer (device memory for the CUDA backend), valid until the call two
// low-latency dispatches later. Rows of local expert le: first from source rank 0 (its tokens
// in ascending order), then rank 1, ...; only the first recv_count[le] rows are written.
struct LowLatencyDispatchResult {
  LowLatencyHandle handle;
  void* recv_x = nullptr;                // [Le][R * M][H] bf16, or fp8 e4m3 (one byte each)
  float* recv_scales = nullptr;          // [Le][R * M][H / 128], fp8 without use_ue8m0
  uint8_t* recv_scale_codes = nullptr;   // [Le][R * M][H / 128] UE8M0, use_ue8m0 only (four to
                                         // an int32 word, the first block in the low byte)
  int* recv_count = nullptr;             // [Le] rows per local expert
  LowLatencySource* recv_src = nullptr;  // [Le][R * M]
  int* layout_range = nullptr;           // [Le][R][2]: first row and row count from each source
  int rows_per_expert = 0;               // R * M: the stride between experts, in rows
};

}  // namespace epcomm
