// Misuse scenarios that run the same on every backend, for tests that compare them.
#pragma once

#include <string>
#include <vector>

#include "epcomm/epcomm.hpp"

namespace epcomm::testing {

struct OtherIdsResult {
  std::vector<uint16_t> with_dispatch_ids;  // out of a combine given its dispatch's topk_idx
  std::vector<uint16_t> with_other_ids;     // out of one given other ids with equal counts
  std::string error;                        // what synchronize threw after the second
};

// One rank: two low-latency rounds with the same inputs, the second combine given topk_idx
// {2, 3, 0, 1} where its dispatch had {0, 1, 2, 3} (E = 4, T = 2, K = 2, H = 128).
OtherIdsResult low_latency_combine_with_other_ids(Backend backend);

}  // namespace epcomm::testing
