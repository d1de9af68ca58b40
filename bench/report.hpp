// The bench's table and JSON.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "bench_options.hpp"
#include "bench_run.hpp"

namespace epcomm::bench {

struct Report {
  BenchOptions options;
  std::string device;
  double copy_gbps = 0;  // 0 on the host backend, else of one GPU
  int gpus = 1;          // GPUs the ranks spread over: the least bytes are shared among them
  double p2p_gbps = 0;   // with several GPUs: measured peer copy bandwidth per GPU and direction
  // Per SM count of the sweep: copy bandwidth with that many SMs for every rank on one GPU
  // (ranks per GPU x SMs, at most the device's), the bound of a call limited to those SMs;
  // and by fan-out f, the same kernel writing each byte it reads f times: dispatch's pattern,
  // f being a row's received rows per token, rounded (fanout_of).
  struct SmCopy {
    int sms_used = 0;
    double gbps = 0;
    std::map<int, double> fanout_gbps;
  };
  std::map<int, SmCopy> sm_copy;
  std::vector<Measurement> rows;
};

// A row's dispatch fan-out: received rows per token, rounded, at least 1.
int fanout_of(const Report& report, const Measurement& m);
void print_table(const Report& report);
void write_json(const Report& report, const std::string& path);

}  // namespace epcomm::bench
