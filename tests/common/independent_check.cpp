// Independent check of round outputs from the generated inputs.
#include "independent_check.hpp"

#include "bf16_bits.hpp"

#include <cstring>
#include <sstream>

namespace epcomm::testing {
namespace {

// Every rank's inputs of one round: the fresh dispatch's and the cached dispatch's.
struct RoundInputs {
  std::vector<RankData> data, fresh;
  RoundInputs(const Shape& shape, Routing routing, uint64_t seed) {
    for (int r = 0; r < shape.num_ranks; ++r) {
      data.push_back(make_rank_data(shape, routing, seed, r));
      fresh.push_back(make_rank_data(shape, routing, seed + 0x5eed, r));
    }
  }
};

std::string check_rank(const Shape& shape, const RoundInputs& in, int r, const RankOutputs& out,
                       bool y_is_recv_x) {
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
    for (int d = 0; d < R; ++d) reach += reaches(in.data[r], t, d) ? 1 : 0;
    for (int h = 0; h < H; ++h) {
      uint16_t x, got;
      std::memcpy(&x, in.data[r].x.data() + (static_cast<size_t>(t) * H + h) * 2, 2);
      std::memcpy(&got, out.combined.data() + (static_cast<size_t>(t) * H + h) * 2, 2);
      // A token sent nowhere comes back as +0, whatever the sign of x.
      const uint16_t want = reach == 0 ? 0 : bf16_of(float_of(x) * static_cast<float>(reach));
      if (got != want) {
        err << "rank " << r << " token " << t << " h " << h << ": combined " << got
            << ", expected " << want << " (x times " << reach << ")";
        return err.str();
      }
    }
  }
  return "";
}

}  // namespace

std::string check_independently(const Shape& shape, Routing routing, uint64_t seed,
                                const std::vector<RankOutputs>& outputs, bool y_is_recv_x) {
  const RoundInputs in(shape, routing, seed);
  for (int r = 0; r < shape.num_ranks; ++r) {
    const std::string err = check_rank(shape, in, r, outputs[r], y_is_recv_x);
    if (!err.empty()) return err;
  }
  return "";
}

std::string check_rank_independently(const Shape& shape, Routing routing, uint64_t seed,
                                     int rank, const RankOutputs& out, bool y_is_recv_x) {
  return check_rank(shape, RoundInputs(shape, routing, seed), rank, out, y_is_recv_x);
}

}  // namespace epcomm::testing
