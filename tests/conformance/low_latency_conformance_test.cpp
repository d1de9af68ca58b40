// Low-latency conformance: the CUDA backend against the host reference, byte for byte, over
// ranks, token counts, routings, bf16/fp8, index types, the hook and two calls in flight.
// Every case skips without a GPU.
#include <gtest/gtest.h>

#include <sstream>

#include "epcomm/epcomm.hpp"
#include "ll_harness.hpp"

namespace epcomm {
namespace {

using testing::LowLatencyRoundOptions;
using testing::LowLatencyShape;
using testing::Routing;

struct LlCase {
  LowLatencyShape shape;
  Routing routing = Routing::kUniform;
  LowLatencyRoundOptions options;
  int sms = 16;  // Config.dispatch_sms and combine_sms
  int rounds = 1;
  uint64_t seed = 1;
  std::string name;
};

std::string case_name(const LlCase& c) {
  std::ostringstream os;
  os << c.shape.name() << "_" << testing::to_string(c.routing) << (c.options.hook ? "_hook" : "")
     << "_inflight" << c.options.in_flight << "_sms" << c.sms
     << (c.options.wait_stats ? "_stats" : "");
  if (c.rounds > 1) os << "_rounds" << c.rounds;
  return os.str();
}

void PrintTo(const LlCase& c, std::ostream* os) { *os << c.name; }

// Each (R, routing, T) once; dtype, fp8 scale format, index type, hook, calls in flight, masked
// ranks, wait stats, M, H, K and experts per rank come from bits of a hash of the case index,
// so that each variant meets many shapes.
// T = 0 sends nothing; T = 1 leaves the last rank without tokens (it takes T / 2).
std::vector<LlCase> make_cases() {
  std::vector<LlCase> cases;
  int i = 0;
  auto bit = [&](int b) { return ((static_cast<uint32_t>(i) * 2654435761u) >> (8 + b)) & 1u; };
  for (int R : {1, 2, 3, 4, 8}) {
    for (Routing routing : {Routing::kUniform, Routing::kSkewed, Routing::kAllToOne,
                            Routing::kOneRankEmpty, Routing::kWithHoles}) {
      for (int t_kind = 0; t_kind < 3; ++t_kind) {
        LlCase c;
        c.routing = routing;
        c.shape.num_ranks = R;
        c.shape.max_tokens = 8 << (i % 3);  // 8, 16, 32
        c.shape.num_tokens = t_kind == 0 ? 0 : t_kind == 1 ? 1 : c.shape.max_tokens;
        c.shape.hidden = 128 << ((i / 3) % 3);               // 128, 256, 512
        c.shape.num_experts = R * (1 << (bit(0) + bit(1)));  // 1, 2 or 4 per rank
        c.shape.num_topk = bit(2) ? 8 : 1 + i % 4;
        c.shape.use_fp8 = bit(3);
        c.shape.scales = c.shape.use_fp8 ? static_cast<LowLatencyShape::Scales>(i % 3)
                                         : LowLatencyShape::Scales::kFloat;
        c.shape.index_type = bit(4) ? IndexType::kInt32 : IndexType::kInt64;
        c.options.hook = bit(5);
        c.options.in_flight = 1 + bit(6);
        c.shape.masked_ranks = R > 2 && bit(7) ? 1u << (i % R) : 0u;
        c.options.wait_stats = bit(8);
        c.sms = 1 + (i * 7) % 16;
        c.seed = 11000 + 10 * i;
        c.name = case_name(c);
        cases.push_back(c);
        ++i;
      }
    }
  }
  // Every (fp8, hook, in_flight) combination at R = 8 with T = M, whatever the hash drew.
  for (int v = 0; v < 8; ++v) {
    LlCase c;
    c.shape.num_ranks = 8;
    c.shape.max_tokens = 16;
    c.shape.num_tokens = 16;
    c.shape.hidden = 256;
    c.shape.num_experts = 16;
    c.shape.num_topk = 4;
    c.shape.use_fp8 = v & 1;
    c.shape.scales = static_cast<LowLatencyShape::Scales>(v / 2 % 3);
    c.shape.index_type = v % 3 == 0 ? IndexType::kInt32 : IndexType::kInt64;
    c.shape.masked_ranks = v >= 6 ? 0x24u : 0u;  // ranks 2 and 5 cut off
    c.options.wait_stats = v & 2;
    c.options.hook = v & 2;
    c.options.in_flight = v & 4 ? 2 : 1;
    c.routing = v & 4 ? Routing::kWithHoles : Routing::kUniform;
    c.rounds = 2;
    c.seed = 12000 + v;
    c.name = case_name(c);
    cases.push_back(c);
  }
  return cases;
}

void run_case(const LlCase& c) {
  std::printf("case %s seed %llu\n", c.name.c_str(), static_cast<unsigned long long>(c.seed));
  Config cfg = testing::ll_config_for(c.shape);
  cfg.dispatch_sms = c.sms;
  cfg.combine_sms = c.sms;
  const auto want =
      testing::run_ll_cluster(Backend::kHost, cfg, c.shape, c.routing, c.seed, c.options, c.rounds);
  const auto got =
      testing::run_ll_cluster(Backend::kCuda, cfg, c.shape, c.routing, c.seed, c.options, c.rounds);
  for (int round = 0; round < c.rounds; ++round) {
    for (int p = 0; p < c.options.in_flight; ++p) {
      for (int r = 0; r < c.shape.num_ranks; ++r) {
        ASSERT_EQ(testing::first_difference(want[round][p][r], got[round][p][r]), "")
            << "round " << round << " pair " << p << " rank " << r << " (seed "
            << c.seed + 2 * round + p << ")";
      }
    }
  }
}

class CudaLowLatency : public ::testing::TestWithParam<LlCase> {
 protected:
  void SetUp() override {
    if (testing::cuda_device_count() == 0) GTEST_SKIP() << "no GPU present: CUDA case skipped";
  }
};

TEST_P(CudaLowLatency, MatchesHostReference) { run_case(GetParam()); }

INSTANTIATE_TEST_SUITE_P(Shapes, CudaLowLatency, ::testing::ValuesIn(make_cases()),
                         [](const auto& info) { return info.param.name; });

// Fifty rounds on one set of communicators: the two buffers alternate (each round adds an
// empty pair on each buffer, then the pairs under test) with fresh routing and rows every
// round, so a stale count or offset from the previous use of a buffer shows.
TEST(CudaLowLatencyRounds, FiftyRoundsAlternatingBuffers) {
  if (testing::cuda_device_count() == 0) GTEST_SKIP() << "no GPU present";
  for (int in_flight : {1, 2}) {
    LlCase c;
    c.shape.num_ranks = 8;
    c.shape.max_tokens = 32;
    c.shape.num_tokens = 32;
    c.shape.hidden = 512;
    c.shape.num_experts = 32;
    c.shape.num_topk = 8;
    c.shape.use_fp8 = in_flight == 2;
    c.options.hook = in_flight == 2;
    c.options.in_flight = in_flight;
    c.routing = Routing::kWithHoles;
    c.rounds = 50;
    c.seed = 13000 + in_flight;
    c.name = case_name(c);
    run_case(c);
  }
}

// T differs between ranks every round: the last rank sends half as many tokens (or none), and
// the skewed routing makes the per-source counts uneven.
TEST(CudaLowLatencyRounds, UnevenTokensPerRank) {
  if (testing::cuda_device_count() == 0) GTEST_SKIP() << "no GPU present";
  for (int T : {1, 3, 24}) {
    LlCase c;
    c.shape.num_ranks = 4;
    c.shape.max_tokens = 24;
    c.shape.num_tokens = T;
    c.shape.hidden = 384;
    c.shape.num_experts = 8;
    c.shape.num_topk = 3;
    c.routing = Routing::kSkewed;
    c.rounds = 5;
    c.seed = 14000 + T;
    c.name = case_name(c);
    run_case(c);
  }
}

}  // namespace
}  // namespace epcomm
