// NvshmemHeap: the regions of Config::transport = nvshmem, carved from NVSHMEM's symmetric heap.
// NVSHMEM's host library is loaded with dlopen when the first such communicator is created, so
// libepcomm has no link dependency on it and builds without NVSHMEM refuse the transport by
// name. Only host calls are used (the hostlib initialization): every kernel reaches its peers'
// regions through the pointers nvshmem_ptr gives, as it does through CUDA IPC mappings.
#pragma once

#include <cstddef>
#include <memory>

#include "epcomm/bootstrap.hpp"

namespace epcomm::cuda {

class NvshmemHeap {
 public:
  // Collective: the process's NVSHMEM job, started over `bootstrap` on the current device by
  // the first call (rank 0 draws the unique id, the bootstrap's allGather spreads it; PE number
  // = rank) and shared by later calls of the process, which must pass a bootstrap of the same
  // rank and size. It stays up until the process ends: NVSHMEM cannot be started again after
  // nvshmem_finalize in one process. Throws kUnsupported when this build has no NVSHMEM or its
  // library cannot be loaded, kInvalidArgument for in-process ranks, kCuda when NVSHMEM fails.
  static std::shared_ptr<NvshmemHeap> join(Bootstrap& bootstrap);

  // Collective over every PE, in the same order everywhere: zeroed symmetric memory.
  void* allocate(size_t bytes);
  void release(void* symmetric);  // collective, like allocate
  // `symmetric` in `pe`'s memory for loads and stores from this GPU; nullptr when that PE is
  // reachable only through puts.
  void* peer(void* symmetric, int pe) const;
  int num_pes() const { return num_pes_; }
  int pe() const { return pe_; }
  // Binds a loaded CUDA module (a CUmodule) holding NVSHMEM device code to this job
  // (nvshmemx_cumodule_init), so that its kernels may call NVSHMEM. Throws kUnsupported when the
  // library lacks the call, kCuda when it fails.
  void bind_module(void* cu_module) const;
  // Releases what bind_module set up for the module (nvshmemx_cumodule_finalize), before the
  // module is unloaded. Never throws.
  void unbind_module(void* cu_module) const noexcept;

  struct Api;  // the NVSHMEM calls, resolved from the library (nvshmem_heap.cpp)

 private:
  NvshmemHeap(const Api* api, int pe, int num_pes) : api_(api), pe_(pe), num_pes_(num_pes) {}
  const Api* api_;
  int pe_;
  int num_pes_;
};

}  // namespace epcomm::cuda
