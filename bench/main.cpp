// epcomm-bench: checks each configuration against the reference, then times it.
#include <cstdio>
#include <cstdlib>

#include "bench_options.hpp"
#include "bench_run.hpp"
#include "device_support.hpp"
#include "report.hpp"

using namespace epcomm;

int main(int argc, char** argv) {
  // Several ranks of this process share each GPU: give every stream its own hardware queue
  // (before the first CUDA call; see check_hardware_queues in src/cuda/cuda_backend.cpp).
  setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", /*overwrite=*/0);
  bench::BenchOptions o;
  if (!bench::parse_options(argc, argv, &o)) return 2;
  try {
    bench::Report rep;
    rep.options = o;
    rep.device = o.backend == Backend::kCuda ? bench::device_description() : "host (threads)";
    if (o.backend == Backend::kCuda) rep.copy_gbps = bench::measure_copy_gbps(0);
    std::vector<testing::RankOutputs> reference;
    if (o.check && o.backend == Backend::kCuda) {
      std::printf("computing the host reference...\n");
      std::fflush(stdout);
      reference = bench::reference_outputs(o);
    }
    for (Algorithm algorithm : o.algorithms) {
      for (int sms : o.sms) {
        if (o.check) {
          std::printf("[%s sms=%d] checking against the reference... ", to_string(algorithm), sms);
          std::fflush(stdout);
          const std::string diff = bench::check_configuration(o, algorithm, sms, reference);
          if (!diff.empty()) {
            std::printf("MISMATCH: %s\n", diff.c_str());
            return 1;
          }
          std::printf("identical\n");
        }
        std::printf("[%s sms=%d] timing %d iterations... ", to_string(algorithm), sms, o.iters);
        std::fflush(stdout);
        rep.rows.push_back(bench::measure(o, algorithm, sms));
        std::printf("done\n");
        std::fflush(stdout);
      }
    }
    bench::print_table(rep);
    if (!o.json_path.empty()) bench::write_json(rep, o.json_path);
    if (!o.plot_path.empty()) {
      const std::string cmd = std::string("python3 ") + EPCOMM_SOURCE_DIR +
                              "/scripts/plot_bench.py " + o.json_path + " " + o.plot_path;
      if (o.json_path.empty() || std::system(cmd.c_str()) != 0) {
        std::fprintf(stderr, "epcomm-bench: --plot needs --json and python3 with matplotlib\n");
        return 1;
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "epcomm-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
