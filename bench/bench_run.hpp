// Runs and measures one configuration (algorithm, receive layout, SMs) on R ranks.
#pragma once

#include <vector>

#include "bench_options.hpp"
#include "harness.hpp"

namespace epcomm::bench {

struct Setup {
  Algorithm algorithm = Algorithm::kFlat;
  RecvLayout layout = RecvLayout::kTokenMajor;
  int sms = 16;
};

struct Measurement {
  Setup setup;
  // Median over iterations of the slowest rank's time.
  double dispatch_ms = 0, cached_ms = 0, combine_ms = 0;
  double recv_rows_per_rank = 0;  // mean over ranks (expert-major: padding rows included)
  double peer_rows_per_rank = 0;  // mean over ranks: received rows that came from other ranks
  double dispatch_min_bytes = 0;  // all ranks: x read once, rows and meta written once
  double cached_min_bytes = 0;
  double combine_min_bytes = 0;  // all ranks: rows holding data read once, outputs written once
};

// What the bench workload sends where in `layout`, from every rank's routing alone.
struct RoutingCounts {
  std::vector<int> rows;       // [rank]: rows it receives (expert-major: padding included)
  std::vector<int> data_rows;  // [rank]: of those, rows that hold a token (not padding)
  std::vector<int> peer_rows;  // [rank]: of those, rows from other ranks
};
RoutingCounts routing_counts(const BenchOptions& o, RecvLayout layout);

Config bench_config(const BenchOptions& o, const Setup& setup);
testing::Shape bench_shape(const BenchOptions& o);

// The reference outputs for the bench workload in `layout` (host backend), computed once.
std::vector<testing::RankOutputs> reference_outputs(const BenchOptions& o, RecvLayout layout);

// Runs one worst-case round on the configured backend and compares with `reference` (in-process
// CUDA ranks) or with the independent computation (host backend, and each process of an mpirun
// job for its own rank). Returns "" or the first difference.
std::string check_configuration(const BenchOptions& o, const Setup& setup,
                                const std::vector<testing::RankOutputs>& reference);

Measurement measure(const BenchOptions& o, const Setup& setup);

}  // namespace epcomm::bench
