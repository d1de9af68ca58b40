// NvshmemModule: epcomm's kernels that call NVSHMEM on the device (src/nvshmem/module_kernels.cu),
// loaded from the image embedded in libepcomm into the current CUDA context and bound to the
// process's NVSHMEM job. libepcomm starts NVSHMEM through its host library (NvshmemHeap), so
// these kernels live in a module of their own, device-linked with NVSHMEM's device library at
// build time (src/nvshmem/CMakeLists.txt).
#pragma once

#include <cuda_runtime.h>

#include <memory>

#include "nvshmem/module_abi.hpp"

namespace epcomm::cuda {

class NvshmemHeap;

// The high-throughput puts across domains (module_abi.hpp): after the notify kernel's post, the
// flat send, and the forwarder's partials.
enum class HtPutKind { kCounts = 0, kForward = 1, kPartials = 2 };

class NvshmemModule {
 public:
  // Loads the module into the current context and binds it to `heap`'s job. Throws
  // kUnsupported when this build has no module (no NVSHMEM), kCuda when loading or binding fails.
  static std::unique_ptr<NvshmemModule> load(const NvshmemHeap& heap);
  ~NvshmemModule();
  NvshmemModule(const NvshmemModule&) = delete;
  NvshmemModule& operator=(const NvshmemModule&) = delete;

  // Enqueues the puts `ops[0, n)` (device memory) on `stream`, one block of 256 threads each, up
  // to `blocks` blocks; they have completed at the source when the kernel ends.
  void put_signal(const nvshmem::PutSignalOp* ops, int n, int blocks, cudaStream_t stream) const;
  // Enqueues the bounded waits `waits[0, n)` (device memory) on `stream`, one thread each.
  void wait_signals(nvshmem::SignalWait* waits, int n, unsigned long long timeout_ns,
                    cudaStream_t stream) const;
  // Enqueues the low-latency puts across domains of a dispatch (combine = false) or combine
  // send on `stream`, after its send kernel: `blocks` blocks of 512 threads.
  void ll_puts(const nvshmem::LlPuts& puts, bool combine, int blocks, cudaStream_t stream) const;
  // Enqueues the high-throughput puts of `kind` on `stream`: one block of 512 threads for the
  // counts, else `blocks` blocks.
  void ht_puts(const nvshmem::HtPuts& puts, HtPutKind kind, int blocks, cudaStream_t stream) const;

  struct Handles;  // the module and its functions (nvshmem_module.cpp)

 private:
  explicit NvshmemModule(std::unique_ptr<Handles> handles);
  std::unique_ptr<Handles> handles_;
};

}  // namespace epcomm::cuda
