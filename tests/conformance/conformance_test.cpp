// Conformance: every backend x algorithm against the host reference, byte for byte, over
// shapes, routings, dtypes, index types and output modes, in both receive layouts. CUDA cases
// skip without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <sstream>

#include "epcomm/epcomm.hpp"
#include "harness.hpp"
#include "independent_check.hpp"

namespace epcomm {
namespace {

using testing::RoundOptions;
using testing::Routing;
using testing::Shape;

struct Case {
  Shape shape;
  Routing routing = Routing::kUniform;
  RoundOptions options;
  Algorithm algorithm = Algorithm::kFlat;
  int sms = 4;
  int ring_slots = 8, ring_chunk = 4;
  int rounds = 1;
  uint64_t seed = 1;
  int config_alignment = 0;  // Config::expert_alignment; 0: 1 + seed % 3
  std::string name;
};

bool expert_major(const Case& c) { return c.options.layout == RecvLayout::kExpertMajor; }

std::string case_name(const Case& c) {
  std::ostringstream os;
  os << to_string(c.algorithm) << "_" << c.shape.name() << "_" << testing::to_string(c.routing)
     << "_sms" << c.sms << (c.options.copy_recv_x ? "_copyx" : "_viewx")
     << (c.options.stage_y ? "_stagey" : "_inplacey")
     << (c.options.wait_num_recv ? "_exact" : "_worstcase")
     << (c.options.caller_meta ? "_callermeta" : "_ownmeta");
  if (c.options.bias) os << "_bias" << c.options.bias;
  if (expert_major(c)) {
    os << "_em_align" << c.config_alignment;
    if (c.options.expert_alignment) os << "_callalign" << c.options.expert_alignment;
    if (c.options.apply_weights) os << "_applyw";
    if (c.options.y_is_recv_x) os << "_yisx";
  }
  if (c.algorithm == Algorithm::kRing) os << "_q" << c.ring_slots << "c" << c.ring_chunk;
  if (c.rounds > 1) os << "_rounds" << c.rounds;
  return os.str();
}

// A spread of cases: each (R, routing, T) once, with dtype, index type, weights, SMs and output
// modes drawn from a hash of the case index, so that every variant meets many shapes.
std::vector<Case> make_cases(Algorithm algorithm) {
  std::vector<Case> cases;
  int i = 0;
  auto bit = [&](int b) { return ((static_cast<uint32_t>(i) * 2654435761u) >> (8 + b)) & 1u; };
  for (int R : {1, 2, 3, 4, 8}) {
    for (Routing routing : {Routing::kUniform, Routing::kSkewed, Routing::kAllToOne,
                            Routing::kOneRankEmpty, Routing::kWithHoles}) {
      for (int T : {0, 1, 13, 96}) {
        Case c;
        c.algorithm = algorithm;
        c.routing = routing;
        c.shape.num_ranks = R;
        c.shape.num_tokens = T;
        c.shape.num_experts = 8 * R;
        c.shape.num_topk = bit(0) ? 8 : 4;
        c.shape.hidden = (i % 7 == 0) ? 7168 : (bit(1) ? 256 : 128);
        c.shape.dtype = bit(2) ? DType::kFP8E4M3 : DType::kBF16;
        c.shape.index_type = bit(3) ? IndexType::kInt32 : IndexType::kInt64;
        c.shape.with_weights = bit(4) || bit(5);
        c.sms = 1 + (i * 7) % 16;
        c.options.copy_recv_x = bit(6);
        c.options.stage_y = bit(7);
        c.options.wait_num_recv = bit(8) || bit(9);
        c.options.caller_meta = bit(10);
        c.options.bias = static_cast<int>(bit(12) | (bit(13) << 1));
        if (algorithm == Algorithm::kRing && bit(11)) {
          c.ring_slots = 2;  // flow control on every row
          c.ring_chunk = 1;
        }
        c.seed = 5000 + i;
        c.name = case_name(c);
        cases.push_back(c);
        ++i;
      }
    }
  }
  // Experts named in several slots, appended so that the cases above keep their draws: the
  // token goes to the rank once, recv_topk_idx rebases every slot and num_recv_per_expert
  // counts every slot (docs/design.md section 1), on the host and in the kernels alike.
  for (int R : {1, 2, 3, 4, 8}) {
    for (int T : {1, 13, 96}) {
      Case c;
      c.algorithm = algorithm;
      c.routing = Routing::kRepeats;
      c.shape.num_ranks = R;
      c.shape.num_tokens = T;
      c.shape.num_experts = (R + T) % 2 ? 2 * R : 8 * R;
      c.shape.num_topk = bit(0) ? 8 : 4;
      c.shape.dtype = bit(2) ? DType::kFP8E4M3 : DType::kBF16;
      c.shape.index_type = bit(3) ? IndexType::kInt32 : IndexType::kInt64;
      c.sms = 1 + (i * 7) % 16;
      c.options.copy_recv_x = bit(6);
      c.options.wait_num_recv = bit(8) || bit(9);
      c.options.caller_meta = bit(10);
      c.seed = 5000 + i;
      c.name = case_name(c);
      cases.push_back(c);
      ++i;
    }
  }
  return cases;
}

// Expert-major cases (flat only: the ring refuses the layout): every routing on every R, three of
// the four T per (R, routing), with dtype, index type, K, E, hidden, weights, apply_weights,
// alignment (1, 2, 4 or 32, in the Config or per call over another Config value), exact or
// worst-case, output modes, y (random or the received rows) and biases drawn from a hash of the
// case index.
std::vector<Case> make_expert_major_cases() {
  std::vector<Case> cases;
  int i = 0, combo = 0;
  auto bit = [&](int b) { return ((static_cast<uint32_t>(i) * 2654435761u) >> (8 + b)) & 1u; };
  constexpr int kTokens[] = {0, 1, 13, 96};
  constexpr int kAlignments[] = {1, 2, 4, 32};
  for (int R : {1, 2, 3, 4, 8}) {
    for (Routing routing : {Routing::kUniform, Routing::kSkewed, Routing::kAllToOne,
                            Routing::kOneRankEmpty, Routing::kWithHoles, Routing::kRepeats}) {
      for (int j = 0; j < 3; ++j, ++i) {
        Case c;
        c.routing = routing;
        c.shape.num_ranks = R;
        c.shape.num_tokens = kTokens[(combo + j) % 4];
        c.shape.num_experts = i % 6 == 1 ? 2 * R : 8 * R;
        c.shape.num_topk = i % 5 == 0 ? 2 : (bit(0) ? 8 : 4);
        c.shape.hidden = (i % 7 == 0) ? 7168 : (bit(1) ? 256 : 128);
        c.shape.dtype = bit(2) ? DType::kFP8E4M3 : DType::kBF16;
        c.shape.index_type = bit(3) ? IndexType::kInt32 : IndexType::kInt64;
        c.shape.with_weights = bit(4) || bit(5);
        c.sms = 1 + (i * 7) % 16;
        c.options.layout = RecvLayout::kExpertMajor;
        c.options.apply_weights = c.shape.with_weights && bit(14);
        c.options.copy_recv_x = bit(6);
        c.options.stage_y = bit(7);
        c.options.wait_num_recv = bit(8) || bit(9);
        c.options.caller_meta = bit(10);
        c.options.bias = static_cast<int>(bit(12) | (bit(13) << 1));
        c.options.y_is_recv_x = c.shape.dtype == DType::kBF16 && i % 9 == 4;
        const int alignment = kAlignments[(i + bit(11)) % 4];
        c.seed = 6000 + i;
        c.config_alignment = bit(15) ? 1 + static_cast<int>(c.seed % 3) : alignment;
        if (bit(15)) c.options.expert_alignment = alignment;  // over another Config value
        c.name = case_name(c);
        cases.push_back(c);
      }
      ++combo;
    }
  }
  return cases;
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

Config config_of(const Case& c) {
  Config cfg = testing::config_for(c.shape);
  cfg.algorithm = c.algorithm;
  cfg.dispatch_sms = c.sms;
  cfg.combine_sms = c.sms;
  cfg.ring_slots = c.ring_slots;
  cfg.ring_chunk = c.ring_chunk;
  cfg.expert_alignment = c.config_alignment ? c.config_alignment : 1 + c.seed % 3;
  if (expert_major(c)) {
    cfg.max_recv_rows = testing::expert_major_max_rows(
        c.shape, std::max(cfg.expert_alignment, c.options.expert_alignment));
  }
  return cfg;
}

void run_case(Backend backend, const Case& c) {
  const Config cfg = config_of(c);
  std::printf("case %s seed %llu\n", c.name.c_str(), static_cast<unsigned long long>(c.seed));
  const auto want =
      testing::run_cluster(Backend::kHost, cfg, c.shape, c.routing, c.seed, c.options, c.rounds);
  const auto got =
      testing::run_cluster(backend, cfg, c.shape, c.routing, c.seed, c.options, c.rounds);
  for (int round = 0; round < c.rounds; ++round) {
    for (int r = 0; r < c.shape.num_ranks; ++r) {
      const std::string diff = testing::first_difference(want[round][r], got[round][r]);
      ASSERT_EQ(diff, "") << "round " << round << " rank " << r;
    }
  }
}

class CudaConformance : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (testing::cuda_device_count() == 0) GTEST_SKIP() << "no GPU present: CUDA case skipped";
  }
};

TEST_P(CudaConformance, MatchesHostReference) { run_case(Backend::kCuda, GetParam()); }

INSTANTIATE_TEST_SUITE_P(Flat, CudaConformance, ::testing::ValuesIn(make_cases(Algorithm::kFlat)),
                         [](const auto& info) { return info.param.name; });
INSTANTIATE_TEST_SUITE_P(Ring, CudaConformance, ::testing::ValuesIn(make_cases(Algorithm::kRing)),
                         [](const auto& info) { return info.param.name; });
INSTANTIATE_TEST_SUITE_P(ExpertMajor, CudaConformance,
                         ::testing::ValuesIn(make_expert_major_cases()),
                         [](const auto& info) { return info.param.name; });

// The expert-major cases on the host reference alone, against the independent computation of
// docs/design.md section 24 (runs without a GPU): the reference, the harness and the case list
// agree with the contract before the CUDA cases compare against them.
TEST(HostExpertMajor, ConformanceCasesMatchIndependentCheck) {
  for (const Case& c : make_expert_major_cases()) {
    SCOPED_TRACE(c.name + " seed " + std::to_string(c.seed));
    const Config cfg = config_of(c);
    const auto outputs =
        testing::run_cluster(Backend::kHost, cfg, c.shape, c.routing, c.seed, c.options);
    ASSERT_EQ(testing::check_expert_major(c.shape, c.routing, c.seed, outputs[0], c.options, cfg),
              "");
  }
}

// Buffer reuse across many calls: fresh random routing and rows every round.
TEST(CudaConformanceRounds, HundredFlatRoundsOnFreshData) {
  if (testing::cuda_device_count() == 0) GTEST_SKIP() << "no GPU present";
  for (int R : {4, 8}) {
    Case c;
    c.shape.num_ranks = R;
    c.shape.num_tokens = 64;
    c.shape.num_experts = 4 * R;
    c.shape.num_topk = 4;
    c.shape.hidden = 512;
    c.rounds = 100;
    c.sms = 8;
    c.seed = 9000 + R;
    c.options.wait_num_recv = R == 8;
    c.name = case_name(c);
    run_case(Backend::kCuda, c);
  }
}

// The expert-major pool reuse across many calls: fresh routings with repeated experts, fresh
// rows every round, weights applied, worst-case sizes, alignment per call.
TEST(CudaConformanceRounds, HundredExpertMajorRoundsOnFreshData) {
  if (testing::cuda_device_count() == 0) GTEST_SKIP() << "no GPU present";
  Case c;
  c.routing = Routing::kRepeats;
  c.shape.num_ranks = 8;
  c.shape.num_tokens = 64;
  c.shape.num_experts = 32;
  c.shape.num_topk = 4;
  c.shape.hidden = 512;
  c.rounds = 100;
  c.sms = 8;
  c.seed = 9200;
  c.config_alignment = 1;
  c.options.layout = RecvLayout::kExpertMajor;
  c.options.apply_weights = true;
  c.options.expert_alignment = 4;
  c.options.wait_num_recv = false;
  c.name = case_name(c);
  run_case(Backend::kCuda, c);
}

TEST(CudaConformanceRounds, HundredRingRoundsOnFreshData) {
  if (testing::cuda_device_count() == 0) GTEST_SKIP() << "no GPU present";
  for (int slots : {2, 16}) {
    Case c;
    c.algorithm = Algorithm::kRing;
    c.shape.num_ranks = 8;
    c.shape.num_tokens = 64;
    c.shape.num_experts = 32;
    c.shape.num_topk = 4;
    c.shape.hidden = 512;
    c.shape.dtype = slots == 2 ? DType::kFP8E4M3 : DType::kBF16;
    c.rounds = 100;
    c.sms = 6;
    c.ring_slots = slots;
    c.ring_chunk = slots == 2 ? 1 : 5;
    c.seed = 9100 + slots;
    c.name = case_name(c);
    run_case(Backend::kCuda, c);
  }
}

}  // namespace
}  // namespace epcomm
