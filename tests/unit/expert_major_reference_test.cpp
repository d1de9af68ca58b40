// The host reference's expert-major receive layout (RecvLayout::kExpertMajor) against a model
// written here from its contract: one row per (token, local expert) pair under the token's first
// slot naming the expert, groups by local expert aligned to Config::expert_alignment, pairs by
// source rank then token, padding rows zeroed and marked; combine over each token's pairs in
// slot order, weighted (fmaf) or not, biases after, one rounding. Caller buffers are poisoned,
// and y's padding rows hold NaN, so a write past num_recv or a read of padding shows.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "bf16_bits.hpp"
#include "epcomm/epcomm.hpp"
#include "harness.hpp"

namespace epcomm {
namespace {

using testing::bf16_of;
using testing::float_of;

struct EmCase {
  int num_ranks, num_experts, num_topk, hidden, alignment;
  bool fp8, with_weights;
  uint64_t seed;
};

constexpr unsigned char kPoison = 0xA5;

struct RankInput {
  int T = 0;
  std::vector<unsigned char> x;  // [T][row bytes]
  std::vector<float> scales;     // [T][H / 128], fp8
  std::vector<int64_t> ids;      // [T][K]: repeats and -1 included
  std::vector<float> weights;    // [T][K]
};

RankInput make_input(const EmCase& c, int rank, uint64_t salt) {
  testing::Rng rng(c.seed * 7919 + rank * 104729 + salt);
  RankInput in;
  in.T = 3 + (rank * 5 + static_cast<int>(c.seed)) % 9;  // ragged: 3 .. 11 tokens
  const int H = c.hidden, K = c.num_topk;
  const size_t row_bytes = c.fp8 ? H : 2 * static_cast<size_t>(H);
  in.x.resize(in.T * row_bytes);
  for (size_t i = 0; i < in.x.size(); ++i) in.x[i] = static_cast<unsigned char>(rng.next());
  if (c.fp8) {
    in.scales.resize(static_cast<size_t>(in.T) * (H / kFp8ScaleBlock));
    for (auto& s : in.scales) s = static_cast<float>(rng.uniform() + 0.5);
    for (auto& b : in.x) b &= 0x7e;  // finite e4m3 codes (0x7f would be NaN)
  }
  in.ids.resize(static_cast<size_t>(in.T) * K);
  for (auto& e : in.ids) e = rng.below(5) == 0 ? -1 : rng.below(c.num_experts);
  in.weights.resize(in.ids.size());
  for (auto& w : in.weights) w = static_cast<float>(rng.uniform() * 2.0 - 0.7);
  return in;
}

// The first slot of token t naming e, or -1.
int first_slot(const RankInput& in, int K, int t, int64_t e) {
  for (int k = 0; k < K; ++k) {
    if (in.ids[static_cast<size_t>(t) * K + k] == e) return k;
  }
  return -1;
}

struct Expected {
  std::vector<int> offsets;     // [Le + 1]
  std::vector<RecvSource> src;  // [rows]
  std::vector<int32_t> slot;    // [rows]
  std::vector<float> weight;    // [rows]
};

Expected model_layout(const EmCase& c, const std::vector<RankInput>& in, int d) {
  const int Le = c.num_experts / c.num_ranks, K = c.num_topk;
  Expected x;
  x.offsets.assign(Le + 1, 0);
  for (int le = 0; le < Le; ++le) {
    const int64_t e = static_cast<int64_t>(d) * Le + le;
    for (int s = 0; s < c.num_ranks; ++s) {
      for (int t = 0; t < in[s].T; ++t) {
        const int k = first_slot(in[s], K, t, e);
        if (k < 0) continue;
        x.src.push_back({s, t});
        x.slot.push_back(k);
        x.weight.push_back(c.with_weights ? in[s].weights[static_cast<size_t>(t) * K + k] : 0.f);
      }
    }
    while (static_cast<int>(x.src.size()) % c.alignment != 0) {
      x.src.push_back({-1, -1});
      x.slot.push_back(-1);
      x.weight.push_back(0.f);
    }
    x.offsets[le + 1] = static_cast<int>(x.src.size());
  }
  return x;
}

// y of rank d: wide-spread values on pair rows, NaN on padding rows (never to be read).
std::vector<uint16_t> make_y(const EmCase& c, const Expected& layout, int d) {
  std::vector<uint16_t> y(layout.src.size() * c.hidden);
  testing::Rng rng(c.seed * 31 + d);
  for (size_t r = 0; r < layout.src.size(); ++r) {
    for (int h = 0; h < c.hidden; ++h) {
      y[r * c.hidden + h] = layout.src[r].rank < 0 ? 0x7fc0 : testing::random_wide_bf16(rng);
    }
  }
  return y;
}

void run_case(const EmCase& c) {
  const int R = c.num_ranks, Le = c.num_experts / R, K = c.num_topk, H = c.hidden;
  const size_t row_bytes = c.fp8 ? H : 2 * static_cast<size_t>(H);
  const int scales = c.fp8 ? H / kFp8ScaleBlock : 0;
  std::vector<RankInput> in(R), fresh(R);
  for (int r = 0; r < R; ++r) in[r] = make_input(c, r, 1), fresh[r] = make_input(c, r, 2);
  std::vector<Expected> want(R);
  for (int d = 0; d < R; ++d) want[d] = model_layout(c, in, d);
  Config cfg;
  cfg.num_experts = c.num_experts;
  cfg.hidden = H;
  cfg.max_tokens_per_rank = 16;
  cfg.max_topk = K;
  cfg.dtype = c.fp8 ? DType::kFP8E4M3 : DType::kBF16;
  // Odd seeds give the alignment per call (DispatchOptions), even ones in the Config.
  const bool per_call = c.seed % 2 == 1;
  cfg.expert_alignment = per_call ? 1 : c.alignment;
  cfg.max_recv_rows = 512;  // pairs and padding: more rows than tokens
  const auto bs = testing::shared_bootstraps(R, 10000);
  std::vector<std::vector<uint16_t>> combined(R * 2);
  testing::run_on_ranks(R, [&](int r) {
    auto comm = Communicator::create(bs[r], cfg, Backend::kHost);
    const int cap = comm->recv_capacity();
    std::vector<unsigned char> recv_x(cap * row_bytes, kPoison);
    std::vector<RecvSource> recv_src(cap, RecvSource{0x5a5a5a5a, 0x5a5a5a5a});
    DispatchInputs d;
    d.x = in[r].x.data();
    d.x_scales = c.fp8 ? in[r].scales.data() : nullptr;
    d.topk_idx = in[r].ids.data();
    d.topk_weights = c.with_weights ? in[r].weights.data() : nullptr;
    d.num_tokens = in[r].T;
    d.num_topk = K;
    DispatchOptions options;
    options.layout = RecvLayout::kExpertMajor;
    options.expert_alignment = per_call ? c.alignment : 0;
    options.outputs.recv_x = recv_x.data();
    options.outputs.recv_src = recv_src.data();
    const DispatchResult res = comm->dispatch(d, options);
    const Expected& w = want[r];
    const int rows = static_cast<int>(w.src.size());
    ASSERT_EQ(res.num_recv, rows) << "rank " << r;
    ASSERT_EQ(res.recv_topk_idx, nullptr);
    ASSERT_EQ(res.recv_topk_weights, nullptr);
    for (int le = 0; le <= Le; ++le) EXPECT_EQ(res.expert_offsets[le], w.offsets[le]) << le;
    for (int le = 0; le < Le; ++le) {
      EXPECT_EQ(res.num_recv_per_expert[le], w.offsets[le + 1] - w.offsets[le]) << le;
    }
    auto check_rows = [&](const unsigned char* got_x, const float* got_scales,
                          const std::vector<RankInput>& from, const char* what) {
      for (int row = 0; row < rows; ++row) {
        const RecvSource s = w.src[row];
        std::vector<unsigned char> want_x(row_bytes, 0);
        std::vector<float> want_scales(scales, 0.f);
        if (s.rank >= 0) {
          std::memcpy(want_x.data(), from[s.rank].x.data() + s.token * row_bytes, row_bytes);
          for (int g = 0; g < scales; ++g)
            want_scales[g] = from[s.rank].scales[s.token * scales + g];
        }
        ASSERT_EQ(std::memcmp(got_x + row * row_bytes, want_x.data(), row_bytes), 0)
            << what << " rank " << r << " row " << row;
        for (int g = 0; g < scales; ++g) {
          ASSERT_EQ(got_scales[row * scales + g], want_scales[g]) << what << " row " << row;
        }
      }
      for (size_t i = rows * row_bytes; i < recv_x.size(); ++i) {
        ASSERT_EQ(got_x[i], kPoison) << what << ": written past num_recv at byte " << i;
      }
    };
    check_rows(recv_x.data(), res.recv_scales, in, "dispatch");
    for (int row = 0; row < rows; ++row) {
      EXPECT_EQ(recv_src[row].rank, w.src[row].rank) << "row " << row;
      EXPECT_EQ(recv_src[row].token, w.src[row].token) << "row " << row;
      EXPECT_EQ(res.recv_topk_slot[row], w.slot[row]) << "row " << row;
      EXPECT_EQ(res.recv_weight[row], w.weight[row]) << "row " << row;
    }
    EXPECT_EQ(recv_src[rows].rank, 0x5a5a5a5a) << "recv_src written past num_recv";

    // Combine, weighted when there are weights, then plain.
    const std::vector<uint16_t> y = make_y(c, w, r);
    for (int pass = 0; pass < 2; ++pass) {
      CombineOptions copts;
      copts.apply_weights = pass == 0 && c.with_weights;
      std::vector<uint16_t> out(static_cast<size_t>(in[r].T) * H, 0xffff);
      comm->combine(y.data(), res.handle, out.data(), copts);
      combined[r * 2 + pass] = out;
    }
    // Cached dispatch of fresh rows: the same places, padding zero again.
    std::fill(recv_x.begin(), recv_x.end(), kPoison);
    DispatchOptions cached;
    cached.layout = RecvLayout::kExpertMajor;
    cached.outputs.recv_x = recv_x.data();
    const DispatchResult again = comm->dispatch_cached(
        res.handle, fresh[r].x.data(), c.fp8 ? fresh[r].scales.data() : nullptr, cached);
    ASSERT_EQ(again.num_recv, rows);
    check_rows(recv_x.data(), again.recv_scales, fresh, "cached");
  });
  // The combine model, from every rank's layout and y.
  std::vector<std::vector<uint16_t>> ys(R);
  for (int d = 0; d < R; ++d) ys[d] = make_y(c, want[d], d);
  for (int s = 0; s < R; ++s) {
    for (int pass = 0; pass < 2; ++pass) {
      const bool weighted = pass == 0 && c.with_weights;
      for (int t = 0; t < in[s].T; ++t) {
        for (int h = 0; h < H; ++h) {
          float acc = 0.f;
          for (int k = 0; k < K; ++k) {
            const int64_t e = in[s].ids[static_cast<size_t>(t) * K + k];
            if (e < 0 || first_slot(in[s], K, t, e) != k) continue;
            const int d = static_cast<int>(e / Le);
            int row = -1;
            for (size_t j = 0; j < want[d].src.size(); ++j) {
              if (want[d].src[j].rank == s && want[d].src[j].token == t && want[d].slot[j] == k) {
                row = static_cast<int>(j);
              }
            }
            ASSERT_GE(row, 0);
            const float v = float_of(ys[d][static_cast<size_t>(row) * H + h]);
            acc = weighted ? std::fma(in[s].weights[static_cast<size_t>(t) * K + k], v, acc)
                           : acc + v;
          }
          ASSERT_EQ(combined[s * 2 + pass][static_cast<size_t>(t) * H + h], bf16_of(acc))
              << "rank " << s << " token " << t << " h " << h << (weighted ? " weighted" : "");
        }
      }
    }
  }
}

TEST(HostReference, ExpertMajorLayoutMatchesItsModel) {
  const EmCase cases[] = {
      {3, 6, 4, 64, 1, false, true, 1},  {3, 6, 4, 64, 4, false, false, 2},
      {2, 8, 8, 128, 8, true, true, 3},  {4, 4, 2, 32, 1, false, true, 4},
      {1, 4, 3, 128, 2, true, false, 5}, {4, 16, 8, 64, 16, false, true, 6},
  };
  for (const EmCase& c : cases) {
    SCOPED_TRACE("case seed " + std::to_string(c.seed));
    run_case(c);
  }
}

// One token, two pairs: weights (1, W) and rows (A, 1.5) where 1.5 * W = 1 + 2^-8 + 2^-24 and
// A = 2^-60. fmaf(W, 1.5, fmaf(1, A, 0)) is 1 + 2^-8 + 2^-23 in fp32, above the bf16 tie:
// bf16 0x3F81. Rounding the product first gives the tie and then the even 1.0 (0x3F80).
TEST(HostReference, ExpertMajorCombineUsesOneFmaPerPair) {
  Config cfg;
  cfg.num_experts = 2;
  cfg.hidden = 16;
  cfg.max_tokens_per_rank = 1;
  cfg.max_topk = 2;
  cfg.max_recv_rows = 2;  // one token, two pairs
  auto comm = Communicator::create(testing::shared_bootstraps(1, 5000)[0], cfg, Backend::kHost);
  std::vector<uint16_t> x(16, 0), out(16, 0);
  const std::vector<int64_t> ids{0, 1};
  const std::vector<float> weights{1.0f, 5614251.0f * std::ldexp(1.0f, -23)};
  DispatchInputs in;
  in.x = x.data();
  in.topk_idx = ids.data();
  in.topk_weights = weights.data();
  in.num_tokens = 1;
  in.num_topk = 2;
  DispatchOptions em;
  em.layout = RecvLayout::kExpertMajor;
  const DispatchResult res = comm->dispatch(in, em);
  ASSERT_EQ(res.num_recv, 2);
  std::vector<uint16_t> y(32);
  for (int h = 0; h < 16; ++h) {
    y[h] = bf16_of(std::ldexp(1.0f, -60));  // expert 0's pair
    y[16 + h] = bf16_of(1.5f);              // expert 1's pair
  }
  CombineOptions weighted;
  weighted.apply_weights = true;
  comm->combine(y.data(), res.handle, out.data(), weighted);
  for (int h = 0; h < 16; ++h) EXPECT_EQ(out[h], 0x3F81) << "h " << h;
}

TEST(HostReference, ExpertMajorMisuseIsNamed) {
  Config cfg;
  cfg.num_experts = 2;
  cfg.hidden = 16;
  cfg.max_tokens_per_rank = 2;
  auto comm = Communicator::create(testing::shared_bootstraps(1, 5000)[0], cfg, Backend::kHost);
  std::vector<uint16_t> x(32, 0), out(32, 0), y(64, 0);
  std::vector<int64_t> ids{0, 1};
  std::vector<int64_t> recv_ids(8);
  DispatchInputs in;
  in.x = x.data();
  in.topk_idx = ids.data();
  in.num_tokens = 2;
  in.num_topk = 1;
  DispatchOptions em;
  em.layout = RecvLayout::kExpertMajor;
  em.outputs.recv_topk_idx = recv_ids.data();
  EXPECT_THROW(
      {
        try {
          comm->dispatch(in, em);
        } catch (const Error& e) {
          EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
          EXPECT_NE(std::string(e.what()).find("token-major outputs"), std::string::npos);
          throw;
        }
      },
      Error);
  const DispatchResult tm = comm->dispatch(in);  // token-major, no weights
  CombineOptions weighted;
  weighted.apply_weights = true;
  try {
    comm->combine(y.data(), tm.handle, out.data(), weighted);
    ADD_FAILURE() << "apply_weights on a token-major handle was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs an expert-major dispatch"), std::string::npos);
  }
  em.outputs = {};
  try {
    comm->dispatch_cached(tm.handle, x.data(), nullptr, em);
    ADD_FAILURE() << "a cached dispatch changed the handle's layout";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("keeps its handle's layout"), std::string::npos);
  }
  const DispatchResult e2 = comm->dispatch(in, em);
  try {
    comm->combine(y.data(), e2.handle, out.data(), weighted);
    ADD_FAILURE() << "apply_weights without dispatched weights was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("had no topk_weights"), std::string::npos);
  }
}

}  // namespace
}  // namespace epcomm
