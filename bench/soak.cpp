// epcomm-bench --mode soak: random batches of calls issued back to back (fresh and cached
// dispatches, repeated and zero-copy combines, low-latency pairs; T, K, routing, dtype, index
// type, algorithm and sizes drawn per batch or round), the host synchronising only between
// batches, every output checked against the host reference, for --seconds seconds.
#include "soak.hpp"

#include <chrono>
#include <cstdio>
#include <numeric>
#include <vector>

#include "memory.hpp"
#include "overlap.hpp"

namespace epcomm::bench {
namespace {

// The Config of one batch, drawn from its seed (every rank draws the same).
Config batch_config(const BenchOptions& o, uint64_t seed) {
  testing::Rng rng(seed * 0x5851f42d4c957f2dull + 1);
  Config c;
  const int R = o.ranks;
  c.num_experts = R * (1 << rng.below(4));  // 1, 2, 4 or 8 per rank
  c.hidden = 128 << rng.below(2);           // 128 or 256: fp8 needs multiples of 128
  c.max_tokens_per_rank = 8 + rng.below(25);
  c.max_topk = 1 + rng.below(8);
  c.dtype = rng.below(2) ? DType::kFP8E4M3 : DType::kBF16;
  c.index_type = rng.below(2) ? IndexType::kInt32 : IndexType::kInt64;
  c.algorithm = rng.below(3) == 0 ? Algorithm::kRing : Algorithm::kFlat;
  c.dispatch_sms = c.combine_sms = 2 + rng.below(7);
  c.expert_alignment = 1 + rng.below(4);
  c.ll_max_tokens_per_rank = 4 + rng.below(13);
  c.wait_timeout_ms = 30000;
  return c;
}

std::string describe(const Config& c) {
  char line[256];
  std::snprintf(line, sizeof(line), "%s %s %s E=%d H=%d T<=%d K<=%d sms=%d M=%d",
                to_string(c.algorithm), to_string(c.dtype), to_string(c.index_type), c.num_experts,
                c.hidden, c.max_tokens_per_rank, c.max_topk, c.dispatch_sms,
                c.ll_max_tokens_per_rank);
  return line;
}

// This process's ranks' outputs of one batch on the CUDA backend: every rank in-process, or
// this process's one rank of an mpirun job (the others stay empty).
std::vector<testing::OverlapOutputs> run_batch(const BenchOptions& o, const Config& cfg,
                                               const testing::OverlapOptions& options) {
  if (!o.world) return testing::run_overlap_cluster(Backend::kCuda, cfg, o.ranks, options);
  std::vector<testing::OverlapOutputs> out(o.ranks);
  auto memory = testing::make_memory(Backend::kCuda, o.device);
  auto comm = Communicator::create(o.world, cfg, Backend::kCuda, o.device);
  out[o.world->rank()] = testing::run_overlap(*comm, *o.world, *memory, options);
  o.world->barrier();  // no rank tears down while a peer may still reach its memory
  return out;
}

// Sums `mine` over the job's processes (in-process: already the total).
long long job_total(const BenchOptions& o, long long mine) {
  if (!o.world) return mine;
  std::vector<long long> all(o.world->size());
  o.world->allGather(&mine, all.data(), sizeof(mine));
  return std::accumulate(all.begin(), all.end(), 0ll);
}

}  // namespace

int run_soak(const BenchOptions& o) {
  if (o.backend != Backend::kCuda) {
    std::fprintf(stderr, "epcomm-bench --mode soak: needs a GPU (--backend cuda)\n");
    return 2;
  }
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  long long rounds = 0, calls = 0, failures = 0, batches = 0;
  double last_print = 0;
  if (o.prints) {
    std::printf("epcomm-bench --mode soak: %d ranks%s, %d rounds per batch, %d s, seed %llu\n",
                o.ranks, o.world ? " (processes)" : " (threads)", o.soak_batch_rounds,
                o.soak_seconds, static_cast<unsigned long long>(o.seed));
    std::fflush(stdout);
  }
  while (true) {
    // Every rank stops after the same batch: rank 0's clock decides.
    int go = elapsed() < o.soak_seconds ? 1 : 0;
    if (o.world) {
      std::vector<int> all(o.world->size());
      o.world->allGather(&go, all.data(), sizeof(go));
      go = all[0];
    }
    if (!go) break;
    const uint64_t seed = o.seed + static_cast<uint64_t>(batches);
    const Config cfg = batch_config(o, seed);
    testing::OverlapOptions options;
    options.rounds = o.soak_batch_rounds;
    options.seed = seed;
    long long batch_failures = 0, batch_calls = 0;
    std::string problem;
    try {
      const auto want = testing::run_overlap_cluster(Backend::kHost, cfg, o.ranks, options);
      const auto got = run_batch(o, cfg, options);
      for (int r = 0; r < o.ranks; ++r) {
        if (o.world && r != o.world->rank()) continue;
        batch_calls += got[r].calls;
        const std::string diff = testing::first_difference(want[r], got[r]);
        if (diff.empty()) continue;
        ++batch_failures;
        if (problem.empty()) problem = "rank " + std::to_string(r) + ": " + diff;
      }
    } catch (const std::exception& e) {
      std::printf("soak: batch %lld seed %llu (%s): ERROR %s\n", batches,
                  static_cast<unsigned long long>(seed), describe(cfg).c_str(), e.what());
      std::fflush(stdout);
      return 1;  // a failed call leaves the ranks out of step: later batches would only hang
    }
    if (!problem.empty()) {
      std::printf("soak: batch %lld seed %llu (%s): MISMATCH %s\n", batches,
                  static_cast<unsigned long long>(seed), describe(cfg).c_str(), problem.c_str());
      std::fflush(stdout);
    }
    failures += job_total(o, batch_failures);
    calls += job_total(o, batch_calls);
    rounds += o.soak_batch_rounds;
    ++batches;
    if (o.prints && elapsed() - last_print >= 30) {
      last_print = elapsed();
      std::printf("soak: %.0f s: %lld rounds in %lld batches, %lld calls, %lld failures\n",
                  last_print, rounds, batches, calls, failures);
      std::fflush(stdout);
    }
  }
  if (o.prints) {
    std::printf(
        "soak: done: %lld rounds in %lld batches (seeds %llu..%llu), %lld collective calls on "
        "all ranks, %lld ranks' batches failed, %.0f s\n",
        rounds, batches, static_cast<unsigned long long>(o.seed),
        static_cast<unsigned long long>(o.seed + batches - 1), calls, failures, elapsed());
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace epcomm::bench
