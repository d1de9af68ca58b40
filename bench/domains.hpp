// epcomm-bench --mode domains: the bytes each rank's dispatch and combine would move across
// NVLink domains of --ranks-per-domain ranks on the hierarchical path (DESIGN section 11),
// against sending once per remote destination, from the bench workload's routing alone. The
// paths across domains are not built yet, so nothing is timed: these are the counts a cluster's
// NIC bandwidth turns into time.
#pragma once

#include "bench_options.hpp"

namespace epcomm::bench {

int run_domains(const BenchOptions& options);

}  // namespace epcomm::bench
