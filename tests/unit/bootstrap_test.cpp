// The in-process bootstrap gathers, barriers, and names the rank that never came.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "epcomm/epcomm.hpp"
#include "harness.hpp"

namespace epcomm {
namespace {

TEST(InProcessBootstrap, AllGatherOrdersByRank) {
  for (int n : {1, 2, 5, 8}) {
    auto bootstraps = make_in_process_bootstraps(n);
    testing::run_on_ranks(n, [&](int r) {
      Bootstrap& b = *bootstraps[r];
      EXPECT_EQ(b.rank(), r);
      EXPECT_EQ(b.size(), n);
      for (int round = 0; round < 20; ++round) {
        const int64_t mine[2] = {r * 100 + round, -r};
        std::vector<int64_t> all(2 * n);
        b.allGather(mine, all.data(), sizeof(mine));
        for (int s = 0; s < n; ++s) {
          ASSERT_EQ(all[2 * s], s * 100 + round);
          ASSERT_EQ(all[2 * s + 1], -s);
        }
      }
    });
  }
}

TEST(InProcessBootstrap, BarrierHoldsEveryoneBack) {
  const int n = 4;
  auto bootstraps = make_in_process_bootstraps(n);
  std::atomic<int> arrived{0};
  testing::run_on_ranks(n, [&](int r) {
    for (int round = 1; round <= 10; ++round) {
      arrived.fetch_add(1);
      bootstraps[r]->barrier();
      EXPECT_GE(arrived.load(), round * n);
      bootstraps[r]->barrier();
    }
  });
}

TEST(InProcessBootstrap, TimeoutNamesTheMissingRank) {
  auto bootstraps = make_in_process_bootstraps(3, 200);
  testing::run_on_ranks(2, [&](int r) {  // rank 2 never joins
    try {
      bootstraps[r]->barrier();
      ADD_FAILURE() << "barrier returned without rank 2";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kTimeout);
      EXPECT_NE(std::string(e.what()).find("rank(s) 2"), std::string::npos) << e.what();
    }
  });
}

TEST(InProcessBootstrap, RejectsMismatchedSizes) {
  auto bootstraps = make_in_process_bootstraps(2, 500);
  std::atomic<int> errors{0};
  testing::run_on_ranks(2, [&](int r) {
    std::vector<char> send(r + 1), recv(2 * (r + 1));
    try {
      bootstraps[r]->allGather(send.data(), recv.data(), send.size());
    } catch (const Error&) {
      errors.fetch_add(1);
    }
  });
  EXPECT_GE(errors.load(), 1);
}

}  // namespace
}  // namespace epcomm
