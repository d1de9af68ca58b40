// Random workloads: token routings of several shapes and finite random rows.
#include "workload.hpp"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <sstream>

namespace epcomm::testing {
namespace {

// K distinct experts drawn with probability proportional to weight[e]; -1 where none are left.
std::vector<int64_t> draw_experts(Rng& rng, const std::vector<double>& weight, int K) {
  std::vector<double> w = weight;
  std::vector<int64_t> out(K, -1);
  for (int k = 0; k < K; ++k) {
    const double total = std::accumulate(w.begin(), w.end(), 0.0);
    if (total <= 0) break;
    double pick = rng.uniform() * total;
    size_t e = 0, last_positive = 0;
    for (; e < w.size(); ++e) {
      if (w[e] > 0) last_positive = e;
      if (w[e] > 0 && pick < w[e]) break;
      pick -= w[e];
    }
    if (e == w.size()) e = last_positive;  // rounding left `pick` just past the end
    out[k] = static_cast<int64_t>(e);
    w[e] = 0;
  }
  return out;
}

}  // namespace

namespace {

// Random sign and mantissa, biased exponent in [lo, lo + binades).
uint16_t bf16_in_binades(Rng& rng, int lo, int binades) {
  const uint64_t r = rng.next();
  const uint16_t sign = static_cast<uint16_t>((r & 1) << 15);
  const uint16_t exponent = static_cast<uint16_t>(lo + static_cast<int>((r >> 1) % binades));
  const uint16_t mantissa = static_cast<uint16_t>((r >> 8) & 0x7f);
  return static_cast<uint16_t>(sign | (exponent << 7) | mantissa);
}

}  // namespace

uint16_t random_bf16(Rng& rng) { return bf16_in_binades(rng, 120, 9); }        // 2^-7 .. 2^1
uint16_t random_wide_bf16(Rng& rng) { return bf16_in_binades(rng, 107, 40); }  // 2^-20 .. 2^19

uint8_t random_fp8(Rng& rng) {
  uint8_t b;
  do {
    b = static_cast<uint8_t>(rng.next());
  } while ((b & 0x7f) == 0x7f);  // 0x7f and 0xff are NaN
  return b;
}

const char* to_string(Routing routing) {
  switch (routing) {
    case Routing::kUniform:
      return "uniform";
    case Routing::kSkewed:
      return "skewed";
    case Routing::kAllToOne:
      return "all_to_one";
    case Routing::kOneRankEmpty:
      return "one_rank_empty";
    case Routing::kWithHoles:
      return "with_holes";
    case Routing::kRepeats:
      return "repeats";
  }
  return "?";
}

std::string Shape::name() const {
  std::ostringstream os;
  os << "R" << num_ranks << "_T" << num_tokens << "_H" << hidden << "_E" << num_experts << "_K"
     << num_topk << "_" << epcomm::to_string(dtype) << "_" << epcomm::to_string(index_type)
     << (with_weights ? "_w" : "_nw");
  return os.str();
}

uint64_t Rng::next() {
  uint64_t z = (state_ += kGamma);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

double Rng::uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }

int64_t RankData::expert(int token, int k) const {
  const size_t i = static_cast<size_t>(token) * num_topk + k;
  if (topk_idx.size() == static_cast<size_t>(num_tokens) * num_topk * 8) {
    int64_t v;
    std::memcpy(&v, topk_idx.data() + i * 8, 8);
    return v;
  }
  int32_t v;
  std::memcpy(&v, topk_idx.data() + i * 4, 4);
  return v;
}

bool RankData::first_slot(int token, int k) const {
  const int64_t e = expert(token, k);
  if (e < 0) return false;
  for (int j = 0; j < k; ++j) {
    if (expert(token, j) == e) return false;
  }
  return true;
}

namespace {

// Each expert's draw weight under `routing`: 1 (uniform, with holes), 1/(owner+1)^2 (skewed),
// only rank 0's experts (all to one), none of the last rank's (one rank empty).
std::vector<double> routing_weights(Routing routing, int num_experts, int num_ranks) {
  const int Le = num_experts / num_ranks;
  std::vector<double> weight(num_experts, 1.0);
  for (int e = 0; e < num_experts; ++e) {
    const int owner = e / Le;
    switch (routing) {
      case Routing::kSkewed:
        weight[e] = 1.0 / ((owner + 1.0) * (owner + 1.0));
        break;
      case Routing::kAllToOne:
        weight[e] = owner == 0 ? 1.0 : 0.0;
        break;
      case Routing::kOneRankEmpty:
        weight[e] = (num_ranks > 1 && owner == num_ranks - 1) ? 0.0 : 1.0;
        break;
      default:
        break;
    }
  }
  return weight;
}

// Writes ids as int64 or int32 (index_bytes 8 or 4), one after another.
void store_ids(unsigned char* dst, const std::vector<int64_t>& ids, size_t index_bytes) {
  for (size_t k = 0; k < ids.size(); ++k) {
    if (index_bytes == 8) {
      std::memcpy(dst + 8 * k, &ids[k], 8);
    } else {
      const int32_t v = static_cast<int32_t>(ids[k]);
      std::memcpy(dst + 4 * k, &v, 4);
    }
  }
}

// Routing::kRepeats on one token's distinct experts: each slot -1 with probability 1/4, then in
// half the tokens (K > 1, some slot left) one remaining slot's expert copied into 1 to K - 1
// other slots, so that the expert is named at least twice and its first slot varies.
void add_repeats(Rng& rng, std::vector<int64_t>& experts) {
  const int K = static_cast<int>(experts.size());
  for (auto& e : experts) {
    if (rng.below(4) == 0) e = -1;
  }
  std::vector<int> named;
  for (int k = 0; k < K; ++k) {
    if (experts[k] >= 0) named.push_back(k);
  }
  if (K < 2 || named.empty() || rng.below(2) == 0) return;
  const int from = named[rng.below(static_cast<int>(named.size()))];
  const int copies = 1 + rng.below(K - 1);
  for (int c = 0; c < copies; ++c) {
    int to = rng.below(K - 1);
    if (to >= from) ++to;  // any slot but `from`
    experts[to] = experts[from];
  }
}

// One token's K expert ids: draw_experts, then with holes some slots -1 and some tokens sent
// nowhere, and with repeat_experts sometimes an expert named twice; with repeats, add_repeats.
std::vector<int64_t> draw_token_experts(Rng& rng, const std::vector<double>& weight, int K,
                                        Routing routing, bool repeat_experts) {
  std::vector<int64_t> experts = draw_experts(rng, weight, K);
  if (routing == Routing::kRepeats) add_repeats(rng, experts);
  if (routing != Routing::kWithHoles) return experts;
  const bool nowhere = rng.below(8) == 0;
  for (auto& e : experts) {
    if (nowhere || rng.below(4) == 0) e = -1;
  }
  if (repeat_experts && K > 1 && rng.below(3) == 0) experts[1 + rng.below(K - 1)] = experts[0];
  return experts;
}

}  // namespace

std::vector<unsigned char> draw_topk_idx(Rng& rng, Routing routing, int num_experts, int num_ranks,
                                         int num_tokens, int K, IndexType index_type,
                                         bool repeat_experts) {
  const std::vector<double> weight = routing_weights(routing, num_experts, num_ranks);
  const size_t idx_bytes = index_bytes(index_type);
  std::vector<unsigned char> ids(static_cast<size_t>(num_tokens) * K * idx_bytes);
  for (int t = 0; t < num_tokens; ++t) {
    const std::vector<int64_t> experts =
        draw_token_experts(rng, weight, K, routing, repeat_experts);
    store_ids(ids.data() + static_cast<size_t>(t) * K * idx_bytes, experts, idx_bytes);
  }
  return ids;
}

namespace {

// make_rank_data's generator: the routing is drawn first, then weights, then rows.
Rng rank_rng(uint64_t seed, int rank) {
  return Rng(seed * 1000003ull + static_cast<uint64_t>(rank) * 7919ull + 17);
}

RankData routing_only(const Shape& shape, Routing routing, Rng& rng) {
  RankData d;
  d.num_tokens = shape.num_tokens;
  d.num_topk = shape.num_topk;
  d.topk_idx = draw_topk_idx(rng, routing, shape.num_experts, shape.num_ranks, shape.num_tokens,
                             shape.num_topk, shape.index_type, false);
  return d;
}

}  // namespace

RankData make_rank_routing(const Shape& shape, Routing routing, uint64_t seed, int rank) {
  Rng rng = rank_rng(seed, rank);
  return routing_only(shape, routing, rng);
}

RankData make_rank_data(const Shape& shape, Routing routing, uint64_t seed, int rank) {
  Rng rng = rank_rng(seed, rank);
  const int T = shape.num_tokens, K = shape.num_topk, H = shape.hidden;
  RankData d = routing_only(shape, routing, rng);
  if (shape.with_weights) {
    d.topk_weights.resize(static_cast<size_t>(T) * K);
    for (auto& w : d.topk_weights) w = static_cast<float>(rng.uniform());
  }
  const size_t row_bytes = static_cast<size_t>(H) * element_bytes(shape.dtype);
  d.x.resize(static_cast<size_t>(T) * row_bytes);
  if (shape.dtype == DType::kBF16) {
    for (size_t i = 0; i < d.x.size(); i += 2) {
      const uint16_t v = random_bf16(rng);
      std::memcpy(d.x.data() + i, &v, 2);
    }
  } else {
    for (auto& b : d.x) b = random_fp8(rng);
    d.scales.resize(static_cast<size_t>(T) * (H / kFp8ScaleBlock));
    for (auto& s : d.scales) s = static_cast<float>(0.001 + rng.uniform());
  }
  return d;
}

Config config_for(const Shape& shape) {
  Config c;
  c.num_experts = shape.num_experts;
  c.hidden = shape.hidden;
  c.max_tokens_per_rank = std::max(shape.num_tokens, 1);
  c.max_topk = std::max(shape.num_topk, 1);
  c.dtype = shape.dtype;
  c.index_type = shape.index_type;
  return c;
}

int expert_major_max_rows(const Shape& shape, int alignment) {
  const int R = shape.num_ranks, Le = shape.num_experts / R;
  const int pairs = R * shape.num_tokens * std::min(shape.num_topk, Le);
  return std::max(1, pairs + Le * (std::max(alignment, 1) - 1));
}

}  // namespace epcomm::testing
