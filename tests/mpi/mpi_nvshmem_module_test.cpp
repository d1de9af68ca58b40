// epcomm's NVSHMEM module under mpirun: NVSHMEM started the way a Config::transport = nvshmem
// communicator starts it (NvshmemHeap: host library through dlopen, unique id over
// MpiBootstrap), the embedded module loaded and bound with nvshmemx_cumodule_init, and its
// kernels doing the transport's device work: over many rounds of fresh data every rank puts
// its block with a signal into every peer's poisoned pool and waits, bounded, for each peer's
// signal; every word is checked. A wait for a signal nobody sends must report a timeout with
// the value it saw instead of hanging.
#include <cuda_runtime.h>
#include <mpi.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "cuda/nvshmem_heap.hpp"
#include "cuda/nvshmem_module.hpp"
#include "epcomm/epcomm.hpp"
#include "epcomm/mpi_bootstrap.hpp"
#include "mpi_check.hpp"
#include "nvshmem_rounds.hpp"

namespace epcomm {
namespace {

using cuda::NvshmemHeap;
using cuda::NvshmemModule;
using nvshmem::PutSignalOp;
using nvshmem::SignalWait;
using testing::Checks;

constexpr int kWords = testing::kRoundWords;
constexpr unsigned long long kWaitNs = 10ull * 1000 * 1000 * 1000;
constexpr unsigned long long kShortWaitNs = 20ull * 1000 * 1000;

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw Error(ErrorCode::kCuda, std::string(what) + ": " + cudaGetErrorString(status));
  }
}

void run(Checks& checks, int world_rank, int world_size) {
  MpiBootstrap bootstrap(MPI_COMM_WORLD, testing::kMpiBootstrapTimeoutMs);
  auto heap = NvshmemHeap::join(bootstrap);
  const int pe = heap->pe(), n = heap->num_pes();
  checks.expect(pe == world_rank && n == world_size, "PE numbering follows the ranks");
  auto module = NvshmemModule::load(*heap);

  const size_t pool_words = static_cast<size_t>(n) * kWords;
  // Symmetric: the pool (slot s: source s's block), this rank's source block (a put's source
  // must be registered memory on a NIC), one signal per source, and one nobody raises.
  auto* pool = static_cast<uint32_t*>(heap->allocate(pool_words * sizeof(uint32_t)));
  auto* mine = static_cast<uint32_t*>(heap->allocate(kWords * sizeof(uint32_t)));
  auto* signals = static_cast<uint64_t*>(heap->allocate((n + 1) * sizeof(uint64_t)));
  PutSignalOp* ops = nullptr;
  SignalWait* waits = nullptr;
  check_cuda(cudaMalloc(&ops, n * sizeof(PutSignalOp)), "cudaMalloc");
  check_cuda(cudaMallocManaged(&waits, n * sizeof(SignalWait)), "cudaMallocManaged");
  cudaStream_t stream = nullptr;
  check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");

  // Block b of the put kernel sends this rank's block to PE (pe + 1 + b) % n, into slot pe,
  // adding 1 to that PE's signal of source pe.
  std::vector<PutSignalOp> host_ops;
  for (int b = 0; b + 1 < n; ++b) {
    host_ops.push_back(PutSignalOp{pool + static_cast<size_t>(pe) * kWords, mine,
                                   kWords * sizeof(uint32_t), signals + pe, 1, (pe + 1 + b) % n});
  }
  check_cuda(cudaMemcpy(ops, host_ops.data(), host_ops.size() * sizeof(PutSignalOp),
                        cudaMemcpyHostToDevice),
             "ops");
  std::vector<uint32_t> host(pool_words);
  for (int round = 0; round < testing::kNumRounds; ++round) {
    testing::start_round(pool, n, mine, pe, round);
    int num_waits = 0;
    for (int s = 0; s < n; ++s) {
      if (s != pe) waits[num_waits++] = SignalWait{signals + s, uint64_t(round + 1), 0, -1};
    }
    module->put_signal(ops, static_cast<int>(host_ops.size()), static_cast<int>(host_ops.size()),
                       stream);
    module->wait_signals(waits, num_waits, kWaitNs, stream);
    check_cuda(cudaStreamSynchronize(stream), "put_signal + wait_signals");
    for (int w = 0; w < num_waits; ++w) {
      checks.expect(waits[w].timed_out == 0 && waits[w].seen == uint64_t(round + 1),
                    "round " + std::to_string(round) + ": wait for " + std::to_string(round + 1) +
                        " saw " + std::to_string(waits[w].seen) +
                        (waits[w].timed_out ? " and timed out" : ""));
    }
    check_cuda(cudaMemcpy(host.data(), pool, pool_words * 4, cudaMemcpyDeviceToHost), "read");
    const int wrong = testing::wrong_round_words(host, n, pe, round);
    checks.expect(wrong == 0, "round " + std::to_string(round) + ": " + std::to_string(wrong) +
                                  " words differ from the sources' blocks");
    MPI_Barrier(MPI_COMM_WORLD);  // every pool read before the next round poisons it
  }

  // Nobody raises signals[n]: the wait ends at its bound and says what it saw (0).
  waits[0] = SignalWait{signals + n, 1, 99, -1};
  module->wait_signals(waits, 1, kShortWaitNs, stream);
  check_cuda(cudaStreamSynchronize(stream), "bounded wait");
  checks.expect(waits[0].timed_out == 1 && waits[0].seen == 0,
                "a wait for a signal nobody raises timed out (" +
                    std::to_string(waits[0].timed_out) + ") at " + std::to_string(waits[0].seen));

  module.reset();
  check_cuda(cudaStreamDestroy(stream), "cudaStreamDestroy");
  check_cuda(cudaFree(ops), "cudaFree");
  check_cuda(cudaFree(waits), "cudaFree");
  heap->release(signals);
  heap->release(mine);
  heap->release(pool);
}

}  // namespace
}  // namespace epcomm

int main(int argc, char** argv) {
  return epcomm::testing::run_gpu_program(
      argc, argv, "mpi_nvshmem_module_test", [](epcomm::testing::Checks&) {},
      [](epcomm::testing::Checks& checks, int rank, int size, int device) {
        epcomm::check_cuda(cudaSetDevice(device), "cudaSetDevice");
        epcomm::run(checks, rank, size);
      });
}
