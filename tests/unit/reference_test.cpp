// The host reference backend against hand-computed cases and independent computations.
#include <gtest/gtest.h>

#include <cstring>

#include "epcomm/epcomm.hpp"
#include "bf16_bits.hpp"
#include "harness.hpp"
#include "independent_check.hpp"

namespace epcomm {
namespace {

using testing::RankData;
using testing::Routing;
using testing::Shape;

using testing::bf16_of;
using testing::float_of;

// R=2, E=4 (experts 0,1 on rank 0; 2,3 on rank 1), T=3, K=2, H=8, bf16, int64 ids.
struct HandCase {
  int64_t topk[2][3][2] = {{{0, 3}, {1, -1}, {3, 2}}, {{-1, -1}, {2, 0}, {1, 3}}};
  float weights[2][3][2] = {{{0.5f, 0.25f}, {1.f, 0.f}, {0.125f, 0.75f}},
                            {{9.f, 9.f}, {0.5f, 0.5f}, {0.25f, 2.f}}};
  uint16_t x[2][3][8];
  HandCase() {
    for (int r = 0; r < 2; ++r)
      for (int t = 0; t < 3; ++t)
        for (int h = 0; h < 8; ++h) x[r][t][h] = bf16_of(1.f + r * 4 + t + 0.5f * h);
  }
};

TEST(HostReference, HandComputedTwoRanks) {
  HandCase c;
  Config cfg;
  cfg.num_experts = 4;
  cfg.hidden = 8;
  cfg.max_tokens_per_rank = 3;
  cfg.max_topk = 2;
  cfg.expert_alignment = 2;
  const auto bs = testing::shared_bootstraps(2, 30000);
  testing::run_on_ranks(2, [&](int r) {
    auto comm = Communicator::create(bs[r], cfg, Backend::kHost);
    int per_rank[2], per_expert[4];
    bool in_rank[3][2];
    comm->get_dispatch_layout(c.topk[r], 3, 2, {per_rank, per_expert, &in_rank[0][0]});
    if (r == 0) {
      EXPECT_EQ(per_rank[0], 2);
      EXPECT_EQ(per_rank[1], 2);
      EXPECT_EQ((std::vector<int>(per_expert, per_expert + 4)), (std::vector<int>{1, 1, 1, 2}));
      EXPECT_TRUE(in_rank[0][0] && in_rank[0][1] && in_rank[1][0] && !in_rank[1][1]);
      EXPECT_TRUE(!in_rank[2][0] && in_rank[2][1]);
    } else {
      EXPECT_EQ(per_rank[0], 2);
      EXPECT_EQ(per_rank[1], 2);
      EXPECT_EQ((std::vector<int>(per_expert, per_expert + 4)), (std::vector<int>{1, 1, 1, 1}));
      EXPECT_TRUE(!in_rank[0][0] && !in_rank[0][1]);
    }

    DispatchInputs in;
    in.x = c.x[r];
    in.topk_idx = c.topk[r];
    in.topk_weights = &c.weights[r][0][0];
    in.num_tokens = 3;
    in.num_topk = 2;
    DispatchResult res = comm->dispatch(in);
    ASSERT_EQ(res.num_recv, 4);
    ASSERT_EQ(res.handle.num_recv(), 4);
    const auto* src = res.recv_src;
    const auto* ids = static_cast<const int64_t*>(res.recv_topk_idx);
    const float* w = res.recv_topk_weights;
    const auto* rows = static_cast<const uint16_t*>(res.recv_x);
    // Expected rows: (source rank, token, local ids, weights).
    struct Row { int s, t; int64_t id[2]; float w[2]; };
    const Row rank0[4] = {{0, 0, {0, -1}, {0.5f, 0}}, {0, 1, {1, -1}, {1.f, 0}},
                          {1, 1, {-1, 0}, {0, 0.5f}}, {1, 2, {1, -1}, {0.25f, 0}}};
    const Row rank1[4] = {{0, 0, {-1, 1}, {0, 0.25f}}, {0, 2, {1, 0}, {0.125f, 0.75f}},
                          {1, 1, {0, -1}, {0.5f, 0}}, {1, 2, {-1, 1}, {0, 2.f}}};
    const Row* want = r == 0 ? rank0 : rank1;
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(src[i].rank, want[i].s) << "row " << i;
      EXPECT_EQ(src[i].token, want[i].t) << "row " << i;
      for (int k = 0; k < 2; ++k) {
        EXPECT_EQ(ids[i * 2 + k], want[i].id[k]) << "row " << i << " k " << k;
        EXPECT_EQ(w[i * 2 + k], want[i].w[k]) << "row " << i << " k " << k;
      }
      EXPECT_EQ(std::memcmp(rows + i * 8, c.x[want[i].s][want[i].t], 16), 0) << "row " << i;
    }
    // Per-expert counts 2,2 (rank 0) and 2,3 (rank 1), rounded up to a multiple of 2.
    EXPECT_EQ(res.num_recv_per_expert[0], r == 0 ? 2 : 2);
    EXPECT_EQ(res.num_recv_per_expert[1], r == 0 ? 2 : 4);

    // Combine with y = recv_x in place: each token comes back times the ranks it reached.
    uint16_t out[3][8];
    std::memset(out, 0xA5, sizeof(out));
    comm->combine(comm->combine_input(), res.handle, out);
    const int reach[2][3] = {{2, 1, 1}, {0, 2, 2}};
    for (int t = 0; t < 3; ++t)
      for (int h = 0; h < 8; ++h)
        EXPECT_EQ(out[t][h], bf16_of(float_of(c.x[r][t][h]) * reach[r][t])) << t << "," << h;
  });
}

// Biases join the fp32 sum after the rows and the whole is rounded once: rows 1 and 2^-8 plus
// a bias of 2^-8 give 1 + 2^-7, where rounding the rows first (to 1, a tie to even) would give
// 1. A token sent nowhere comes back as bf16(bias + bias2).
TEST(HostReference, CombineAddsBiasesBeforeTheOneRounding) {
  Config cfg;
  cfg.num_experts = 2;  // expert 0 on rank 0, expert 1 on rank 1
  cfg.hidden = 8;
  cfg.max_tokens_per_rank = 2;
  cfg.max_topk = 2;
  const auto bs = testing::shared_bootstraps(2, 30000);
  testing::run_on_ranks(2, [&](int r) {
    auto comm = Communicator::create(bs[r], cfg, Backend::kHost);
    const int64_t topk[2][2][2] = {{{0, 1}, {-1, -1}}, {{-1, -1}, {-1, -1}}};
    uint16_t x[2][8], bias[2][8], bias2[2][8], out[2][8];
    for (int h = 0; h < 8; ++h) {
      x[0][h] = x[1][h] = bf16_of(5.f);
      bias[0][h] = bf16_of(0.00390625f);  // 2^-8
      bias[1][h] = bf16_of(3.f);
      bias2[0][h] = bf16_of(-0.0078125f);  // -2^-7
      bias2[1][h] = bf16_of(0.5f);
    }
    for (bool both : {false, true}) {
      DispatchInputs in;
      in.x = x;
      in.topk_idx = topk[r];
      in.num_tokens = 2;
      in.num_topk = 2;
      DispatchResult res = comm->dispatch(in);
      ASSERT_EQ(res.num_recv, r == 0 ? 1 : 1);
      auto* y = static_cast<uint16_t*>(comm->combine_input());
      for (int h = 0; h < 8; ++h) y[h] = bf16_of(r == 0 ? 1.f : 0.00390625f);
      std::memset(out, 0xA5, sizeof(out));
      CombineOptions options;
      options.bias = bias;
      if (both) options.bias2 = bias2;
      comm->combine(y, res.handle, out, options);
      if (r != 0) continue;
      for (int h = 0; h < 8; ++h) {
        EXPECT_EQ(out[0][h], bf16_of(both ? 1.f : 1.0078125f)) << "both " << both << " h " << h;
        EXPECT_EQ(out[1][h], bf16_of(both ? 3.5f : 3.f)) << "both " << both << " h " << h;
      }
    }
  });
}

// The host backend against an independent computation from the generated inputs.
void check_against_inputs(const Shape& shape, Routing routing, uint64_t seed,
                          const testing::RoundOptions& options) {
  const Config cfg = testing::config_for(shape);
  auto outputs = testing::run_cluster(Backend::kHost, cfg, shape, routing, seed, options);
  const std::string error = testing::check_independently(shape, routing, seed, outputs[0],
                                                          options.y_is_recv_x);
  ASSERT_EQ(error, "");
}

TEST(HostReference, RandomRoutingsMatchIndependentComputation) {
  testing::RoundOptions options;
  options.y_is_recv_x = true;
  uint64_t seed = 1000;
  for (Routing routing : {Routing::kUniform, Routing::kSkewed, Routing::kAllToOne,
                          Routing::kOneRankEmpty, Routing::kWithHoles, Routing::kRepeats}) {
    for (int R : {1, 2, 3, 4}) {
      for (int T : {0, 1, 37}) {
        Shape shape;
        shape.num_ranks = R;
        shape.num_tokens = T;
        shape.hidden = 64;
        shape.num_experts = 4 * R;
        shape.num_topk = 3;
        SCOPED_TRACE(shape.name() + " " + testing::to_string(routing) + " seed " +
                     std::to_string(seed));
        check_against_inputs(shape, routing, seed++, options);
      }
    }
  }
}

TEST(HostReference, Fp8Int32AndStagingVariants) {
  Shape shape;
  shape.num_ranks = 3;
  shape.num_tokens = 20;
  shape.hidden = 256;
  shape.num_experts = 12;
  shape.num_topk = 4;
  shape.dtype = DType::kFP8E4M3;
  shape.index_type = IndexType::kInt32;
  shape.with_weights = false;
  testing::RoundOptions options;
  options.copy_recv_x = true;
  options.stage_y = true;
  options.caller_meta = false;
  check_against_inputs(shape, Routing::kWithHoles, 77, options);
}

}  // namespace
}  // namespace epcomm
