// Checks round outputs against a computation straight from the generated inputs, sharing no
// code with any backend: which rows arrive where and in what order, the cached rows, and (bf16,
// y = recv_x) combine = x times the number of ranks the token reached.
#pragma once

#include <string>
#include <vector>

#include "harness.hpp"

namespace epcomm::testing {

// outputs[rank] from run_round with `seed`; returns "" or the first problem found.
std::string check_independently(const Shape& shape, Routing routing, uint64_t seed,
                                const std::vector<RankOutputs>& outputs, bool y_is_recv_x);

// The same check for one rank's outputs (for ranks that are separate processes).
std::string check_rank_independently(const Shape& shape, Routing routing, uint64_t seed,
                                     int rank, const RankOutputs& out, bool y_is_recv_x);

}  // namespace epcomm::testing
