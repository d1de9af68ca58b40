// agree_on_config: every rank sees every rank's Config and reaches the same verdict.
#include "config_agreement.hpp"

#include <cstdint>
#include <vector>
#include "message_stream.hpp"

#include "epcomm/error.hpp"

namespace epcomm::detail {
namespace {

// Every Config field, in declaration order. NOTE: a field added to Config belongs here too.
struct Field {
  const char* name;
  int64_t value;
};

constexpr int kNumFields = 19;

struct Fields {
  Field f[kNumFields];
};

Fields fields_of(const Config& c) {
  return Fields{{{"num_experts", c.num_experts},
                 {"hidden", c.hidden},
                 {"max_tokens_per_rank", c.max_tokens_per_rank},
                 {"max_topk", c.max_topk},
                 {"dtype", static_cast<int64_t>(c.dtype)},
                 {"index_type", static_cast<int64_t>(c.index_type)},
                 {"algorithm", static_cast<int64_t>(c.algorithm)},
                 {"dispatch_sms", c.dispatch_sms},
                 {"combine_sms", c.combine_sms},
                 {"expert_alignment", c.expert_alignment},
                 {"max_recv_rows", c.max_recv_rows},
                 {"wait_timeout_ms", c.wait_timeout_ms},
                 {"ring_slots", c.ring_slots},
                 {"ring_chunk", c.ring_chunk},
                 {"ll_max_tokens_per_rank", c.ll_max_tokens_per_rank},
                 {"ll_enable_shrink", c.ll_enable_shrink ? 1 : 0},
                 {"transport", static_cast<int64_t>(c.transport)},
                 {"ranks_per_domain", c.ranks_per_domain},
                 {"sequence_start", static_cast<int64_t>(c.sequence_start)}}};
}

}  // namespace

void agree_on_config(Bootstrap& bootstrap, const Config& config) {
  const Fields mine = fields_of(config);
  int64_t values[kNumFields];
  for (int i = 0; i < kNumFields; ++i) values[i] = mine.f[i].value;
  std::vector<int64_t> all(static_cast<size_t>(bootstrap.size()) * kNumFields);
  bootstrap.allGather(values, all.data(), sizeof(values));
  for (int i = 0; i < kNumFields; ++i) {
    const int64_t first = all[i];
    for (int r = 1; r < bootstrap.size(); ++r) {
      const int64_t v = all[static_cast<size_t>(r) * kNumFields + i];
      if (v == first) continue;
      epcomm::detail::MessageStream os;
      os << "Communicator::create on rank " << bootstrap.rank() << ": Config." << mine.f[i].name
         << " differs between ranks: rank 0 has " << first << ", rank " << r << " has " << v
         << "; every rank must pass the same Config";
      throw Error(ErrorCode::kInvalidArgument, os.str());
    }
  }
}

}  // namespace epcomm::detail
