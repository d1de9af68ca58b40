// Runs and measures one configuration (algorithm, SMs) on R ranks.
#pragma once

#include <vector>

#include "bench_options.hpp"
#include "harness.hpp"

namespace epcomm::bench {

struct Measurement {
  Algorithm algorithm = Algorithm::kFlat;
  int sms = 0;
  // Median over iterations of the slowest rank's time.
  double dispatch_ms = 0, cached_ms = 0, combine_ms = 0;
  double recv_rows_per_rank = 0;  // mean over ranks
  double peer_rows_per_rank = 0;  // mean over ranks: received rows that came from other ranks
  double dispatch_min_bytes = 0;  // all ranks: x read once, rows and meta written once
  double cached_min_bytes = 0;
  double combine_min_bytes = 0;  // all ranks: received rows read once, outputs written once
};

Config bench_config(const BenchOptions& o, Algorithm algorithm, int sms);
testing::Shape bench_shape(const BenchOptions& o);

// The reference outputs for the bench workload (host backend), computed once.
std::vector<testing::RankOutputs> reference_outputs(const BenchOptions& o);

// Runs one round on the configured backend and compares with `reference` (or, for the host
// backend, with the independent computation). Returns "" or the first difference.
std::string check_configuration(const BenchOptions& o, Algorithm algorithm, int sms,
                                const std::vector<testing::RankOutputs>& reference);

Measurement measure(const BenchOptions& o, Algorithm algorithm, int sms);

}  // namespace epcomm::bench
