// Runs dispatch -> combine rounds on R ranks (threads) of any backend and collects the outputs
// in host memory, so that backends can be compared byte for byte.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "memory.hpp"
#include "workload.hpp"

namespace epcomm::testing {

// In-process bootstraps as shared pointers (Communicator::create shares ownership).
std::vector<std::shared_ptr<Bootstrap>> shared_bootstraps(int num_ranks, int timeout_ms);

// Runs fn(rank) on num_ranks threads; after all have ended, rethrows the first failure.
void run_on_ranks(int num_ranks, const std::function<void(int)>& fn);

// Runs fn(r, comm, memory, bootstrap) on R in-process CUDA ranks (rank r on gpu_of_rank(r)),
// each with its own device memory and communicator of `config`, destroyed when fn returns (a
// rank's teardown meets its peers'). Bootstrap waits give up after 60 s.
void on_cuda_ranks(int num_ranks, const Config& config,
                   const std::function<void(int, Communicator&, Memory&, Bootstrap&)>& fn);

struct RoundOptions {
  bool copy_recv_x = false;   // recv_x into a caller buffer instead of the pool view
  bool caller_meta = true;    // meta outputs into caller buffers instead of the communicator's
  bool stage_y = false;       // combine from a separate buffer instead of combine_input()
  bool y_is_recv_x = false;   // bf16 only: y = the received rows themselves
  bool wait_num_recv = true;  // exact mode (host learns num_recv) or worst-case mode
  bool cached = true;         // also run a cached dispatch of fresh rows, and its combine
  int bias = 0;               // combine biases: bit 0 CombineOptions::bias, bit 1 bias2
  // DispatchOptions::layout. kExpertMajor leaves the token-major caller buffers (recv_topk_idx,
  // recv_topk_weights) null, as the API requires; the cached dispatch keeps the layout.
  RecvLayout layout = RecvLayout::kTokenMajor;
  bool apply_weights = false;  // CombineOptions::apply_weights (expert-major, with weights)
  int expert_alignment = 0;    // DispatchOptions::expert_alignment (0: Config's)
};

struct RankOutputs {
  std::vector<int> tokens_per_rank, tokens_per_expert;
  std::vector<unsigned char> is_token_in_rank;
  int num_recv = 0;
  std::vector<unsigned char> recv_x, recv_scales, recv_topk_idx, recv_topk_weights, recv_src;
  std::vector<int> per_expert;
  // Expert-major only (empty otherwise): [num_recv] int32, [num_recv] float, [Le + 1].
  std::vector<unsigned char> recv_topk_slot, recv_weight;
  std::vector<int> expert_offsets;
  std::vector<unsigned char> combined;  // [T][H] bf16
  std::vector<unsigned char> cached_recv_x, cached_recv_scales, cached_combined;
};

// The combine inputs run_round makes, for checks that recompute a combine: y, [num_recv][H]
// random wide bf16 from (seed, rank), and bias `which` (0: bias, 1: bias2), [T][H] from (seed,
// rank). The fresh dispatch's combine uses the round's seed, the cached one's seed +
// kCachedSeedOffset (which also seeds the cached dispatch's rows).
constexpr uint64_t kCachedSeedOffset = 0x5eed;
std::vector<uint16_t> combine_y(const Shape& shape, int num_recv, uint64_t seed, int rank);
// Row `row` of combine_y(shape, n, seed, rank) for any n > row, without the rows before it.
std::vector<uint16_t> combine_y_row(const Shape& shape, uint64_t seed, int rank, int row);
std::vector<uint16_t> combine_bias(const Shape& shape, uint64_t seed, int rank, int which);

// The first difference between two ranks' outputs ("" when identical), for test messages.
std::string first_difference(const RankOutputs& want, const RankOutputs& got);

// One rank's round: layout, dispatch (outputs poisoned first), combine, and optionally a cached
// dispatch with fresh rows and its combine. Checks that nothing was written past num_recv in
// caller buffers (throws std::runtime_error if so). Collective: all ranks call it.
RankOutputs run_round(Communicator& comm, Bootstrap& bootstrap, Memory& memory, const Shape& shape,
                      Routing routing, uint64_t seed, const RoundOptions& options);

// R communicators of `backend` on R threads (GPU rank % device_count for CUDA), `rounds`
// rounds with seeds seed, seed+1, ...; returns outputs[round][rank].
std::vector<std::vector<RankOutputs>> run_cluster(Backend backend, const Config& config,
                                                  const Shape& shape, Routing routing,
                                                  uint64_t seed, const RoundOptions& options,
                                                  int rounds = 1);

}  // namespace epcomm::testing
