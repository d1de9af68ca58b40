// epcomm-bench --mode ll: low-latency dispatch and combine latency per tokens per rank and
// dtype, checked against the host reference before it is timed.
#pragma once

#include <string>
#include <vector>

#include "bench_options.hpp"

namespace epcomm::bench {

// Per replay the slowest rank's time, then the median and the 99th percentile over replays.
struct LatencyStat {
  bool measured = false;
  double median_us = 0, p99_us = 0;
};

// One (T, dtype) row.
struct LlCase {
  int tokens = 0;  // T (the harness workload gives the last rank T / 2)
  bool use_fp8 = false;
  std::string problem;  // a mismatch or an error: nothing of this row is reported
  LatencyStat dispatch, combine, dispatch_combine;                    // eager calls
  LatencyStat graph_dispatch, graph_combine, graph_dispatch_combine;  // inside one CUDA graph
  LatencyStat loop_dispatch, loop_combine, loop_dispatch_combine;     // per call, graph of a loop
  LatencyStat dispatch_send, dispatch_recv, combine_send, combine_recv;  // send_only + receive
  double num_messages = 0;         // (token, expert) messages, all ranks
  double num_remote_messages = 0;  // of those, between ranks of different NVLink domains
  double dispatch_min_bytes = 0, combine_min_bytes = 0;  // all ranks; see set_min_bytes()
};

// The bytes of one (token, expert) message's row: 2H bf16, or H fp8 plus its H / 128 fp32
// scales (the payload; the region pads a message and adds a header).
inline double ll_message_row_bytes(int hidden, bool use_fp8) {
  const double H = hidden;
  return use_fp8 ? H + 4.0 * H / kFp8ScaleBlock : 2.0 * H;
}

struct LlReport {
  BenchOptions options;
  std::string device;
  double copy_gbps = 0;  // 0 on the host backend, else of one GPU
  int gpus = 1;          // GPUs the ranks spread over: the least bytes are shared among them
  int max_tokens = 0;    // M
  std::vector<LlCase> cases;
};

// The whole --mode ll run (every rank of an mpirun job calls it); returns the exit status.
int run_ll_bench(const BenchOptions& options);

// ll_report.cpp
void print_ll_tables(const LlReport& report);
void write_ll_json(const LlReport& report, const std::string& path);

}  // namespace epcomm::bench
