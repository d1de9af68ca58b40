// epcomm-bench command line.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "epcomm/epcomm.hpp"

namespace epcomm::bench {

// ht: the high-throughput dispatch/combine (DESIGN section 9); ll: the low-latency mode
// (section 10), timed by ll_bench.cpp; soak: random back-to-back calls checked against the
// reference for a while (soak.cpp); domains: the bytes the workload's routing sends across
// NVLink domains (section 11; domains.cpp).
enum class BenchMode { kHighThroughput, kLowLatency, kSoak, kDomains };

struct BenchOptions {
  BenchMode mode = BenchMode::kHighThroughput;
  Backend backend = Backend::kHost;
  int ranks = 8;
  int tokens = 0;  // 0: 4096 on GPUs, 512 on the host backend
  int hidden = 7168;
  int topk = 8;
  int experts = 256;
  DType dtype = DType::kBF16;
  std::vector<Algorithm> algorithms{Algorithm::kFlat};
  // --layouts: the receive layouts timed on the flat path (the ring delivers token-major rows
  // only), and --expert-alignment: DispatchOptions::expert_alignment of expert-major rows.
  std::vector<RecvLayout> layouts{RecvLayout::kTokenMajor, RecvLayout::kExpertMajor};
  int expert_alignment = 1;
  std::vector<int> sms{16};
  int ring_slots = 32;  // ring path: entries per ring (Config::ring_slots)
  int ring_chunk = 8;   // ring path: rows published at once (Config::ring_chunk)
  int warmup = 5;
  int iters = 20;
  uint64_t seed = 1;
  bool check = true;
  std::string json_path;
  std::string plot_path;
  bool mpi = false;  // --launcher mpi: this process is one rank of an mpirun job
  Transport transport = Transport::kIpc;  // --transport: Config::transport of every communicator
  // --mode ll: --tokens is a list (1,32,128,256 on GPUs; 1,8 on the host backend), both dtypes
  // by default, and each figure comes from `replays` timed replays (200 on GPUs, 20 on host).
  std::vector<int> ll_tokens;
  std::vector<DType> ll_dtypes{DType::kBF16, DType::kFP8E4M3};
  int replays = 0;
  int loop_calls = 16;     // --mode ll on GPUs: dispatch + combine pairs per loop graph (0: none)
  int soak_seconds = 300;  // --mode soak: run batches for this long
  int soak_batch_rounds = 100;  // --mode soak: rounds between two host synchronisations
  int ranks_per_domain = 0;     // --mode domains: ranks per NVLink domain (dividing --ranks)

  // Set by main for --launcher mpi: the job's bootstrap, this process's GPU, and whether it
  // prints (rank 0 only).
  std::shared_ptr<Bootstrap> world;
  int device = 0;
  bool prints = true;
};

// Parses argv; prints usage and returns false on --help or a bad flag.
bool parse_options(int argc, char** argv, BenchOptions* out);

}  // namespace epcomm::bench
