// Ranks agree on one Config before any memory is allocated (DESIGN section 13).
#pragma once

#include "epcomm/bootstrap.hpp"
#include "epcomm/config.hpp"

namespace epcomm::detail {

// Collective. Exchanges every field of `config`; when any rank's Config differs from rank 0's,
// every rank throws Error(kInvalidArgument) naming the first differing field, rank 0's value
// and the first differing rank's value, so no rank is left waiting for the others.
void agree_on_config(Bootstrap& bootstrap, const Config& config);

}  // namespace epcomm::detail
