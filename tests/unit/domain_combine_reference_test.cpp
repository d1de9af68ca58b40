// The host reference's combine with several NVLink domains (DESIGN section 11): each domain's
// rows summed in fp32 in ascending rank order and rounded to bf16, the partials added in fp32 in
// ascending domain order, then rounded once more; one domain keeps the single rounding. Checked
// against a model written here from that rule, on rows spread wide enough that the roundings
// change bits. The expert-major combine follows the same rule over each domain's pairs
// (docs/design.md section 24), checked against the independent model of that layout.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "bf16_bits.hpp"
#include "epcomm/epcomm.hpp"
#include "harness.hpp"
#include "independent_check.hpp"

namespace epcomm {
namespace {

using testing::bf16_of;
using testing::float_of;

constexpr int R = 4, T = 3, H = 16, K = 4;

// Rank r's token t goes to the experts (one per rank) of ids[t]; -1: nowhere.
const int64_t kIds[T][K] = {{0, 1, 2, 3}, {3, 1, -1, -1}, {2, -1, -1, -1}};

struct RankResult {
  std::vector<RecvSource> src;     // the rows this rank received
  std::vector<uint16_t> y;         // what its "expert" returned for them
  std::vector<uint16_t> combined;  // [T][H]
};

// y of rank d, row j, element h: wide-spread bf16 values, fixed by (d, j, h).
uint16_t y_value(int d, int j, int h) {
  testing::Rng rng(1000003ull * d + 7919ull * j + h + 17);
  return testing::random_wide_bf16(rng);
}

std::vector<RankResult> run(int ranks_per_domain) {
  Config cfg;
  cfg.num_experts = R;
  cfg.hidden = H;
  cfg.max_tokens_per_rank = T;
  cfg.max_topk = K;
  cfg.ranks_per_domain = ranks_per_domain;
  cfg.transport = Transport::kNvshmem;  // the host reference ignores it; domains < R need it
  const auto bs = testing::shared_bootstraps(R, 10000);
  std::vector<RankResult> results(R);
  testing::run_on_ranks(R, [&](int r) {
    auto comm = Communicator::create(bs[r], cfg, Backend::kHost);
    std::vector<uint16_t> x(static_cast<size_t>(T) * H, bf16_of(1.0f));
    std::vector<int64_t> ids(&kIds[0][0], &kIds[0][0] + T * K);
    DispatchInputs in;
    in.x = x.data();
    in.topk_idx = ids.data();
    in.num_tokens = T;
    in.num_topk = K;
    const DispatchResult res = comm->dispatch(in);
    RankResult& mine = results[r];
    mine.src.assign(res.recv_src, res.recv_src + res.num_recv);
    mine.y.resize(static_cast<size_t>(res.num_recv) * H);
    for (int j = 0; j < res.num_recv; ++j) {
      for (int h = 0; h < H; ++h) mine.y[static_cast<size_t>(j) * H + h] = y_value(r, j, h);
    }
    mine.combined.assign(static_cast<size_t>(T) * H, 0xffff);
    comm->combine(mine.y.data(), res.handle, mine.combined.data());
  });
  return results;
}

// The rule, from the received rows: for token t of rank s, the row each rank d holds for it.
std::vector<uint16_t> model(const std::vector<RankResult>& got, int s, int L) {
  std::vector<uint16_t> out(static_cast<size_t>(T) * H);
  for (int t = 0; t < T; ++t) {
    for (int h = 0; h < H; ++h) {
      float total = 0.0f;
      for (int first = 0; first < R; first += L) {
        float partial = 0.0f;
        bool any = false;
        for (int d = first; d < first + L; ++d) {
          for (size_t j = 0; j < got[d].src.size(); ++j) {
            if (got[d].src[j].rank != s || got[d].src[j].token != t) continue;
            partial += float_of(got[d].y[j * H + h]);
            any = true;
          }
        }
        if (any) total += L == R ? partial : float_of(bf16_of(partial));
      }
      out[static_cast<size_t>(t) * H + h] = bf16_of(total);
    }
  }
  return out;
}

TEST(HostReference, CombineAddsDomainPartialsInAscendingDomainOrder) {
  std::vector<std::vector<uint16_t>> one_domain;
  for (int L : {4, 2, 1}) {
    SCOPED_TRACE("ranks_per_domain = " + std::to_string(L));
    const auto got = run(L);
    for (int s = 0; s < R; ++s) {
      EXPECT_EQ(got[s].combined, model(got, s, L)) << "rank " << s;
      if (L == 4) one_domain.push_back(got[s].combined);
    }
    if (L == 4) continue;
    bool differs = false;
    for (int s = 0; s < R; ++s) differs = differs || got[s].combined != one_domain[s];
    if (L == 2) {
      // The roundings of the partials must show somewhere, or this test could not tell them.
      EXPECT_TRUE(differs) << "domains of 2 gave the one-domain bits everywhere";
    } else {
      // Domains of one rank: each partial is one bf16 row, rounded exactly, so the sum in
      // ascending order is the one-domain sum.
      EXPECT_FALSE(differs) << "domains of 1 changed the one-domain bits";
    }
  }
}

// Expert-major: per domain the token's pairs in slot order (weights applied or not), rounded,
// the partials in ascending domain order; every (R, L) split on fresh random rounds.
TEST(HostReference, ExpertMajorCombineAddsDomainPartialsInAscendingDomainOrder) {
  for (int R : {4, 8}) {
    const uint64_t seed = 4100 + R;  // the same routing and rows for every split of R
    for (bool apply_weights : {true, false}) {
      testing::Shape shape;
      shape.num_ranks = R;
      shape.num_tokens = 24;
      shape.hidden = 64;
      shape.num_experts = 4 * R;
      shape.num_topk = 6;
      testing::RoundOptions options;
      options.layout = RecvLayout::kExpertMajor;
      options.apply_weights = apply_weights;
      options.bias = 1;
      std::vector<testing::RankOutputs> one_domain;
      for (int L = R; L >= 1; L /= 2) {
        SCOPED_TRACE("R = " + std::to_string(R) + ", ranks_per_domain = " + std::to_string(L) +
                     (apply_weights ? ", weights applied" : ""));
        Config cfg = testing::config_for(shape);
        cfg.max_recv_rows = testing::expert_major_max_rows(shape, cfg.expert_alignment);
        cfg.ranks_per_domain = L;
        cfg.transport = Transport::kNvshmem;  // the host reference ignores it; domains < R need it
        const auto got = testing::run_cluster(Backend::kHost, cfg, shape,
                                              testing::Routing::kRepeats, seed, options)[0];
        ASSERT_EQ(
            testing::check_expert_major(shape, testing::Routing::kRepeats, seed, got, options, cfg),
            "");
        if (L == R) {
          one_domain = got;
          continue;
        }
        bool differs = false;
        for (int r = 0; r < R; ++r) differs = differs || got[r].combined != one_domain[r].combined;
        // The partials' roundings must show somewhere, or this test could not tell them.
        EXPECT_TRUE(differs) << "domains gave the one-domain bits everywhere";
      }
    }
  }
}

// The bench's check of a token-major combine with y = recv_x (each token's x times the ranks it
// reached, per domain rounded across domains) agrees with the host reference in every split,
// and with domains of 4 it tells the domain order from the one-domain sum somewhere.
TEST(HostReference, IndependentCheckOfTokenMajorCombineKnowsTheDomains) {
  constexpr int kRanks = 8;
  testing::Shape shape;
  shape.num_ranks = kRanks;
  shape.num_tokens = 40;
  shape.hidden = 64;
  shape.num_experts = 4 * kRanks;
  shape.num_topk = 8;
  testing::RoundOptions options;
  options.y_is_recv_x = true;
  std::vector<testing::RankOutputs> one_domain;
  for (int L = kRanks; L >= 1; L /= 2) {
    SCOPED_TRACE("ranks_per_domain = " + std::to_string(L));
    Config cfg = testing::config_for(shape);
    cfg.ranks_per_domain = L;
    cfg.transport = Transport::kNvshmem;  // the host reference ignores it; domains < R need it
    const auto got = testing::run_cluster(Backend::kHost, cfg, shape, testing::Routing::kUniform,
                                          77, options)[0];
    for (int r = 0; r < kRanks; ++r) {
      EXPECT_EQ(testing::check_rank_independently(shape, testing::Routing::kUniform, 77, r, got[r],
                                                  true, L),
                "");
    }
    if (L == kRanks) {
      one_domain = got;
      continue;
    }
    bool differs = false;
    for (int r = 0; r < kRanks; ++r) differs = differs || got[r].combined != one_domain[r].combined;
    // x times 1 or 2 is exact in bf16, so only domains of 3 or more ranks round.
    if (L == 4) EXPECT_TRUE(differs) << "domains gave the one-domain bits everywhere";
  }
}

}  // namespace
}  // namespace epcomm
