// Independent check of round outputs from the generated inputs.
#include "independent_check.hpp"

#include <cmath>
#include <cstring>
#include <sstream>

#include "bf16_bits.hpp"

namespace epcomm::testing {
namespace {

// Every rank's inputs of one round: the fresh dispatch's and the cached dispatch's.
struct RoundInputs {
  std::vector<RankData> data, fresh;
  RoundInputs(const Shape& shape, Routing routing, uint64_t seed) {
    for (int r = 0; r < shape.num_ranks; ++r) {
      data.push_back(make_rank_data(shape, routing, seed, r));
      fresh.push_back(make_rank_data(shape, routing, seed + kCachedSeedOffset, r));
    }
  }
};

// L: ranks per NVLink domain (num_ranks: one domain).
std::string check_rank(const Shape& shape, const RoundInputs& in, int r, const RankOutputs& out,
                       bool y_is_recv_x, int L) {
  const int R = shape.num_ranks, Le = shape.num_experts / R, H = shape.hidden;
  const size_t row_bytes = static_cast<size_t>(H) * element_bytes(shape.dtype);
  auto reaches = [&](const RankData& d, int t, int dest) {
    for (int k = 0; k < shape.num_topk; ++k) {
      const int64_t e = d.expert(t, k);
      if (e >= 0 && e / Le == dest) return true;
    }
    return false;
  };
  std::ostringstream err;
  int row = 0;
  for (int s = 0; s < R; ++s) {
    for (int t = 0; t < shape.num_tokens; ++t) {
      if (!reaches(in.data[s], t, r)) continue;
      err << "rank " << r << " row " << row << " (source " << s << ", token " << t << "): ";
      if (row >= out.num_recv) return err.str() + "missing";
      RecvSource src;
      std::memcpy(&src, out.recv_src.data() + row * sizeof(src), sizeof(src));
      if (src.rank != s || src.token != t) return err.str() + "wrong recv_src";
      if (std::memcmp(out.recv_x.data() + row * row_bytes, in.data[s].x.data() + t * row_bytes,
                      row_bytes) != 0) {
        return err.str() + "wrong recv_x";
      }
      if (!out.cached_recv_x.empty() &&
          std::memcmp(out.cached_recv_x.data() + row * row_bytes,
                      in.fresh[s].x.data() + t * row_bytes, row_bytes) != 0) {
        return err.str() + "wrong cached recv_x";
      }
      err.str("");
      ++row;
    }
  }
  if (row != out.num_recv) {
    err << "rank " << r << ": num_recv " << out.num_recv << ", expected " << row;
    return err.str();
  }
  if (shape.dtype != DType::kBF16 || !y_is_recv_x) return "";
  for (int t = 0; t < shape.num_tokens; ++t) {
    int reach = 0;
    std::vector<int> reach_in(R / L, 0);  // ranks of each domain the token reaches
    for (int d = 0; d < R; ++d) {
      reach += reaches(in.data[r], t, d) ? 1 : 0;
      reach_in[d / L] += reaches(in.data[r], t, d) ? 1 : 0;
    }
    for (int h = 0; h < H; ++h) {
      uint16_t x, got;
      std::memcpy(&x, in.data[r].x.data() + (static_cast<size_t>(t) * H + h) * 2, 2);
      std::memcpy(&got, out.combined.data() + (static_cast<size_t>(t) * H + h) * 2, 2);
      // x times n is exact in fp32 (n <= 128 ranks); with several domains each domain's
      // multiple is rounded to bf16 before the domains are added in ascending order.
      float sum = 0.f;
      for (const int n : reach_in) {
        const float part = float_of(x) * static_cast<float>(n);
        if (n > 0) sum += L == R ? part : float_of(bf16_of(part));
      }
      // A token sent nowhere comes back as +0, whatever the sign of x.
      const uint16_t want = reach == 0 ? 0 : bf16_of(sum);
      if (got != want) {
        err << "rank " << r << " token " << t << " h " << h << ": combined " << got << ", expected "
            << want << " (x times " << reach << ")";
        return err.str();
      }
    }
  }
  return "";
}

// Where every (token, expert) pair lands in the expert-major layout, from the inputs alone.
struct PairLayout {
  std::vector<std::vector<int>> offsets;     // [dest][Le + 1]: group starts, then the rows
  std::vector<std::vector<RecvSource>> src;  // [dest][row]: {-1, -1} on padding
  std::vector<std::vector<int>> slot;        // [dest][row]: -1 on padding
  std::vector<std::vector<int>> row;         // [source][t * K + k]: the pair's row, else -1
};

// Groups by local expert, pairs by source rank then token, each group padded to `align` rows.
PairLayout pair_layout(const Shape& shape, const std::vector<RankData>& data, int align) {
  const int R = shape.num_ranks, Le = shape.num_experts / R, K = shape.num_topk;
  const int T = shape.num_tokens;
  PairLayout p;
  p.offsets.resize(R);
  p.src.resize(R);
  p.slot.resize(R);
  p.row.assign(R, std::vector<int>(static_cast<size_t>(T) * K, -1));
  for (int d = 0; d < R; ++d) {
    p.offsets[d].push_back(0);
    for (int le = 0; le < Le; ++le) {
      const int64_t e = static_cast<int64_t>(d) * Le + le;
      for (int s = 0; s < R; ++s) {
        for (int t = 0; t < T; ++t) {
          for (int k = 0; k < K; ++k) {
            if (data[s].expert(t, k) != e || !data[s].first_slot(t, k)) continue;
            p.row[s][static_cast<size_t>(t) * K + k] = static_cast<int>(p.src[d].size());
            p.src[d].push_back({s, t});
            p.slot[d].push_back(k);
          }
        }
      }
      while (p.src[d].size() % align != 0) {
        p.src[d].push_back({-1, -1});
        p.slot[d].push_back(-1);
      }
      p.offsets[d].push_back(static_cast<int>(p.src[d].size()));
    }
  }
  return p;
}

// Whether row `row` of x and scales holds what the layout puts there: the source token's row,
// or zeros on padding.
bool row_matches(const Shape& shape, const std::vector<RankData>& data, RecvSource src,
                 const std::vector<unsigned char>& x, const std::vector<unsigned char>& scales,
                 size_t row) {
  const size_t row_bytes = static_cast<size_t>(shape.hidden) * element_bytes(shape.dtype);
  const size_t num_scales = shape.dtype == DType::kBF16 ? 0 : shape.hidden / kFp8ScaleBlock;
  std::vector<unsigned char> want_x(row_bytes, 0), want_scales(num_scales * 4, 0);
  if (src.rank >= 0) {
    std::memcpy(want_x.data(), data[src.rank].x.data() + src.token * row_bytes, row_bytes);
    if (num_scales) {
      std::memcpy(want_scales.data(), data[src.rank].scales.data() + src.token * num_scales,
                  num_scales * 4);
    }
  }
  return std::memcmp(x.data() + row * row_bytes, want_x.data(), row_bytes) == 0 &&
         (num_scales == 0 || std::memcmp(scales.data() + row * num_scales * 4, want_scales.data(),
                                         num_scales * 4) == 0);
}

// Sizes first, so that the row checks never read past a vector.
std::string check_pair_sizes(const Shape& shape, const RankOutputs& out, int rows, bool cached) {
  const size_t n = static_cast<size_t>(rows);
  const size_t x_bytes = n * shape.hidden * element_bytes(shape.dtype);
  const size_t scale_bytes =
      shape.dtype == DType::kBF16 ? 0 : n * (shape.hidden / kFp8ScaleBlock) * 4;
  struct Size {
    const char* name;
    size_t got, want;
  };
  const Size sizes[] = {
      {"recv_src", out.recv_src.size(), n * sizeof(RecvSource)},
      {"recv_topk_slot", out.recv_topk_slot.size(), n * 4},
      {"recv_weight", out.recv_weight.size(), n * 4},
      {"recv_x", out.recv_x.size(), x_bytes},
      {"recv_scales", out.recv_scales.size(), scale_bytes},
      {"cached_recv_x", out.cached_recv_x.size(), cached ? x_bytes : 0},
      {"cached_recv_scales", out.cached_recv_scales.size(), cached ? scale_bytes : 0},
      {"recv_topk_idx (token-major only)", out.recv_topk_idx.size(), 0},
      {"recv_topk_weights (token-major only)", out.recv_topk_weights.size(), 0},
  };
  if (out.num_recv != rows) {
    return "num_recv " + std::to_string(out.num_recv) + ", expected " + std::to_string(rows);
  }
  for (const Size& size : sizes) {
    if (size.got != size.want) {
      return std::string(size.name) + ": " + std::to_string(size.got) + " bytes, expected " +
             std::to_string(size.want);
    }
  }
  return "";
}

// Rank r's offsets, group sizes and every row of the fresh and the cached dispatch.
std::string check_pair_rows(const Shape& shape, const RoundInputs& in, const PairLayout& lay, int r,
                            const RankOutputs& out, bool cached) {
  const int Le = shape.num_experts / shape.num_ranks, K = shape.num_topk;
  const std::vector<RecvSource>& src = lay.src[r];
  std::string err = check_pair_sizes(shape, out, static_cast<int>(src.size()), cached);
  if (!err.empty()) return "rank " + std::to_string(r) + ": " + err;
  if (out.expert_offsets != lay.offsets[r]) return "rank " + std::to_string(r) + ": expert_offsets";
  for (int le = 0; le < Le; ++le) {
    if (out.per_expert.size() != static_cast<size_t>(Le) ||
        out.per_expert[le] != lay.offsets[r][le + 1] - lay.offsets[r][le]) {
      return "rank " + std::to_string(r) + ": num_recv_per_expert[" + std::to_string(le) + "]";
    }
  }
  for (size_t row = 0; row < src.size(); ++row) {
    const std::string at = "rank " + std::to_string(r) + " row " + std::to_string(row) + ": ";
    RecvSource got_src;
    int32_t got_slot;
    float got_weight, want_weight = 0.f;
    std::memcpy(&got_src, out.recv_src.data() + row * sizeof(RecvSource), sizeof(RecvSource));
    std::memcpy(&got_slot, out.recv_topk_slot.data() + row * 4, 4);
    std::memcpy(&got_weight, out.recv_weight.data() + row * 4, 4);
    const int slot = lay.slot[r][row];
    if (src[row].rank >= 0 && shape.with_weights) {
      want_weight =
          in.data[src[row].rank].topk_weights[static_cast<size_t>(src[row].token) * K + slot];
    }
    if (got_src.rank != src[row].rank || got_src.token != src[row].token) {
      return at + "wrong recv_src";
    }
    if (got_slot != slot) return at + "wrong recv_topk_slot";
    if (std::memcmp(&got_weight, &want_weight, 4) != 0) return at + "wrong recv_weight";
    if (!row_matches(shape, in.data, src[row], out.recv_x, out.recv_scales, row)) {
      return at + "wrong recv_x or recv_scales";
    }
    if (cached &&
        !row_matches(shape, in.fresh, src[row], out.cached_recv_x, out.cached_recv_scales, row)) {
      return at + "wrong cached recv_x or recv_scales";
    }
  }
  return "";
}

// Rank r's combine output: per token and NVLink domain of L ranks (ascending), the token's pairs
// at ranks of that domain in ascending slot order, fmaf(w, y, acc) or acc + y from 0 in fp32,
// rounded to bf16 unless L = R; the domains' partials added in fp32, then bias, bias2, rounded.
// y: combine_y_row of (y_seed, destination), or with y_from_x the rows received, i.e. the
// token's own x from `rows`.
std::string check_pair_combine(const Shape& shape, const RoundInputs& in, const PairLayout& lay,
                               int r, int L, const std::vector<unsigned char>& combined,
                               const std::vector<RankData>& rows, uint64_t y_seed,
                               const RoundOptions& options, bool y_from_x, const char* what) {
  const int R = shape.num_ranks, Le = shape.num_experts / R, K = shape.num_topk;
  const int H = shape.hidden;
  const RankData& d = in.data[r];
  std::vector<uint16_t> bias[2];
  for (int b = 0; b < 2; ++b) {
    if ((options.bias >> b) & 1) bias[b] = combine_bias(shape, y_seed, r, b);
  }
  if (combined.size() != static_cast<size_t>(shape.num_tokens) * H * 2) {
    return std::string(what) + " size";
  }
  std::vector<float> acc(H), partial(H);
  std::vector<uint16_t> y(H);
  for (int t = 0; t < shape.num_tokens; ++t) {
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int first = 0; first < R; first += L) {
      std::fill(partial.begin(), partial.end(), 0.f);
      bool any = false;
      for (int k = 0; k < K; ++k) {
        const size_t i = static_cast<size_t>(t) * K + k;
        const int row = lay.row[r][i];
        const int dest = row < 0 ? -1 : static_cast<int>(d.expert(t, k) / Le);
        if (dest < first || dest >= first + L) continue;
        any = true;
        if (y_from_x) {
          std::memcpy(y.data(), rows[r].x.data() + static_cast<size_t>(t) * H * 2, H * 2);
        } else {
          y = combine_y_row(shape, y_seed, dest, row);
        }
        for (int h = 0; h < H; ++h) {
          const float v = float_of(y[h]);
          partial[h] =
              options.apply_weights ? std::fma(d.topk_weights[i], v, partial[h]) : partial[h] + v;
        }
      }
      if (!any) continue;  // no pair of t in this domain: it sends nothing back
      for (int h = 0; h < H; ++h) acc[h] += L == R ? partial[h] : float_of(bf16_of(partial[h]));
    }
    for (int h = 0; h < H; ++h) {
      const size_t e = static_cast<size_t>(t) * H + h;
      float sum = acc[h];
      for (int b = 0; b < 2; ++b) {
        if (!bias[b].empty()) sum += float_of(bias[b][e]);
      }
      uint16_t got;
      std::memcpy(&got, combined.data() + e * 2, 2);
      if (got != bf16_of(sum)) {
        std::ostringstream err;
        err << "rank " << r << " token " << t << " h " << h << ": " << what << " " << got
            << ", expected " << bf16_of(sum);
        return err.str();
      }
    }
  }
  return "";
}

std::string check_expert_major_one(const Shape& shape, const RoundInputs& in, const PairLayout& lay,
                                   int r, int L, const RankOutputs& out, uint64_t seed,
                                   const RoundOptions& options) {
  std::string err = check_pair_rows(shape, in, lay, r, out, options.cached);
  if (!err.empty()) return err;
  const bool y_from_x = options.y_is_recv_x && shape.dtype == DType::kBF16;
  err = check_pair_combine(shape, in, lay, r, L, out.combined, in.data, seed, options, y_from_x,
                           "combined");
  if (!err.empty() || !options.cached) return err;
  return check_pair_combine(shape, in, lay, r, L, out.cached_combined, in.fresh,
                            seed + kCachedSeedOffset, options, y_from_x, "cached_combined");
}

int alignment_of(const RoundOptions& options, const Config& config) {
  return options.expert_alignment > 0 ? options.expert_alignment : config.expert_alignment;
}

int ranks_per_domain(const Shape& shape, const Config& config) {
  return config.ranks_per_domain > 0 ? config.ranks_per_domain : shape.num_ranks;
}

}  // namespace

