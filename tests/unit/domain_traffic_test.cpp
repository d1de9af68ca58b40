// The bytes crossing NVLink domains from a routing, against counts worked out by hand.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "domain_traffic.hpp"

namespace epcomm {
namespace {

// Rank 0 of 4 (2 experts each), K = 4: token 0 -> ranks 0, 1, 2, 2; token 1 -> ranks 2, 3, and
// expert 6 named twice; token 2 -> ranks 0 and 1 only.
testing::RankData hand_routing() {
  const std::vector<int64_t> ids = {0, 2, 4, 5, 4, 6, -1, 6, 1, 3, -1, -1};
  testing::RankData d;
  d.num_tokens = 3;
  d.num_topk = 4;
  d.topk_idx.resize(ids.size() * 8);
  std::memcpy(d.topk_idx.data(), ids.data(), d.topk_idx.size());
  return d;
}

testing::DomainTraffic traffic(int ranks_per_domain, RecvLayout layout) {
  testing::TrafficShape shape;
  shape.num_ranks = 4;
  shape.experts_per_rank = 2;
  shape.ranks_per_domain = ranks_per_domain;
  shape.hidden = 8;  // a combine row: 16 bytes
  shape.layout = layout;
  shape.row_bytes = 100;
  shape.meta_bytes = 10;
  return testing::domain_traffic(hand_routing(), 0, shape);
}

void expect(const testing::DomainTraffic& got, double dispatch, double direct_dispatch,
            double combine, double direct_combine) {
  EXPECT_EQ(got.dispatch_bytes, dispatch);
  EXPECT_EQ(got.direct_dispatch_bytes, direct_dispatch);
  EXPECT_EQ(got.combine_bytes, combine);
  EXPECT_EQ(got.direct_combine_bytes, direct_combine);
}

TEST(DomainTraffic, TwoDomainsOfTwo) {
  // Tokens 0 and 1 reach the other domain: rank 2 / ranks 2, 3 (token-major), pairs 4, 5 /
  // 4, 6 (expert-major).
  SCOPED_TRACE("token-major");
  expect(traffic(2, RecvLayout::kTokenMajor), 2 * 110, 3 * 110, 2 * 16, 3 * 16);
  SCOPED_TRACE("expert-major");
  expect(traffic(2, RecvLayout::kExpertMajor), 2 * 120, 4 * 110, 2 * 16, 4 * 16);
}

TEST(DomainTraffic, OneDomainMovesNothingAcross) {
  expect(traffic(4, RecvLayout::kTokenMajor), 0, 0, 0, 0);
  expect(traffic(4, RecvLayout::kExpertMajor), 0, 0, 0, 0);
}

TEST(DomainTraffic, DomainsOfOneRankAreDirect) {
  // Token-major: 5 (token, remote rank) crossings either way. Expert-major: rank 2 holds two
  // pairs of token 0, which cross as one row with two meta rows.
  expect(traffic(1, RecvLayout::kTokenMajor), 5 * 110, 5 * 110, 5 * 16, 5 * 16);
  expect(traffic(1, RecvLayout::kExpertMajor), 4 * 110 + 120, 6 * 110, 5 * 16, 6 * 16);
}

}  // namespace
}  // namespace epcomm
