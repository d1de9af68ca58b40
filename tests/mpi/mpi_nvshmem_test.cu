// The NVSHMEM transport's base under mpirun: every rank becomes a PE through epcomm's
// MpiBootstrap (rank 0's unique id spread by allGather); peers' symmetric memory is reached by
// load/store where NVSHMEM maps it; and over many rounds of fresh data every rank receives
// every peer's block by put-with-signal, checked word for word in a poisoned pool, with every
// signal wait bounded.
#include <cuda_runtime.h>
#include <mpi.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "epcomm/epcomm.hpp"
#include "epcomm/mpi_bootstrap.hpp"
#include "mpi_check.hpp"
#include "nvshmem/nvshmem_session.hpp"
#include "nvshmem/nvshmem_transport.cuh"
#include "nvshmem_rounds.hpp"

namespace epcomm {
namespace {

using testing::Checks;

constexpr int kWords = testing::kRoundWords;
constexpr uint64_t kWaitNs = 10ull * 1000 * 1000 * 1000;

struct WaitReport {
  int timed_out;
  uint64_t seen;
};

// Block b puts this PE's block into slot `pe` of PE (pe + 1 + b) % num_pes; block 0 then
// waits for the num_pes - 1 signals of this round.
__global__ void exchange(uint32_t* pool, const uint32_t* mine, uint64_t* signal, int pe,
                         int num_pes, uint64_t expected, WaitReport* report) {
  const int dest = (pe + 1 + static_cast<int>(blockIdx.x)) % num_pes;
  nvshmem::put_signal_block(pool + static_cast<size_t>(pe) * kWords, mine,
                            kWords * sizeof(uint32_t), signal, 1, dest);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    uint64_t seen = 0;
    report->timed_out = nvshmem::wait_signal_at_least(signal, expected, kWaitNs, &seen) ? 0 : 1;
    report->seen = seen;
  }
  if (threadIdx.x == 0) nvshmem_quiet();
}

// Stores `value` into the next PE's word through the load/store mapping.
__global__ void store_to_peer(int* peer_word, int value) { *peer_word = value; }

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw Error(ErrorCode::kCuda, std::string(what) + ": " + cudaGetErrorString(status));
  }
}

void run(Checks& checks, int world_rank, int world_size) {
  auto bootstrap = std::make_shared<MpiBootstrap>(MPI_COMM_WORLD, testing::kMpiBootstrapTimeoutMs);
  detail::NvshmemSession session(*bootstrap);
  const int pe = session.pe(), num_pes = session.num_pes();
  checks.expect(pe == world_rank && num_pes == world_size, "PE numbering follows the ranks");

  auto* word = static_cast<int*>(session.allocate(sizeof(int)));
  int reachable = 0;
  for (int p = 0; p < num_pes; ++p) reachable += session.peer_pointer(word, p) != nullptr;
  std::printf("rank %d: %d of %d PEs reachable by load/store\n", pe, reachable, num_pes);
  int* next = static_cast<int*>(session.peer_pointer(word, (pe + 1) % num_pes));
  if (next != nullptr) {
    store_to_peer<<<1, 1>>>(next, 1000 + pe);
    check_cuda(cudaDeviceSynchronize(), "store_to_peer");
    MPI_Barrier(MPI_COMM_WORLD);
    int got = 0;
    check_cuda(cudaMemcpy(&got, word, sizeof(int), cudaMemcpyDeviceToHost), "read word");
    const int from = (pe + num_pes - 1) % num_pes;
    checks.expect(got == 1000 + from,
                  "load/store from PE " + std::to_string(from) + ": got " + std::to_string(got));
  }

  const size_t pool_words = static_cast<size_t>(num_pes) * kWords;
  auto* pool = static_cast<uint32_t*>(session.allocate(pool_words * sizeof(uint32_t)));
  auto* signal = static_cast<uint64_t*>(session.allocate(sizeof(uint64_t)));
  uint32_t* mine = nullptr;
  WaitReport* report = nullptr;
  check_cuda(cudaMalloc(&mine, kWords * sizeof(uint32_t)), "cudaMalloc");
  check_cuda(cudaMallocManaged(&report, sizeof(WaitReport)), "cudaMallocManaged");
  std::vector<uint32_t> host(pool_words);
  for (int round = 0; round < testing::kNumRounds; ++round) {
    testing::start_round(pool, num_pes, mine, pe, round);
    const uint64_t expected = static_cast<uint64_t>(round + 1) * (num_pes - 1);
    if (num_pes > 1) {
      exchange<<<num_pes - 1, 256>>>(pool, mine, signal, pe, num_pes, expected, report);
      check_cuda(cudaDeviceSynchronize(), "exchange");
      checks.expect(report->timed_out == 0, "round " + std::to_string(round) +
                                                ": signal wait for " + std::to_string(expected) +
                                                " timed out at " + std::to_string(report->seen));
    }
    check_cuda(cudaMemcpy(host.data(), pool, pool_words * 4, cudaMemcpyDeviceToHost), "read");
    const int wrong = testing::wrong_round_words(host, num_pes, pe, round);
    checks.expect(wrong == 0, "round " + std::to_string(round) + ": " + std::to_string(wrong) +
                                  " words differ from the sources' blocks");
    MPI_Barrier(MPI_COMM_WORLD);  // every pool read before the next round poisons it
  }
  check_cuda(cudaFree(mine), "cudaFree");
  check_cuda(cudaFree(report), "cudaFree");
  session.release(signal);
  session.release(pool);
  session.release(word);
}

}  // namespace
}  // namespace epcomm

int main(int argc, char** argv) {
  using namespace epcomm;
  // Needs no GPU: ranks that are threads of one process are refused before NVSHMEM is touched.
  const auto in_process_refused = [](Checks& checks) {
    try {
      auto threads = make_in_process_bootstraps(1);
      detail::NvshmemSession refused(*threads[0]);
      checks.expect(false, "an in-process bootstrap was accepted");
    } catch (const Error& e) {
      checks.expect(e.code() == ErrorCode::kInvalidArgument &&
                        std::string(e.what()).find("one PE per process") != std::string::npos,
                    std::string("in-process bootstrap refused by name: ") + e.what());
    }
  };
  return testing::run_gpu_program(argc, argv, "mpi_nvshmem_test", in_process_refused,
                                  [](Checks& checks, int rank, int size, int device) {
                                    check_cuda(cudaSetDevice(device), "cudaSetDevice");
                                    run(checks, rank, size);
                                  });
}
