// Calls back to back with no host synchronisation, one rank per process (mpirun, CUDA IPC):
// every rank's outputs against the host reference, which each process computes for all ranks
// on threads of its own (DESIGN section 13).
#include <mpi.h>

#include <sstream>
#include <vector>

#include "epcomm/epcomm.hpp"
#include "epcomm/mpi_bootstrap.hpp"
#include "mpi_check.hpp"
#include "overlap.hpp"

namespace epcomm {
namespace {

using testing::Checks;

struct Case {
  Algorithm algorithm = Algorithm::kFlat;
  DType dtype = DType::kBF16;
  IndexType index_type = IndexType::kInt64;
  uint64_t sequence_start = 0;
  int rounds = 60;
  uint64_t seed = 1;
};

std::string case_name(const Case& c, int num_ranks) {
  std::ostringstream os;
  os << to_string(c.algorithm) << "_" << to_string(c.dtype) << "_" << to_string(c.index_type)
     << "_R" << num_ranks << "_rounds" << c.rounds << "_start" << c.sequence_start;
  return os.str();
}

std::vector<Case> make_cases(int) {
  return {{Algorithm::kFlat, DType::kBF16, IndexType::kInt64, 0, 60, 21},
          {Algorithm::kFlat, DType::kFP8E4M3, IndexType::kInt32, 0, 60, 22},
          {Algorithm::kRing, DType::kBF16, IndexType::kInt64, 0, 40, 23},
          {Algorithm::kFlat, DType::kBF16, IndexType::kInt64, (1ull << 32) - 3, 12, 24}};
}

bool run_case(Checks& checks, const std::shared_ptr<MpiBootstrap>& bootstrap,
              testing::Memory& memory, int device, const Case& c) {
  const int rank = bootstrap->rank(), R = bootstrap->size();
  const std::string name = case_name(c, R);
  if (rank == 0) {
    std::printf("case %s seed %llu\n", name.c_str(), static_cast<unsigned long long>(c.seed));
    std::fflush(stdout);
  }
  const Config cfg =
      testing::overlap_config(R, c.algorithm, c.dtype, c.index_type, 256, c.sequence_start);
  testing::OverlapOptions options;
  options.rounds = c.rounds;
  options.seed = c.seed;
  try {
    const auto want = testing::run_overlap_cluster(Backend::kHost, cfg, R, options);
    auto comm = Communicator::create(bootstrap, cfg, Backend::kCuda, device);
    const testing::OverlapOutputs got = testing::run_overlap(*comm, *bootstrap, memory, options);
    const std::string diff = testing::first_difference(want[rank], got);
    checks.expect(diff.empty(), name + " seed " + std::to_string(c.seed) + ": " + diff);
    bootstrap->barrier();  // no rank tears down while a peer still reads its pool
    return true;
  } catch (const std::exception& e) {
    checks.expect(false, name + " seed " + std::to_string(c.seed) + ": " + e.what());
    return false;
  }
}

}  // namespace
}  // namespace epcomm

// Usage: mpi_overlap_test [--first N]   (N: run only the first N cases)
int main(int argc, char** argv) {
  using namespace epcomm;
  return testing::run_case_program(argc, argv, "mpi_overlap_test", make_cases, run_case);
}
