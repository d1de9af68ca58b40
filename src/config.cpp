// Config::validate: every invariant the backends rely on, each with the field and its value.
#include <climits>
#include "message_stream.hpp"

#include "epcomm/config.hpp"
#include "epcomm/error.hpp"

namespace epcomm {
namespace {

// The largest rank count any table is sized for (count matrix, per-token destination lists).
constexpr int kMaxRanks = 1024;
// Meta rows and the low-latency path keep top-k slots in one warp.
constexpr int kMaxTopk = 32;
// Low-latency buffers hold R x M messages per expert; M beyond this is not a decode batch.
constexpr int kMaxLowLatencyTokens = 1024;

[[noreturn]] void fail(const std::string& field, long long value, const std::string& why) {
  epcomm::detail::MessageStream os;
  os << "Config." << field << " = " << value << ": " << why;
  throw Error(ErrorCode::kInvalidArgument, os.str());
}

}  // namespace

void Config::validate(int num_ranks) const {
  if (num_ranks < 1 || num_ranks > kMaxRanks) {
    epcomm::detail::MessageStream os;
    os << "number of ranks = " << num_ranks << ": must be in [1, " << kMaxRanks << "]";
    throw Error(ErrorCode::kInvalidArgument, os.str());
  }
  if (num_experts < 1) fail("num_experts", num_experts, "must be positive");
  if (num_experts % num_ranks != 0) {
    fail("num_experts", num_experts,
         "must be a multiple of the number of ranks (" + std::to_string(num_ranks) + ")");
  }
  if (hidden < 1) fail("hidden", hidden, "must be positive");
  // Rows move as 16-byte vectors, in the dispatch dtype and as bf16 in combine.
  if (hidden % 8 != 0) fail("hidden", hidden, "hidden * 2 bytes must be a multiple of 16");
  if (dtype == DType::kFP8E4M3 && hidden % kFp8ScaleBlock != 0) {
    fail("hidden", hidden, "must be a multiple of 128 for fp8 (one scale per 128 elements)");
  }
  if (max_tokens_per_rank < 1) fail("max_tokens_per_rank", max_tokens_per_rank, "must be positive");
  if (max_topk < 1 || max_topk > kMaxTopk) {
    fail("max_topk", max_topk, "must be in [1, " + std::to_string(kMaxTopk) + "]");
  }
  if (dispatch_sms < 1) fail("dispatch_sms", dispatch_sms, "must be at least 1");
  if (combine_sms < 1) fail("combine_sms", combine_sms, "must be at least 1");
  if (expert_alignment < 1) fail("expert_alignment", expert_alignment, "must be at least 1");
  if (max_recv_rows < 0) fail("max_recv_rows", max_recv_rows, "must be 0 (default) or positive");
  if (static_cast<long long>(num_ranks) * max_tokens_per_rank > INT_MAX) {
    fail("max_tokens_per_rank", max_tokens_per_rank, "times the number of ranks overflows int");
  }
  if (wait_timeout_ms < 1) fail("wait_timeout_ms", wait_timeout_ms, "must be at least 1");
  if (ring_slots < 2) fail("ring_slots", ring_slots, "must be at least 2");
  if (ll_max_tokens_per_rank < 0 || ll_max_tokens_per_rank > kMaxLowLatencyTokens) {
    fail("ll_max_tokens_per_rank", ll_max_tokens_per_rank,
         "must be in [0, " + std::to_string(kMaxLowLatencyTokens) + "] (0 disables the mode)");
  }
  if (ll_max_tokens_per_rank > 0 && hidden % kFp8ScaleBlock != 0) {
    fail("hidden", hidden, "must be a multiple of 128 for the low-latency mode (fp8 scales)");
  }
  if (ranks_per_domain < 0) {
    fail("ranks_per_domain", ranks_per_domain, "must be 0 (one domain) or positive");
  }
  if (ranks_per_domain > 0 && num_ranks % ranks_per_domain != 0) {
    fail("ranks_per_domain", ranks_per_domain,
         "must divide the number of ranks, " + std::to_string(num_ranks));
  }
  if (transport == Transport::kIpc && ranks_per_domain > 0 && ranks_per_domain < num_ranks) {
    fail("ranks_per_domain", ranks_per_domain,
         "needs transport = nvshmem: the ipc transport reaches peers by load and store only, so "
         "its one domain holds all " +
             std::to_string(num_ranks) + " ranks");
  }
  if (transport != Transport::kIpc && transport != Transport::kNvshmem) {
    fail("transport", static_cast<long long>(transport), "is neither ipc nor nvshmem");
  }
  if (ll_enable_shrink && ll_max_tokens_per_rank == 0) {
    fail("ll_enable_shrink", 1, "needs the low-latency mode (ll_max_tokens_per_rank > 0)");
  }
  if (ring_chunk < 1 || ring_chunk >= ring_slots) {
    fail("ring_chunk", ring_chunk,
         "must be in [1, ring_slots) with ring_slots = " + std::to_string(ring_slots));
  }
}

}  // namespace epcomm
