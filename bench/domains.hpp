// epcomm-bench --mode domains: the bytes each rank's dispatch and combine would move across
// NVLink domains of --ranks-per-domain ranks on the hierarchical path (DESIGN section 11),
// against sending once per remote destination, from the bench workload's routing alone: the
// counts a cluster's NIC bandwidth turns into time. Nothing is timed there; the timed rows
// across domains (--launcher mpi --transport nvshmem --ranks-per-domain N) print the same counts
// in the bytes the high-throughput path puts (print_timed_domain_bytes).
#pragma once

#include "bench_options.hpp"

namespace epcomm::bench {

int run_domains(const BenchOptions& options);
// The bytes the timed token-major rows put across domains, per rank (records and partials).
void print_timed_domain_bytes(const BenchOptions& options);

}  // namespace epcomm::bench
