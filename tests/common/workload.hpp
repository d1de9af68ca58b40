// Deterministic random workloads for tests and the bench: inputs of every rank from a seed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "epcomm/epcomm.hpp"

namespace epcomm::testing {

enum class Routing {
  kUniform,       // K distinct experts drawn uniformly (top-k of random scores)
  kSkewed,        // experts of low ranks drawn far more often
  kAllToOne,      // every expert on rank 0 (slots beyond its experts are -1)
  kOneRankEmpty,  // the last rank receives nothing
  kWithHoles,     // uniform, with a quarter of the slots -1 and some tokens sent nowhere
  kRepeats,       // uniform, a quarter of the slots -1, and half the tokens naming one expert in
                  // 2 or more slots (its first slot not always slot 0)
};
const char* to_string(Routing routing);

struct Shape {
  int num_ranks = 2;
  int num_tokens = 16;  // tokens per rank
  int hidden = 256;
  int num_experts = 8;
  int num_topk = 2;
  DType dtype = DType::kBF16;
  IndexType index_type = IndexType::kInt64;
  bool with_weights = true;
  std::string name() const;
};

// One rank's inputs in host memory.
struct RankData {
  int num_tokens = 0;
  int num_topk = 0;
  std::vector<unsigned char> x;         // [T][row_bytes]
  std::vector<float> scales;            // [T][H/128], fp8 only
  std::vector<unsigned char> topk_idx;  // [T][K] int32 or int64
  std::vector<float> topk_weights;      // [T][K], empty without weights
  int64_t expert(int token, int k) const;
  // Whether slot k of the token names an expert that no earlier slot of it names (a
  // (token, expert) pair counts once, under its first slot).
  bool first_slot(int token, int k) const;
};

// Same (shape, routing, seed, rank) gives the same data in any process.
RankData make_rank_data(const Shape& shape, Routing routing, uint64_t seed, int rank);
// make_rank_data's topk_idx alone (the same draws), without weights or rows.
RankData make_rank_routing(const Shape& shape, Routing routing, uint64_t seed, int rank);

// A Config that fits `shape` with room for every token on every rank.
Config config_for(const Shape& shape);

// Receive rows enough for any expert-major dispatch of `shape` at `alignment`: each token gives
// each rank at most min(K, Le) pairs, and each of the Le groups at most alignment - 1 padding rows.
int expert_major_max_rows(const Shape& shape, int alignment);

// Small deterministic generator (splitmix64), the same on every platform.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next();
  double uniform();  // [0, 1)
  int below(int n) { return static_cast<int>(next() % static_cast<uint64_t>(n)); }
  // Advances as `draws` calls of next() would (splitmix64's state moves by one constant per
  // call), so that a check can read one row of a long random sequence without the rest.
  void skip(uint64_t draws) { state_ += draws * kGamma; }

 private:
  static constexpr uint64_t kGamma = 0x9e3779b97f4a7c15ull;
  uint64_t state_;
};

// Finite random bf16 values of random sign. random_bf16: exponents 2^-7 .. 2^1 (every sum of
// a few is exact in fp32). random_wide_bf16: spread over 40 binades (2^-20 .. 2^19), so that
// adding them in another order than the contract's changes the bits of an fp32 sum.
uint16_t random_bf16(Rng& rng);
uint16_t random_wide_bf16(Rng& rng);
// A random e4m3 byte that is not NaN.
uint8_t random_fp8(Rng& rng);

// T tokens' expert ids, [T][K] as int64 or int32 (index_type): K distinct experts per token,
// drawn with each expert's weight under `routing` (1 uniform and with holes, 1/(owner+1)^2
// skewed, only rank 0's experts all to one, none of the last rank's one rank empty); with holes,
// some slots -1 and some tokens sent nowhere, and with repeat_experts (legal in the low-latency
// mode) sometimes an expert named twice; with repeats (whatever repeat_experts says), some slots
// -1 and half the tokens naming one expert in 2 to K slots.
std::vector<unsigned char> draw_topk_idx(Rng& rng, Routing routing, int num_experts, int num_ranks,
                                         int num_tokens, int K, IndexType index_type,
                                         bool repeat_experts);

}  // namespace epcomm::testing
