// Low-latency conformance with one rank per process (mpirun; CUDA IPC, or NVSHMEM with any
// domain split): every rank's outputs against the host reference, which each process computes
// for all ranks on threads of its own (the same for every split).
#include <mpi.h>

#include <algorithm>
#include <memory>
#include <sstream>
#include <vector>

#include "epcomm/epcomm.hpp"
#include "epcomm/mpi_bootstrap.hpp"
#include "ll_harness.hpp"
#include "mpi_check.hpp"

namespace epcomm {
namespace {

using testing::Checks;
using testing::LowLatencyRoundOptions;
using testing::LowLatencyShape;
using testing::Routing;

struct Case {
  LowLatencyShape shape;
  Routing routing = Routing::kUniform;
  LowLatencyRoundOptions options;
  int rounds = 2;
  uint64_t seed = 1;
};

std::string case_name(const Case& c) {
  std::ostringstream os;
  os << c.shape.name() << "_" << testing::to_string(c.routing) << (c.options.hook ? "_hook" : "")
     << "_inflight" << c.options.in_flight << "_rounds" << c.rounds;
  return os.str();
}

// Every (routing, T, dtype) on R ranks; index type, hook, calls in flight, M, H, K and experts
// per rank vary with the case index so that each meets several shapes.
std::vector<Case> make_cases(int num_ranks) {
  std::vector<Case> cases;
  int i = 0;
  for (Routing routing : {Routing::kUniform, Routing::kSkewed, Routing::kAllToOne,
                          Routing::kOneRankEmpty, Routing::kWithHoles}) {
    for (int t_kind = 0; t_kind < 3; ++t_kind) {
      for (bool fp8 : {false, true}) {
        Case c;
        c.routing = routing;
        c.shape.num_ranks = num_ranks;
        c.shape.max_tokens = i % 3 == 0 ? 32 : 16;
        c.shape.num_tokens = t_kind == 0 ? 0 : t_kind == 1 ? 1 : c.shape.max_tokens;
        c.shape.hidden = i % 4 == 1 ? 512 : (i % 2 ? 256 : 128);
        c.shape.num_experts = num_ranks * (i % 3 == 2 ? 1 : 4);
        c.shape.num_topk = i % 5 == 0 ? 8 : 1 + i % 4;
        c.shape.use_fp8 = fp8;
        c.shape.scales =
            fp8 ? static_cast<LowLatencyShape::Scales>(i / 2 % 3) : LowLatencyShape::Scales::kFloat;
        c.shape.masked_ranks = num_ranks > 2 && i % 7 == 3 ? 1u << (num_ranks - 1) : 0u;
        c.options.wait_stats = i % 2 == 1;
        c.shape.index_type = (i / 2) % 2 ? IndexType::kInt32 : IndexType::kInt64;
        c.options.hook = (i / 3) % 2 == 1;
        c.options.in_flight = (i / 4) % 2 ? 2 : 1;
        c.seed = 16000 + 10 * i;
        cases.push_back(c);
        ++i;
      }
    }
  }
  // Buffer reuse over many calls: both buffers alternate, fresh routing and rows every round.
  Case many;
  many.shape.num_ranks = num_ranks;
  many.shape.max_tokens = 32;
  many.shape.num_tokens = 32;
  many.shape.hidden = 512;
  many.shape.num_experts = 4 * num_ranks;
  many.shape.num_topk = 8;
  many.routing = Routing::kWithHoles;
  many.options.hook = true;
  many.options.in_flight = 2;
  many.rounds = 100;
  many.seed = 17000;
  cases.push_back(many);
  return cases;
}

// Collective over MPI_COMM_WORLD: true on every rank when `ok` is true on every rank.
bool all_ok(bool ok) {
  int mine = ok ? 1 : 0, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}

// Collective: runs one case on this rank. Returns false on every rank when any rank could not
// finish a round (the ranks stop together rather than wait for one that left).
bool run_case(Checks& checks, const std::shared_ptr<MpiBootstrap>& bootstrap,
              testing::Memory& memory, int device, const Case& c) {
  const int rank = bootstrap->rank();
  const std::string name = case_name(c) + " seed " + std::to_string(c.seed);
  if (rank == 0) {
    std::printf("case %s\n", name.c_str());
    std::fflush(stdout);
  }
  std::vector<std::vector<std::vector<testing::LowLatencyRankOutputs>>> want;
  std::unique_ptr<Communicator> comm;
  bool ok = true;
  try {
    want = testing::run_ll_cluster(Backend::kHost, c.shape, c.routing, c.seed, c.options, c.rounds);
    Config config = testing::ll_config_for(c.shape);
    config.transport = testing::program_transport();
    config.ranks_per_domain = testing::program_ranks_per_domain();
    // Under an MPS share (the nvshmem runs) the device shows fewer SMs than the default 16.
    config.dispatch_sms = config.combine_sms =
        std::min(config.dispatch_sms, testing::cuda_sm_count(device));
    comm = Communicator::create(bootstrap, config, Backend::kCuda, device);
  } catch (const std::exception& e) {
    checks.expect(false, name + ": " + e.what());
    ok = false;
  }
  for (int round = 0; round < c.rounds && all_ok(ok); ++round) {
    try {
      const auto got = testing::run_ll_round(*comm, *bootstrap, memory, c.shape, c.routing,
                                             c.seed + 2 * static_cast<uint64_t>(round), c.options);
      for (int p = 0; p < c.options.in_flight; ++p) {
        const std::string diff = testing::first_difference(want[round][p][rank], got[p]);
        checks.expect(diff.empty(), name + " round " + std::to_string(round) + " pair " +
                                        std::to_string(p) + ": " + diff);
      }
    } catch (const std::exception& e) {
      checks.expect(false, name + " round " + std::to_string(round) + ": " + e.what());
      ok = false;
    }
  }
  if (!all_ok(ok)) return false;
  bootstrap->barrier();  // no rank tears down while a peer may still reach its memory
  return true;
}

}  // namespace
}  // namespace epcomm

// Usage: mpi_ll_conformance_test [--first N]   (N: run only the first N cases)
int main(int argc, char** argv) {
  using namespace epcomm;
  return testing::run_case_program(argc, argv, "mpi_ll_conformance_test", make_cases, run_case);
}
