// Checks round outputs against a computation straight from the generated inputs, sharing no
// code with any backend: which rows arrive where and in what order, the cached rows, and (bf16,
// y = recv_x) combine = x times the number of ranks the token reached. The expert-major check
// recomputes everything of docs/design.md section 24, both combines included.
#pragma once

#include <string>
#include <vector>

#include "harness.hpp"

namespace epcomm::testing {

// outputs[rank] from run_round with `seed`; returns "" or the first problem found.
std::string check_independently(const Shape& shape, Routing routing, uint64_t seed,
                                const std::vector<RankOutputs>& outputs, bool y_is_recv_x);

// The same check for one rank's outputs (for ranks that are separate processes). With
// ranks_per_domain = L < R the combine is checked in DESIGN section 11's order: per domain of L
// ranks, rounded to bf16, the domains added in ascending order.
std::string check_rank_independently(const Shape& shape, Routing routing, uint64_t seed, int rank,
                                     const RankOutputs& out, bool y_is_recv_x,
                                     int ranks_per_domain = 0);

// Expert-major rounds (options.layout = kExpertMajor, run by run_round on communicators of
// `config`): num_recv, expert_offsets, num_recv_per_expert, every row's recv_src,
// recv_topk_slot, recv_weight, x and scales (padding rows zero and marked), the cached rows, and
// both combines (each token's pairs in ascending slot order in fp32, fmaf with the weight when
// options.apply_weights, then bias and bias2, one rounding; with config.ranks_per_domain = L < R
// a partial per domain of L ranks, rounded to bf16, the partials added in ascending domain
// order) from every rank's inputs and the y and biases of combine_y_row / combine_bias. Returns
// "" or the first problem found.
std::string check_expert_major(const Shape& shape, Routing routing, uint64_t seed,
                               const std::vector<RankOutputs>& outputs, const RoundOptions& options,
                               const Config& config);

// The same check for one rank's outputs (for ranks that are separate processes).
std::string check_expert_major_rank(const Shape& shape, Routing routing, uint64_t seed, int rank,
                                    const RankOutputs& out, const RoundOptions& options,
                                    const Config& config);

}  // namespace epcomm::testing
