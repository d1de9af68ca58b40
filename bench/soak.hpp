// epcomm-bench --mode soak: random back-to-back calls checked against the host reference.
#pragma once

#include "bench_options.hpp"

namespace epcomm::bench {

// Runs batches of --batch-rounds random rounds for --seconds seconds (every rank of an mpirun
// job calls it); prints rounds, calls, failures and the seeds. Returns 0 when every output of
// every round matched the host reference.
int run_soak(const BenchOptions& options);

}  // namespace epcomm::bench
