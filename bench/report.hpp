// The bench's table and JSON.
#pragma once

#include <string>
#include <vector>

#include "bench_options.hpp"
#include "bench_run.hpp"

namespace epcomm::bench {

struct Report {
  BenchOptions options;
  std::string device;
  double copy_gbps = 0;  // 0 on the host backend
  double p2p_gbps = 0;   // with several GPUs: measured peer copy bandwidth per GPU and direction
  std::vector<Measurement> rows;
};

void print_table(const Report& report);
void write_json(const Report& report, const std::string& path);

}  // namespace epcomm::bench
