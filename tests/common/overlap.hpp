// Collective calls issued back to back with no host synchronisation between them (DESIGN
// section 13): a random schedule of fresh and cached dispatches, combines (repeated ones too,
// zero-copy and staged) and low-latency pairs, with T, K, routing and rows fresh every round.
// Used by the overlap tests and the bench's soak mode.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "memory.hpp"
#include "workload.hpp"

namespace epcomm::testing {

struct OverlapOptions {
  int rounds = 60;
  uint64_t seed = 1;
  // Interleave low-latency pairs (needs Config::ll_max_tokens_per_rank > 0).
  bool low_latency = true;
};

// One rank's outputs in issue order: each caller buffer a call wrote, whole (its poisoned
// bytes past what the call should write included), so that a comparison with the host
// reference also catches writes past the end.
struct OverlapOutputs {
  std::vector<std::string> names;  // "round 3: combine 2 of the cached dispatch: out"
  std::vector<std::vector<unsigned char>> bytes;
  int calls = 0;  // collective calls issued
  int rounds = 0;
};

// The Config the overlap tests use: 4 experts per rank, H = hidden, T <= 32, K <= 4, 6 SMs,
// low-latency mode with M = 16, and Config::sequence_start = sequence_start.
Config overlap_config(int num_ranks, Algorithm algorithm, DType dtype, IndexType index_type,
                      int hidden, uint64_t sequence_start);

// Collective: every rank calls it with the same options and its own communicator. The host
// waits only before the first call (uploads, poison) and after the last one (downloads).
// Dispatches run in worst-case mode (wait_num_recv = false), so no call waits on the host.
OverlapOutputs run_overlap(Communicator& comm, Bootstrap& bootstrap, Memory& memory,
                           const OverlapOptions& options);

// R ranks as threads of one process (GPU rank % device count for CUDA); outputs[rank].
std::vector<OverlapOutputs> run_overlap_cluster(Backend backend, const Config& config,
                                                int num_ranks, const OverlapOptions& options);

// "" when identical; else the first buffer that differs and where.
std::string first_difference(const OverlapOutputs& want, const OverlapOutputs& got);

}  // namespace epcomm::testing
