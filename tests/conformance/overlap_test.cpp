// Calls issued back to back with no host synchronisation between them (DESIGN section 13),
// on the CUDA backend, byte for byte against the host reference running the same schedule:
// fresh and cached dispatches, repeated and zero-copy combines, low-latency pairs between.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "epcomm/epcomm.hpp"
#include "overlap.hpp"

namespace epcomm {
namespace {

struct OverlapCase {
  std::string name;
  int num_ranks = 4;
  Algorithm algorithm = Algorithm::kFlat;
  DType dtype = DType::kBF16;
  IndexType index_type = IndexType::kInt64;
  int hidden = 256;
  int rounds = 60;
  uint64_t sequence_start = 0;
  uint64_t seed = 1;
};

std::vector<OverlapCase> overlap_cases() {
  constexpr uint64_t kBelowWrap = (1ull << 32) - 3;  // crosses 2^32 - 1 (tag wrap) and 2^32
  std::vector<OverlapCase> cases;
  cases.push_back(
      {"FlatBf16R8", 8, Algorithm::kFlat, DType::kBF16, IndexType::kInt64, 256, 60, 0, 11});
  cases.push_back(
      {"FlatFp8Int32R4", 4, Algorithm::kFlat, DType::kFP8E4M3, IndexType::kInt32, 256, 60, 0, 12});
  cases.push_back(
      {"RingBf16R4", 4, Algorithm::kRing, DType::kBF16, IndexType::kInt64, 256, 60, 0, 13});
  cases.push_back(
      {"RingFp8R8", 8, Algorithm::kRing, DType::kFP8E4M3, IndexType::kInt64, 128, 60, 0, 14});
  cases.push_back({"FlatAcrossCounterWrapR4", 4, Algorithm::kFlat, DType::kBF16, IndexType::kInt64,
                   128, 12, kBelowWrap, 15});
  cases.push_back({"RingAcrossCounterWrapR2", 2, Algorithm::kRing, DType::kFP8E4M3,
                   IndexType::kInt32, 128, 12, kBelowWrap, 16});
  return cases;
}

class CudaOverlap : public ::testing::TestWithParam<OverlapCase> {
 protected:
  void SetUp() override {
    if (testing::cuda_device_count() == 0) GTEST_SKIP() << "no GPU present: CUDA case skipped";
  }
};

TEST_P(CudaOverlap, BackToBackCallsMatchHostReference) {
  const OverlapCase& c = GetParam();
  const Config cfg = testing::overlap_config(c.num_ranks, c.algorithm, c.dtype, c.index_type,
                                             c.hidden, c.sequence_start);
  testing::OverlapOptions options;
  options.rounds = c.rounds;
  options.seed = c.seed;
  const auto want = testing::run_overlap_cluster(Backend::kHost, cfg, c.num_ranks, options);
  const auto got = testing::run_overlap_cluster(Backend::kCuda, cfg, c.num_ranks, options);
  for (int r = 0; r < c.num_ranks; ++r) {
    EXPECT_GT(got[r].calls, c.rounds) << "rank " << r;
    EXPECT_EQ(testing::first_difference(want[r], got[r]), "") << "rank " << r << " seed " << c.seed;
  }
}

INSTANTIATE_TEST_SUITE_P(Schedules, CudaOverlap, ::testing::ValuesIn(overlap_cases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace epcomm
