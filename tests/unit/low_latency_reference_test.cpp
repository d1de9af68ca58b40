// The host reference of the low-latency mode against a hand-computed case, a model written
// here from the contract (its own loops, no shared code), and an fp8 e4m3 encoder of its own.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "bf16_bits.hpp"
#include "epcomm/epcomm.hpp"
#include "harness.hpp"
#include "ll_harness.hpp"

namespace epcomm {
namespace {

using testing::LowLatencyRankData;
using testing::LowLatencyRankOutputs;
using testing::LowLatencyRoundOptions;
using testing::LowLatencyShape;
using testing::Routing;

using testing::bf16_of;
using testing::float_of;

// e4m3 by table: decode the 127 finite non-negative codes, take the nearest one to |v| (ties to
// the even code, i.e. even mantissa), then the sign. Nothing beyond 448 exists in the table, so
// saturation falls out of "nearest finite".
class E4m3 {
 public:
  E4m3() {
    for (int c = 0; c <= 0x7e; ++c) {
      const int exponent = c >> 3, mantissa = c & 7;
      value_[c] =
          exponent == 0 ? std::ldexp(mantissa, -9) : std::ldexp(1.0 + mantissa / 8.0, exponent - 7);
    }
  }
  uint8_t encode(float v) const {
    const double a = std::fabs(static_cast<double>(v));
    int best = 0;
    for (int c = 1; c <= 0x7e; ++c) {
      const double d = std::fabs(value_[c] - a), best_d = std::fabs(value_[best] - a);
      if (d < best_d || (d == best_d && c % 2 == 0)) best = c;
    }
    return static_cast<uint8_t>((std::signbit(v) ? 0x80 : 0) | best);
  }
  double decode(uint8_t code) const { return (code & 0x80 ? -1 : 1) * value_[code & 0x7f]; }

