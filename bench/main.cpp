// epcomm-bench: checks each configuration against the reference, then times it.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#ifdef EPCOMM_BENCH_WITH_MPI
#include <mpi.h>

#include "epcomm/mpi_bootstrap.hpp"
#endif

#include "bench_options.hpp"
#include "bench_run.hpp"
#include "device_support.hpp"
#include "domains.hpp"
#include "ll_bench.hpp"
#include "report.hpp"
#include "soak.hpp"

using namespace epcomm;

int run(bench::BenchOptions& o);

namespace {

// --launcher mpi: this process becomes one rank; its GPU is its rank on this node.
bool join_mpi_job(int* argc, char*** argv, bench::BenchOptions* o) {
#ifdef EPCOMM_BENCH_WITH_MPI
  MPI_Init(argc, argv);
  o->world = std::make_shared<MpiBootstrap>(MPI_COMM_WORLD, 600000);
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int local_rank = 0;
  MPI_Comm_rank(node, &local_rank);
  MPI_Comm_free(&node);
  const int devices = testing::cuda_device_count();
  o->device = devices > 0 ? local_rank % devices : 0;
  o->ranks = o->world->size();
  o->prints = o->world->rank() == 0;
  return true;
#else
  (void)argc;
  (void)argv;
  (void)o;
  std::fprintf(stderr, "epcomm-bench: --launcher mpi needs a build with MPI\n");
  return false;
#endif
}

void leave_mpi_job(bench::BenchOptions* o) {
#ifdef EPCOMM_BENCH_WITH_MPI
  if (!o->world) return;
  o->world.reset();
  MPI_Finalize();
#else
  (void)o;
#endif
}

}  // namespace

int main(int argc, char** argv) {
  // In-process ranks share each GPU: give every stream its own hardware queue (before the first
  // CUDA call; see check_hardware_queues in src/cuda/cuda_backend.cpp). Not under mpirun: one
  // rank per process needs no more, and under MPS 8 clients x 32 queues exceed what the server
  // grants (clients then fail with "device busy or unavailable").
  bool one_rank_per_process = false;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--launcher" && std::string(argv[i + 1]) == "mpi") {
      one_rank_per_process = true;
    }
  }
  if (!one_rank_per_process) setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", /*overwrite=*/0);
  bench::BenchOptions o;
  if (!bench::parse_options(argc, argv, &o)) return 2;
  if (o.mpi && !join_mpi_job(&argc, &argv, &o)) return 2;
  const int rc = o.mode == bench::BenchMode::kLowLatency ? bench::run_ll_bench(o)
                 : o.mode == bench::BenchMode::kSoak     ? bench::run_soak(o)
                 : o.mode == bench::BenchMode::kDomains  ? bench::run_domains(o)
                                                         : run(o);
  leave_mpi_job(&o);
  return rc;
}

int run(bench::BenchOptions& o) {
  // Only the printing rank talks; every rank takes part in every collective step.
  auto say = [&](const char* fmt, auto... args) {
    if (!o.prints) return;
    std::printf(fmt, args...);
    std::fflush(stdout);
  };
  try {
    bench::Report rep;
    rep.options = o;
    rep.device = o.backend == Backend::kCuda ? bench::device_description() : "host (threads)";
    if (o.world) rep.device += ", " + std::to_string(o.ranks) + " processes (mpirun)";
    if (o.backend == Backend::kCuda && o.prints) {
      rep.copy_gbps = bench::measure_copy_gbps(o.device);
      rep.gpus = bench::gpus_used(o.ranks);
      if (!o.world) rep.p2p_gbps = bench::measure_p2p_gbps();  // several GPUs in this process
      const int ranks_per_gpu = (o.ranks + rep.gpus - 1) / rep.gpus;
      for (int sms : o.sms) {
        auto& probe = rep.sm_copy[sms];
        probe.sms_used = std::min(ranks_per_gpu * sms, bench::device_sms(o.device));
        probe.gbps = bench::measure_sm_copy_gbps(o.device, probe.sms_used, 1);
      }
    }
    for (Algorithm algorithm : o.algorithms) {
      for (RecvLayout layout : o.layouts) {
        if (algorithm == Algorithm::kRing && layout == RecvLayout::kExpertMajor) continue;
        // In-process CUDA ranks are compared with the host reference, computed once per layout.
        std::vector<testing::RankOutputs> reference;
        if (o.check && o.backend == Backend::kCuda && !o.world) {
          say("computing the host reference (%s)...\n", to_string(layout));
          reference = bench::reference_outputs(o, layout);
        }
        for (int sms : o.sms) {
          const bench::Setup setup{algorithm, layout, sms};
          if (o.check) {
            say("[%s %s sms=%d] checking against the reference... ", to_string(algorithm),
                to_string(layout), sms);
            const std::string diff = bench::check_configuration(o, setup, reference);
            if (!diff.empty()) {
              std::printf("MISMATCH: %s\n", diff.c_str());
              return 1;
            }
            say("identical\n");
          }
          say("[%s %s sms=%d] timing %d iterations... ", to_string(algorithm), to_string(layout),
              sms, o.iters);
          rep.rows.push_back(bench::measure(o, setup));
          say("done\n");
        }
      }
    }
    if (!o.prints) return 0;
    for (const auto& m : rep.rows) {  // dispatch's pattern, once per fan-out the rows have
      auto probe = rep.sm_copy.find(m.setup.sms);
      if (probe == rep.sm_copy.end()) continue;
      const int fanout = bench::fanout_of(rep, m);
      if (probe->second.fanout_gbps.count(fanout)) continue;
      probe->second.fanout_gbps[fanout] =
          bench::measure_sm_copy_gbps(o.device, probe->second.sms_used, fanout);
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
