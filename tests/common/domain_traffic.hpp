// What crosses NVLink domains (DESIGN section 11) for one rank's tokens, from its routing alone:
// the figure a NIC's bandwidth bounds on a real cluster. Used by epcomm-bench --mode domains.
#pragma once

#include "epcomm/epcomm.hpp"
#include "workload.hpp"

namespace epcomm::testing {

struct DomainTraffic {
  // The hierarchical path: a token crosses to each remote domain it reaches once (its row and
  // meta: expert-major, one meta row per pair there), and combine brings back one bf16 partial
  // per remote domain.
  double dispatch_bytes = 0, combine_bytes = 0;
  // Sent once per remote destination rank (expert-major: per remote pair), as a flat path over
  // the network would.
  double direct_dispatch_bytes = 0, direct_combine_bytes = 0;
};

struct TrafficShape {
  int num_ranks = 0, experts_per_rank = 0, ranks_per_domain = 0, hidden = 0;
  RecvLayout layout = RecvLayout::kTokenMajor;
  double row_bytes = 0;   // a dispatched row
  double meta_bytes = 0;  // its meta row (token-major: per destination; expert-major: per pair)
};

// Rank `rank`'s bytes out (dispatch) and in (combine) across domains of
// shape.ranks_per_domain ranks; slots naming -1 or an expert already named count once.
DomainTraffic domain_traffic(const RankData& routing, int rank, const TrafficShape& shape);

}  // namespace epcomm::testing
