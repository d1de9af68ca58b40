// Regions shared between processes through the CUDA virtual memory API: the owner allocates
// physical memory with cuMemCreate, exportable as a POSIX file descriptor; the descriptors go
// to the peers over Unix-domain sockets (SCM_RIGHTS), and each peer imports and maps them into
// its own address space. The ipc transport uses this for ranks in separate processes in place of
// legacy CUDA IPC handles when EPCOMM_IPC=cumem is set and every rank's driver can (opt-in until
// the conformance suites have run over it on the GPU; docs/perf.md).
#pragma once

#include <cstddef>
#include <vector>

#include "epcomm/bootstrap.hpp"

namespace epcomm::cuda {

class CuMemRegions {
 public:
  // Whether this process uses it on `device`: EPCOMM_IPC=cumem is set, the driver's entry
  // points resolve and the device exports POSIX file descriptors.
  static bool usable(int device);

  // Collective over `bootstrap` (ranks in separate processes, every rank usable()): allocates
  // this rank's region of `bytes` (rounded up to the allocation granularity, zeroed) and maps
  // every peer's. peers()[r] is rank r's region in this process (this rank's own included).
  CuMemRegions(Bootstrap& bootstrap, int device, size_t bytes);
  ~CuMemRegions();
  CuMemRegions(const CuMemRegions&) = delete;
  CuMemRegions& operator=(const CuMemRegions&) = delete;

  const std::vector<char*>& peers() const { return peers_; }

 private:
  struct Mapping {
    unsigned long long handle = 0;  // CUmemGenericAllocationHandle
    char* base = nullptr;
  };
  void map(Mapping& m, int device);

  size_t size_ = 0;
  std::vector<Mapping> mappings_;  // [R]: this rank's allocation, and every peer's import
  std::vector<char*> peers_;
};

}  // namespace epcomm::cuda
