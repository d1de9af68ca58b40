// Low-latency rounds on R ranks (threads) of any backend, with every output collected in host
// memory so that backends can be compared byte for byte. Used by the tests and the bench.
#pragma once

#include <cstdint>
#include <vector>

#include "memory.hpp"
#include "workload.hpp"

namespace epcomm::testing {

struct LowLatencyShape {
  int num_ranks = 2;
  int max_tokens = 8;  // M = Config::ll_max_tokens_per_rank
  int num_tokens = 8;  // T on every rank (<= M); the last rank uses T / 2 to vary T per rank
  int hidden = 256;    // a multiple of 128
  int num_experts = 8;
  int num_topk = 2;
  bool use_fp8 = false;
  // fp8 only: round_scale (power-of-two scales), use_ue8m0 (their UE8M0 codes) as well.
  enum class Scales { kFloat, kPowerOfTwo, kUe8m0 } scales = Scales::kFloat;
  IndexType index_type = IndexType::kInt64;
  // Ranks cut off from all others (bit r: rank r): every other rank masks them and they mask
  // every other rank, before the round's calls, so no wait times out.
  uint32_t masked_ranks = 0;
  std::string name() const;
  bool round_scale() const { return use_fp8 && scales != Scales::kFloat; }
  bool use_ue8m0() const { return use_fp8 && scales == Scales::kUe8m0; }
  // Whether `rank` masks `peer` under masked_ranks.
  bool masks(int rank, int peer) const {
    return rank != peer && ((masked_ranks >> rank) & 1u || (masked_ranks >> peer) & 1u);
  }
};

// A Config for `shape` (ll_max_tokens_per_rank = M; the high-throughput sizes kept small).
Config ll_config_for(const LowLatencyShape& shape);

// T of `rank`: shape.num_tokens, or half of it on the last rank when there are several.
int ll_num_tokens(const LowLatencyShape& shape, int rank);

// One rank's inputs in host memory. Same (shape, routing, seed, rank) gives the same data.
// Routing::kWithHoles also names an expert twice in some tokens (legal in this mode). x mixes
// ordinary blocks with zero, subnormal, huge and wide-spread blocks that stress the fp8 cast.
struct LowLatencyRankData {
  int num_tokens = 0;
  std::vector<uint16_t> x;              // [T][H] bf16
  std::vector<unsigned char> topk_idx;  // [T][K] int32 or int64
  std::vector<float> topk_weights;      // [T][K]
};
LowLatencyRankData make_ll_rank_data(const LowLatencyShape& shape, Routing routing, uint64_t seed,
                                     int rank);

// The expert step the tests stand in with: y row j of local expert le = a deterministic bf16
// function of (seed, rank, le, j) for every one of the R * M rows (written rows or not).
std::vector<uint16_t> make_ll_expert_output(const LowLatencyShape& shape, uint64_t seed, int rank);

struct LowLatencyRankOutputs {
  std::vector<int> recv_count;             // [Le]
  std::vector<int> layout_range;           // [Le][R][2]
  std::vector<unsigned char> recv_x;       // only rows [0, recv_count[le]) of each expert
  std::vector<unsigned char> recv_scales;  // likewise, fp8 only (UE8M0 codes with use_ue8m0)
  std::vector<unsigned char> recv_src;     // likewise, LowLatencySource each
  std::vector<unsigned char> combined;     // [T][H] bf16
};
std::string first_difference(const LowLatencyRankOutputs& want, const LowLatencyRankOutputs& got);

// The byte every output is filled with before a call (run_ll_round, poison_ll_outputs).
constexpr unsigned char kLlPoison = 0xA5;

// For callers that drive the calls themselves (CUDA graphs): poisons every output view of `res`
// (call it after comm.synchronize(), before a collective barrier that precedes the dispatch).
void poison_ll_outputs(Memory& memory, const LowLatencyShape& shape,
                       const LowLatencyDispatchResult& res);
// Downloads the outputs of `res` and `out` ([T][H] bf16 followed by poisoned guard bytes up to
// out_total_bytes). Throws std::runtime_error naming rank, expert and row when a poisoned byte
// past the written rows (or past T rows of out) changed.
LowLatencyRankOutputs collect_ll_outputs(Memory& memory, const LowLatencyShape& shape,
                                         const LowLatencyDispatchResult& res, const void* out,
                                         size_t out_total_bytes, int num_tokens, int rank);

struct LowLatencyRoundOptions {
  bool hook = false;  // send_only on dispatch and combine, then low_latency_receive
  int in_flight = 1;  // 1: dispatch, combine; 2: dispatch A, dispatch B, combine A, combine B
  // Pass wait_cost_stats to every call and check that the masked ranks' entries stay 0 and the
  // others never decrease (the host reference leaves them all unchanged).
  bool wait_stats = false;
};

// Sets this rank's masks for shape.masked_ranks (low_latency_update_mask for every peer).
void apply_ll_masks(Communicator& comm, const LowLatencyShape& shape);

// Collective. Runs `options.in_flight` dispatch/combine pairs on `comm` (seeds seed, seed + 1),
// with every output poisoned before the call, and returns one output set per pair. Throws
// std::runtime_error when a call wrote where it must not (rows past recv_count, out past T).
std::vector<LowLatencyRankOutputs> run_ll_round(Communicator& comm, Bootstrap& bootstrap,
                                                Memory& memory, const LowLatencyShape& shape,
                                                Routing routing, uint64_t seed,
                                                const LowLatencyRoundOptions& options);

// R communicators of `backend` on R threads (GPU rank % device_count for CUDA), `rounds` rounds
// with seeds seed, seed + 2, ...; returns outputs[round][pair][rank].
std::vector<std::vector<std::vector<LowLatencyRankOutputs>>> run_ll_cluster(
    Backend backend, const LowLatencyShape& shape, Routing routing, uint64_t seed,
    const LowLatencyRoundOptions& options, int rounds = 1);

// The same with a Config of the caller's (ll_config_for(shape) with other knobs, e.g. SMs).
std::vector<std::vector<std::vector<LowLatencyRankOutputs>>> run_ll_cluster(
    Backend backend, const Config& config, const LowLatencyShape& shape, Routing routing,
    uint64_t seed, const LowLatencyRoundOptions& options, int rounds = 1);

}  // namespace epcomm::testing
