// Built against the installed package's epcomm::mpi and run under mpirun: each process
// gathers every rank's value through MpiBootstrap; exits nonzero when one is wrong.
#include <mpi.h>

#include <cstdio>
#include <exception>
#include <vector>

#include "epcomm/epcomm.hpp"
#include "epcomm/mpi_bootstrap.hpp"

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int errors = 0;
  try {
    epcomm::MpiBootstrap bootstrap(MPI_COMM_WORLD, /*timeout_ms=*/20000);
    const int mine = 7 * bootstrap.rank() + 1;
    std::vector<int> all(bootstrap.size(), -1);
    bootstrap.allGather(&mine, all.data(), sizeof(mine));
    for (int r = 0; r < bootstrap.size(); ++r) {
      if (all[r] != 7 * r + 1) {
        std::fprintf(stderr, "rank %d: value of rank %d is %d, expected %d\n", bootstrap.rank(), r,
                     all[r], 7 * r + 1);
        ++errors;
      }
    }
    bootstrap.barrier();
    if (errors == 0 && bootstrap.rank() == 0) {
      std::printf("epcomm %s: MpiBootstrap gathered from %d processes\n", epcomm::version(),
                  bootstrap.size());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    ++errors;
  }
  MPI_Finalize();
  return errors == 0 ? 0 : 1;
}