std::string check_independently(const Shape& shape, Routing routing, uint64_t seed,
                                const std::vector<RankOutputs>& outputs, bool y_is_recv_x) {
  const RoundInputs in(shape, routing, seed);
  for (int r = 0; r < shape.num_ranks; ++r) {
    const std::string err = check_rank(shape, in, r, outputs[r], y_is_recv_x, shape.num_ranks);
    if (!err.empty()) return err;
  }
  return "";
}

std::string check_rank_independently(const Shape& shape, Routing routing, uint64_t seed, int rank,
                                     const RankOutputs& out, bool y_is_recv_x,
                                     int ranks_per_domain) {
  const int L = ranks_per_domain > 0 ? ranks_per_domain : shape.num_ranks;
  return check_rank(shape, RoundInputs(shape, routing, seed), rank, out, y_is_recv_x, L);
}

std::string check_expert_major(const Shape& shape, Routing routing, uint64_t seed,
                               const std::vector<RankOutputs>& outputs, const RoundOptions& options,
                               const Config& config) {
  const RoundInputs in(shape, routing, seed);
  const PairLayout lay = pair_layout(shape, in.data, alignment_of(options, config));
  for (int r = 0; r < shape.num_ranks; ++r) {
    const std::string err = check_expert_major_one(
        shape, in, lay, r, ranks_per_domain(shape, config), outputs[r], seed, options);
    if (!err.empty()) return err;
  }
  return "";
}

std::string check_expert_major_rank(const Shape& shape, Routing routing, uint64_t seed, int rank,
                                    const RankOutputs& out, const RoundOptions& options,
                                    const Config& config) {
  const RoundInputs in(shape, routing, seed);
  const PairLayout lay = pair_layout(shape, in.data, alignment_of(options, config));
  return check_expert_major_one(shape, in, lay, rank, ranks_per_domain(shape, config), out, seed,
                                options);
}

}  // namespace epcomm::testing
