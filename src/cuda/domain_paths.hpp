// DomainPaths: the high-throughput paths across NVLink domains (DESIGN section 11,
// docs/design.md section 23) beside the flat path's kernels: the staging region in NVSHMEM's
// symmetric heap, the NVSHMEM module's puts, and the forwarder's and the combine's kernels.
// The backend makes one only when its region found domains smaller than the job.
#pragma once

#include <cuda_runtime.h>

#include <memory>

#include "epcomm/bootstrap.hpp"
#include "epcomm/config.hpp"
#include "kernels/params.hpp"
#include "memory_domain.hpp"
#include "nvshmem_module.hpp"

namespace epcomm::cuda {

class DomainPaths {
 public:
  // Collective. `region` / `main` are the backend's layout and this rank's region (symmetric
  // memory of `heap_domain`'s job); `ranks_per_domain` < R.
  DomainPaths(Bootstrap& bootstrap, const Config& config, int device, const RegionLayout& region,
              const MemoryDomain& heap_domain, const WaitContext& wait);
  ~DomainPaths();
  DomainPaths(const DomainPaths&) = delete;
  DomainPaths& operator=(const DomainPaths&) = delete;

  DomainParams params() const { return {layout_, staging_->local()}; }

  // Between the notify kernel's post and its collect: the rows for ranks outside the domain.
  void exchange_counts(cudaStream_t stream) const;
  // After the flat send: its records to the forwarders, then this rank's forwarding (`p`: the
  // dispatch's DomainKernelParams, num_tokens this rank's T).
  void forward(const DomainKernelParams& p, int sms, cudaStream_t stream) const;
  // After combine_ready: partials, their puts, the wait for the other domains', the sum.
  void combine(const DomainKernelParams& p, int sms, cudaStream_t stream) const;

 private:
  // counter: which of d_blocks_done_ the kernel's blocks count on.
  nvshmem::HtPuts puts(int num_tokens, int counter) const;

  RegionLayout region_;
  DomainLayout layout_;
  char* main_;
  WaitContext wait_;
  std::unique_ptr<MemoryDomain> staging_;
  std::unique_ptr<NvshmemModule> module_;
  uint32_t* d_blocks_done_ = nullptr;  // [2]: forward puts, partial puts
};

}  // namespace epcomm::cuda
