// Domain traffic from a rank's routing (DESIGN section 11).
#include "domain_traffic.hpp"

#include <vector>

namespace epcomm::testing {

DomainTraffic domain_traffic(const RankData& routing, int rank, const TrafficShape& shape) {
  const int L = shape.ranks_per_domain, home = rank / L;
  const bool pairs = shape.layout == RecvLayout::kExpertMajor;
  const double combine_row = 2.0 * shape.hidden;
  DomainTraffic out;
  std::vector<int> per_rank, per_domain;  // the token's units (ranks or pairs) at each
  for (int t = 0; t < routing.num_tokens; ++t) {
    per_rank.assign(shape.num_ranks, 0);
    for (int k = 0; k < routing.num_topk; ++k) {
      if (!routing.first_slot(t, k)) continue;
      const int dest = static_cast<int>(routing.expert(t, k) / shape.experts_per_rank);
      per_rank[dest] = pairs ? per_rank[dest] + 1 : 1;
    }
    per_domain.assign(shape.num_ranks / L, 0);
    for (int d = 0; d < shape.num_ranks; ++d) per_domain[d / L] += per_rank[d];
    for (int D = 0; D < static_cast<int>(per_domain.size()); ++D) {
      const int units = per_domain[D];
      if (D == home || units == 0) continue;
      // One row into the domain; token-major one meta row with it, expert-major one per pair.
      out.dispatch_bytes += shape.row_bytes + (pairs ? units : 1) * shape.meta_bytes;
      out.direct_dispatch_bytes += units * (shape.row_bytes + shape.meta_bytes);
      out.combine_bytes += combine_row;
      out.direct_combine_bytes += units * combine_row;
    }
  }
  return out;
}

}  // namespace epcomm::testing
