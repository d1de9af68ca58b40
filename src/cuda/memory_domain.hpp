// MemoryDomain: this rank's symmetric region and the mapped base of every peer's region.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "epcomm/bootstrap.hpp"
#include "epcomm/types.hpp"

namespace epcomm::cuda {

class NvshmemHeap;
class CuMemRegions;

// Collective. Transport::kIpc: ranks in one process share device pointers (enabling peer
// access between distinct GPUs); ranks in separate processes share cuMem allocations whose file
// descriptors pass over Unix-domain sockets (CuMemRegions), or legacy CUDA IPC handles through
// the bootstrap where a rank sets EPCOMM_IPC=legacy or cannot export; one domain holds every
// rank. Transport::kNvshmem: the region is symmetric memory of NVSHMEM's heap (one rank per
// process) and each peer's base inside this rank's NVLink domain is nvshmem_ptr's; a peer
// outside it has none (null), as it is reached through NVSHMEM puts only. Domains are
// `ranks_per_domain` consecutive ranks (0: the block of ranks nvshmem_ptr maps, the same
// size on every rank; a rank it cannot map inside its domain is refused with kUnsupported on
// every rank). Several ranks may share one GPU either way. The region is zeroed
// and every rank has passed a barrier before the constructor returns, so no peer signal can be
// lost.
class MemoryDomain {
 public:
  MemoryDomain(Bootstrap& bootstrap, int device, size_t region_bytes,
               Transport transport = Transport::kIpc, int ranks_per_domain = 0);
  ~MemoryDomain();
  MemoryDomain(const MemoryDomain&) = delete;
  MemoryDomain& operator=(const MemoryDomain&) = delete;

  char* local() const { return peers_[rank_]; }
  size_t bytes() const { return bytes_; }                 // of each rank's region
  char* const* device_peers() const { return d_peers_; }  // [R] in device memory
  const std::vector<char*>& peers() const { return peers_; }
  int ranks_per_domain() const { return ranks_per_domain_; }  // R for one domain
  // The NVSHMEM job the region lives in (Transport::kNvshmem), else null.
  const NvshmemHeap* heap() const { return heap_.get(); }
  // Whether every peer's region is memory this GPU's bulk-copy (TMA) engine may write: cuMem
  // regions, or ranks of one process on this GPU. Not legacy IPC mappings (the engine faults on
  // them on some systems), peer GPUs' cudaMalloc memory or NVSHMEM's heap (not verified here).
  bool bulk_copies() const { return bulk_copies_; }

 private:
  void map_in_process(Bootstrap& bootstrap);
  void map_through_ipc(Bootstrap& bootstrap);
  void map_through_nvshmem(Bootstrap& bootstrap, int ranks_per_domain);
  // Checks every peer's GPU (another process, visible here, native atomics on the link).
  void check_peer_processes(Bootstrap& bootstrap);

  int device_;
  int rank_;
  int ranks_per_domain_;
  size_t bytes_;
  char* region_ = nullptr;
  std::vector<char*> peers_;
  std::vector<bool> opened_;  // peers_[i] came from cudaIpcOpenMemHandle
  char** d_peers_ = nullptr;
  std::shared_ptr<NvshmemHeap> heap_;    // kNvshmem: region_ is symmetric memory of it
  std::unique_ptr<CuMemRegions> cumem_;  // kIpc across processes: every region is mapped here
  bool bulk_copies_ = false;
};

}  // namespace epcomm::cuda