 private:
  double value_[0x7f];
};

const E4m3& e4m3() {
  static const E4m3 table;
  return table;
}

// The contract's cast of one 128-element block, step by step in fp32.
float cast_block(const uint16_t* x, uint8_t* q) {
  float amax = 0.0f;
  for (int i = 0; i < kFp8ScaleBlock; ++i) amax = std::max(amax, std::fabs(float_of(x[i])));
  const float a = std::max(amax, 1e-4f);
  const float inv = 448.0f / a;
  for (int i = 0; i < kFp8ScaleBlock; ++i) {
    const float scaled = float_of(x[i]) * inv;
    q[i] = e4m3().encode(scaled);
  }
  return a / 448.0f;
}

// The round_scale cast, from the contract in its own terms: the scale is the least power of two
// at or above a * (1 / 448) (the fp32 product), found with a double log2 instead of bits.
float cast_block_pow2(const uint16_t* x, uint8_t* q) {
  float amax = 0.0f;
  for (int i = 0; i < kFp8ScaleBlock; ++i) amax = std::max(amax, std::fabs(float_of(x[i])));
  const float a = std::max(amax, 1e-4f);
  const float wanted = a * (1.0f / 448.0f);
  const int e = static_cast<int>(std::ceil(std::log2(static_cast<double>(wanted))));
  const float inv = std::ldexp(1.0f, -e);
  for (int i = 0; i < kFp8ScaleBlock; ++i) q[i] = e4m3().encode(float_of(x[i]) * inv);
  return std::ldexp(1.0f, e);
}

// The scale in the format the shape asks for: fp32 bytes, or the UE8M0 code 127 + log2(scale).
void append_scale(const LowLatencyShape& s, float scale, std::vector<unsigned char>& out) {
  if (s.use_ue8m0()) {
    int exponent = 0;
    std::frexp(scale, &exponent);  // scale = 0.5 * 2^exponent
    out.push_back(static_cast<unsigned char>(127 + exponent - 1));
    return;
  }
  const auto* sb = reinterpret_cast<const unsigned char*>(&scale);
  out.insert(out.end(), sb, sb + 4);
}

TEST(LowLatencyE4m3Model, KnownCodes) {
  const E4m3& t = e4m3();
  EXPECT_EQ(t.encode(1.0f), 0x38);
  EXPECT_EQ(t.encode(-1.0f), 0xb8);
  EXPECT_EQ(t.encode(448.0f), 0x7e);
  EXPECT_EQ(t.encode(464.0f), 0x7e);  // the midpoint to 480 (not finite) saturates
  EXPECT_EQ(t.encode(1e9f), 0x7e);
  EXPECT_EQ(t.encode(-1e9f), 0xfe);
  EXPECT_EQ(t.encode(1.0625f), 0x38);               // tie between 1.0 (0x38) and 1.125 (0x39): even
  EXPECT_EQ(t.encode(1.1875f), 0x3a);               // tie between 1.125 and 1.25 (0x3a): even
  EXPECT_EQ(t.encode(std::ldexp(1.0f, -9)), 0x01);  // smallest subnormal
  EXPECT_EQ(t.encode(std::ldexp(1.0f, -10)), 0x00);  // tie with zero: even
  EXPECT_EQ(t.encode(std::ldexp(3.0f, -10)), 0x02);  // tie between codes 1 and 2
  EXPECT_EQ(t.encode(-0.0f), 0x80);
  EXPECT_EQ(t.encode(-1e-7f), 0x80);
  EXPECT_EQ(t.decode(0x08), std::ldexp(1.0, -6));  // smallest normal
}

// The expected outputs of one pair on every rank, from every rank's inputs and expert outputs.
std::vector<LowLatencyRankOutputs> model(const LowLatencyShape& s,
                                         const std::vector<LowLatencyRankData>& in,
                                         const std::vector<std::vector<uint16_t>>& y) {
  const int R = s.num_ranks, Le = s.num_experts / R, H = s.hidden, K = s.num_topk;
  const int rows_per_expert = R * s.max_tokens;
  auto expert_of = [&](int src, int t, int k) -> int64_t {
    const size_t i = static_cast<size_t>(t) * K + k;
    if (s.index_type == IndexType::kInt64) {
      int64_t v;
      std::memcpy(&v, in[src].topk_idx.data() + i * 8, 8);
      return v;
    }
    int32_t v;
    std::memcpy(&v, in[src].topk_idx.data() + i * 4, 4);
    return v;
  };
  // rows[e]: the (source, token, first slot) list of expert e, in contract order.
  std::vector<std::vector<LowLatencySource>> rows(s.num_experts);
  std::vector<LowLatencyRankOutputs> out(R);
  for (int d = 0; d < R; ++d) {
    out[d].recv_count.assign(Le, 0);
    out[d].layout_range.assign(static_cast<size_t>(Le) * R * 2, 0);
    for (int le = 0; le < Le; ++le) {
      const int e = d * Le + le;
      for (int src = 0; src < R; ++src) {
        out[d].layout_range[(le * R + src) * 2] = static_cast<int>(rows[e].size());
        const int tokens = s.masks(d, src) ? 0 : in[src].num_tokens;  // cut off: nothing comes
        for (int t = 0; t < tokens; ++t) {
          for (int k = 0; k < K; ++k) {
            if (expert_of(src, t, k) == e) {
              rows[e].push_back({src, t, k});
              break;
            }
          }
        }
        out[d].layout_range[(le * R + src) * 2 + 1] =
            static_cast<int>(rows[e].size()) - out[d].layout_range[(le * R + src) * 2];
      }
      out[d].recv_count[le] = static_cast<int>(rows[e].size());
      for (const LowLatencySource& row : rows[e]) {
        const uint16_t* x = in[row.rank].x.data() + static_cast<size_t>(row.token) * H;
        auto& src_bytes = out[d].recv_src;
        const auto* p = reinterpret_cast<const unsigned char*>(&row);
        src_bytes.insert(src_bytes.end(), p, p + sizeof(row));
        if (!s.use_fp8) {
          const auto* xb = reinterpret_cast<const unsigned char*>(x);
          out[d].recv_x.insert(out[d].recv_x.end(), xb, xb + H * 2);
          continue;
        }
        for (int g = 0; g < H / kFp8ScaleBlock; ++g) {
          uint8_t q[kFp8ScaleBlock];
          const float scale = s.round_scale() ? cast_block_pow2(x + g * kFp8ScaleBlock, q)
                                              : cast_block(x + g * kFp8ScaleBlock, q);
          out[d].recv_x.insert(out[d].recv_x.end(), q, q + kFp8ScaleBlock);
          append_scale(s, scale, out[d].recv_scales);
        }
      }
    }
  }
  for (int src = 0; src < R; ++src) {
    const int T = in[src].num_tokens;
    out[src].combined.resize(static_cast<size_t>(T) * H * 2);
    for (int t = 0; t < T; ++t) {
      std::vector<float> acc(H, 0.0f);
      for (int k = 0; k < K; ++k) {
        const int64_t e = expert_of(src, t, k);
        if (e < 0) continue;
        const int d = static_cast<int>(e / Le), le = static_cast<int>(e % Le);
        if (s.masks(src, d)) continue;  // a cut-off rank's experts add nothing
        int row = 0;  // the token's row at its expert, whichever slot first named it
        while (rows[e][row].rank != src || rows[e][row].token != t) ++row;
        const uint16_t* yrow = y[d].data() + (static_cast<size_t>(le) * rows_per_expert + row) * H;
        const float w = in[src].topk_weights[static_cast<size_t>(t) * K + k];
        for (int h = 0; h < H; ++h) acc[h] = std::fma(w, float_of(yrow[h]), acc[h]);
      }
      for (int h = 0; h < H; ++h) {
        const uint16_t b = bf16_of(acc[h]);
        std::memcpy(out[src].combined.data() + (static_cast<size_t>(t) * H + h) * 2, &b, 2);
      }
    }
  }
  return out;
}

struct ModelCase {
  LowLatencyShape shape;
  Routing routing;
  LowLatencyRoundOptions options;
  int rounds = 1;
};

void PrintTo(const ModelCase& c, std::ostream* os) {
  *os << c.shape.name() << " " << testing::to_string(c.routing);
}

class LowLatencyReferenceModel : public ::testing::TestWithParam<ModelCase> {};

TEST_P(LowLatencyReferenceModel, MatchesIndependentModel) {
  const ModelCase& c = GetParam();
  const uint64_t seed = 300 + c.shape.num_ranks * 10 + static_cast<int>(c.routing);
  const auto got =
      testing::run_ll_cluster(Backend::kHost, c.shape, c.routing, seed, c.options, c.rounds);
  for (int round = 0; round < c.rounds; ++round) {
    for (int p = 0; p < c.options.in_flight; ++p) {
      const uint64_t pair_seed = seed + 2 * round + p;
      std::vector<LowLatencyRankData> in;
      std::vector<std::vector<uint16_t>> y;
      for (int r = 0; r < c.shape.num_ranks; ++r) {
        in.push_back(testing::make_ll_rank_data(c.shape, c.routing, pair_seed, r));
        y.push_back(testing::make_ll_expert_output(c.shape, pair_seed, r));
      }
      const auto want = model(c.shape, in, y);
      for (int r = 0; r < c.shape.num_ranks; ++r) {
        EXPECT_EQ(testing::first_difference(want[r], got[round][p][r]), "")
            << "round " << round << " pair " << p << " rank " << r;
      }
    }
  }
}

std::vector<ModelCase> model_cases() {
  std::vector<ModelCase> cases;
  int i = 0;
  for (int R : {1, 2, 3, 4}) {
    for (Routing routing : {Routing::kUniform, Routing::kSkewed, Routing::kAllToOne,
                            Routing::kOneRankEmpty, Routing::kWithHoles}) {
      ModelCase c;
      c.routing = routing;
      c.shape.num_ranks = R;
      c.shape.max_tokens = 8 + 4 * (i % 3);
      c.shape.num_tokens = i % 4 == 3 ? 1 : c.shape.max_tokens;
      c.shape.hidden = i % 2 ? 256 : 128;
      c.shape.num_experts = (i % 3 == 0 ? 2 : 4) * R;
      c.shape.num_topk = 1 + i % 4;
      c.shape.use_fp8 = i % 2 == 0;
      c.shape.scales = static_cast<LowLatencyShape::Scales>(i / 2 % 3);
      c.shape.masked_ranks = R >= 3 && i % 5 == 2 ? 1u << (i % R) : 0u;
      c.shape.index_type = i % 3 == 1 ? IndexType::kInt32 : IndexType::kInt64;
      c.options.hook = i % 4 >= 2;
      c.options.in_flight = 1 + (i / 2) % 2;
      c.rounds = 1 + i % 3;
      cases.push_back(c);
      ++i;
    }
  }
  return cases;
}

std::string model_case_name(const ::testing::TestParamInfo<ModelCase>& info) {
  const ModelCase& c = info.param;
  return c.shape.name() + "_" + testing::to_string(c.routing) + (c.options.hook ? "_hook" : "") +
         "_inflight" + std::to_string(c.options.in_flight) + "_rounds" + std::to_string(c.rounds);
}

INSTANTIATE_TEST_SUITE_P(Random, LowLatencyReferenceModel, ::testing::ValuesIn(model_cases()),
                         model_case_name);

// One rank, every token to expert (t % 2): the reference's fp8 rows against the cast above, on
// blocks chosen to hit the floor, ties, subnormals, saturation and signed zeros.
TEST(LowLatencyReference, Fp8CastMatchesIndependentEncoder) {
  constexpr int T = 16, H = 512, kBlocks = H / kFp8ScaleBlock;
  std::vector<uint16_t> x(static_cast<size_t>(T) * H);
  testing::Rng rng(99);
  const float ties[] = {1.0625f, 1.1875f, 17.0f, 0.0029296875f, 0.0009765625f, 240.0f, 208.0f};
  for (int b = 0; b < T * kBlocks; ++b) {
    uint16_t* block = x.data() + b * kFp8ScaleBlock;
    for (int i = 0; i < kFp8ScaleBlock; ++i) {
      const float sign = rng.below(2) ? -1.0f : 1.0f;
      const float u = static_cast<float>(rng.uniform());
      float v;
      switch (b % 8) {
        case 0:
          v = sign * 0.0f;
          break;  // zero block
        case 1:
          v = sign * u * 5e-5f;
          break;  // under the floor
        case 2:
          v = sign * std::ldexp(u, -130);
          break;  // bf16 subnormals
        case 3:
          v = sign * std::ldexp(1.0f + u, 100 + rng.below(20));
          break;  // huge
        case 4:
          v = i == 0 ? 448.0f : sign * ties[rng.below(7)];
          break;  // scale 1, ties
        case 5:
          v = i == 7 ? -1024.0f : sign * std::ldexp(u, -rng.below(20));
          break;  // spread
        case 6:
          v = sign * std::ldexp(1.0f + u, -10 - rng.below(8));
          break;  // near the floor
        default:
          v = sign * (u * 8.0f - 4.0f);
          break;
      }
      block[i] = bf16_of(v);
    }
  }
  std::vector<int32_t> topk(T);
  for (int t = 0; t < T; ++t) topk[t] = t % 2;
  Config cfg;
  cfg.num_experts = 2;
  cfg.hidden = H;
  cfg.max_tokens_per_rank = 1;
  cfg.max_topk = 1;
  cfg.index_type = IndexType::kInt32;
  cfg.ll_max_tokens_per_rank = T;
  auto comm = Communicator::create(testing::shared_bootstraps(1, 5000)[0], cfg, Backend::kHost);
  // Each scale format: fp32 a / 448, round_scale (fp32 powers of two), and their UE8M0 codes.
  for (int mode = 0; mode < 3; ++mode) {
    SCOPED_TRACE(mode == 0 ? "fp32 scales" : mode == 1 ? "round_scale" : "use_ue8m0");
    LowLatencyDispatchInputs in;
    in.x = x.data();
    in.topk_idx = topk.data();
    in.num_tokens = T;
    in.num_topk = 1;
    in.use_fp8 = true;
    in.round_scale = mode >= 1;
    in.use_ue8m0 = mode == 2;
    const LowLatencyDispatchResult res = comm->low_latency_dispatch(in);
    const std::vector<uint16_t> y(static_cast<size_t>(2) * res.rows_per_expert * H);
    const std::vector<float> weights(T, 1.0f);
    std::vector<uint16_t> out(static_cast<size_t>(T) * H);
    // Ends the round, so that a later mode's dispatch may take this buffer again; the outputs
    // checked below stay valid until the dispatch two calls later.
    comm->low_latency_combine(y.data(), topk.data(), weights.data(), res.handle, out.data());
    ASSERT_EQ(res.recv_scales == nullptr, mode == 2);
    ASSERT_EQ(res.recv_scale_codes == nullptr, mode != 2);
    const auto* q = static_cast<const uint8_t*>(res.recv_x);
    for (int t = 0; t < T; ++t) {
      const size_t row = static_cast<size_t>(t % 2) * res.rows_per_expert + t / 2;
      for (int g = 0; g < kBlocks; ++g) {
        uint8_t want[kFp8ScaleBlock];
        const uint16_t* block = x.data() + static_cast<size_t>(t) * H + g * kFp8ScaleBlock;
        const float scale = mode == 0 ? cast_block(block, want) : cast_block_pow2(block, want);
        if (mode == 2) {
          int exponent = 0;
          std::frexp(scale, &exponent);
          EXPECT_EQ(res.recv_scale_codes[row * kBlocks + g], 126 + exponent)
              << "token " << t << " block " << g << ": scale " << scale;
        } else {
          EXPECT_EQ(std::memcmp(&scale, res.recv_scales + row * kBlocks + g, 4), 0)
              << "token " << t << " block " << g << ": scale " << res.recv_scales[row * kBlocks + g]
              << ", expected " << scale;
        }
        for (int i = 0; i < kFp8ScaleBlock; ++i) {
          ASSERT_EQ(q[row * H + g * kFp8ScaleBlock + i], want[i])
              << "token " << t << " block " << g << " element " << i
              << " x = " << float_of(block[i]);
        }
      }
    }
  }
}

// A power-of-two scale: the least power of two at or above a * (1 / 448), exactly at a power.
TEST(LowLatencyReference, RoundScaleTakesTheNextPowerOfTwo) {
  constexpr int H = 128;
  Config cfg;
  cfg.num_experts = 1;
  cfg.hidden = H;
  cfg.max_tokens_per_rank = 1;
  cfg.max_topk = 1;
  cfg.index_type = IndexType::kInt32;
  cfg.ll_max_tokens_per_rank = 4;
  auto comm = Communicator::create(testing::shared_bootstraps(1, 5000)[0], cfg, Backend::kHost);
  // amax per token: 448 (scale exactly 1), 450 (just above: 2), 3.5 (3.5 / 448 = 2^-7: exact),
  // 0 (the 1e-4 floor: 1e-4 / 448 is in (2^-23, 2^-22], so 2^-22).
  const float amax[] = {448.0f, 450.0f, 3.5f, 0.0f};
  const float want[] = {1.0f, 2.0f, 0.0078125f, std::ldexp(1.0f, -22)};
  std::vector<uint16_t> x(4 * H, bf16_of(0.0f));
  for (int t = 0; t < 4; ++t) x[t * H + 5] = bf16_of(-amax[t]);
  ASSERT_EQ(float_of(x[1 * H + 5]), -450.0f);  // exact in bf16
  std::vector<int32_t> topk(4, 0);
  LowLatencyDispatchInputs in;
  in.x = x.data();
  in.topk_idx = topk.data();
  in.num_tokens = 4;
  in.num_topk = 1;
  in.use_fp8 = true;
  in.round_scale = true;
  const LowLatencyDispatchResult res = comm->low_latency_dispatch(in);
  for (int t = 0; t < 4; ++t) EXPECT_EQ(res.recv_scales[t], want[t]) << "token " << t;
  // q = x / scale: -448 -> -448 (0xfe), 3.5 / 2^-7 = 448 again.
  EXPECT_EQ(static_cast<const uint8_t*>(res.recv_x)[0 * H + 5], 0xfe);
  EXPECT_EQ(static_cast<const uint8_t*>(res.recv_x)[2 * H + 5], 0xfe);
}

// R=2, E=4 (experts 0, 1 on rank 0; 2, 3 on rank 1), M=4, T=3, K=2, H=128, int64 ids.
// Rank 0: t0 -> {1, 2}, t1 -> {3, -1}, t2 -> {0, 0} (duplicate); rank 1: t0 -> {0, -1},
// t1 -> {2, 1}, t2 -> {3, 2}. Received rows (source, token, first slot), worked out by hand:
//   rank 0 expert 0: (0,2,0) (1,0,0)   expert 1: (0,0,0) (1,1,1)
//   rank 1 expert 2: (0,0,1) (1,1,0) (1,2,1)   expert 3: (0,1,0) (1,2,0)
// Expert output row j of local expert le on rank d is base = 8d + 4le + j + 1, negated on odd
// h; rows past the count hold 1000 so that reading one shows. With the weights below:
//   rank 0: t0 = 0.5*5 + 0.25*9 = 4.75, t1 = 2*13 = 26, t2 = 0.5*1 + 0.125*1 = 0.625
//   rank 1: t0 = 1*2 = 2, t1 = 0.25*10 + 0.5*6 = 5.5, t2 = 1*14 + 0.5*11 = 19.5
TEST(LowLatencyReference, HandComputedTwoRanks) {
  constexpr int H = 128, M = 4, T = 3, K = 2, Le = 2, R = 2;
  const int64_t topk[R][T][K] = {{{1, 2}, {3, -1}, {0, 0}}, {{0, -1}, {2, 1}, {3, 2}}};
  const float weights[R][T][K] = {{{0.5f, 0.25f}, {2.0f, 9.0f}, {0.5f, 0.125f}},
                                  {{1.0f, 7.0f}, {0.25f, 0.5f}, {1.0f, 0.5f}}};
  const LowLatencySource want_src[R][Le][3] = {
      {{{0, 2, 0}, {1, 0, 0}}, {{0, 0, 0}, {1, 1, 1}}},
      {{{0, 0, 1}, {1, 1, 0}, {1, 2, 1}}, {{0, 1, 0}, {1, 2, 0}}}};
  const int want_count[R][Le] = {{2, 2}, {3, 2}};
  const int want_range[R][Le][R][2] = {{{{0, 1}, {1, 1}}, {{0, 1}, {1, 1}}},
                                       {{{0, 1}, {1, 2}}, {{0, 1}, {1, 1}}}};
  const float want_out[R][T] = {{4.75f, 26.0f, 0.625f}, {2.0f, 5.5f, 19.5f}};
  auto x_value = [](int rank, int t, int h) { return bf16_of(1.0f + 4 * rank + t + h / 64.0f); };

  Config cfg;
  cfg.num_experts = 4;
  cfg.hidden = H;
  cfg.max_tokens_per_rank = 1;
  cfg.max_topk = K;
  cfg.ll_max_tokens_per_rank = M;
  const auto bs = testing::shared_bootstraps(R, 30000);
  testing::run_on_ranks(R, [&](int r) {
    auto comm = Communicator::create(bs[r], cfg, Backend::kHost);
    std::vector<uint16_t> x(T * H);
    for (int t = 0; t < T; ++t)
      for (int h = 0; h < H; ++h) x[t * H + h] = x_value(r, t, h);
    LowLatencyDispatchInputs in;
    in.x = x.data();
    in.topk_idx = &topk[r][0][0];
    in.num_tokens = T;
    in.num_topk = K;
    const LowLatencyDispatchResult res = comm->low_latency_dispatch(in);
    ASSERT_EQ(res.rows_per_expert, R * M);
    const auto* recv_x = static_cast<const uint16_t*>(res.recv_x);
    for (int le = 0; le < Le; ++le) {
      ASSERT_EQ(res.recv_count[le], want_count[r][le]) << "rank " << r << " expert " << le;
      for (int s = 0; s < R; ++s) {
        EXPECT_EQ(res.layout_range[(le * R + s) * 2], want_range[r][le][s][0]);
        EXPECT_EQ(res.layout_range[(le * R + s) * 2 + 1], want_range[r][le][s][1]);
      }
      for (int j = 0; j < want_count[r][le]; ++j) {
        const LowLatencySource& got = res.recv_src[le * R * M + j];
        const LowLatencySource& want = want_src[r][le][j];
        EXPECT_EQ(got.rank, want.rank) << "rank " << r << " expert " << le << " row " << j;
        EXPECT_EQ(got.token, want.token) << "rank " << r << " expert " << le << " row " << j;
        EXPECT_EQ(got.topk_slot, want.topk_slot)
            << "rank " << r << " expert " << le << " row " << j;
        for (int h = 0; h < H; ++h) {
          ASSERT_EQ(recv_x[(static_cast<size_t>(le) * R * M + j) * H + h],
                    x_value(want.rank, want.token, h))
              << "rank " << r << " expert " << le << " row " << j << " h " << h;
        }
      }
    }
    std::vector<uint16_t> y(static_cast<size_t>(Le) * R * M * H);
    for (int le = 0; le < Le; ++le) {
      for (int j = 0; j < R * M; ++j) {
        const float base = j < want_count[r][le] ? 8.0f * r + 4 * le + j + 1 : 1000.0f;
        for (int h = 0; h < H; ++h) {
          y[(static_cast<size_t>(le) * R * M + j) * H + h] = bf16_of(h % 2 ? -base : base);
        }
      }
    }
    std::vector<uint16_t> out(T * H, 0xffff);
    comm->low_latency_combine(y.data(), &topk[r][0][0], &weights[r][0][0], res.handle, out.data());
    for (int t = 0; t < T; ++t) {
      for (int h = 0; h < H; ++h) {
        ASSERT_EQ(float_of(out[t * H + h]), h % 2 ? -want_out[r][t] : want_out[r][t])
            << "rank " << r << " token " << t << " h " << h;
      }
    }
  });
}

}  // namespace
}  // namespace epcomm
