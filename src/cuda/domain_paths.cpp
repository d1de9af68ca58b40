// DomainPaths: allocation and the launches of each step across domains, in stream order.
#include "domain_paths.hpp"

#include "cuda_check.hpp"
#include "kernels/launch.hpp"

namespace epcomm::cuda {

DomainPaths::DomainPaths(Bootstrap& bootstrap, const Config& config, int device,
                         const RegionLayout& region, const MemoryDomain& heap_domain,
                         const WaitContext& wait)
    : region_(region),
      layout_(
          DomainLayout::make(region, heap_domain.ranks_per_domain(), config.max_tokens_per_rank)),
      main_(heap_domain.local()),
      wait_(wait) {
  EPCOMM_CUDA_CHECK(cudaMalloc(&d_blocks_done_, 2 * sizeof(uint32_t)));
  EPCOMM_CUDA_CHECK(cudaMemset(d_blocks_done_, 0, 2 * sizeof(uint32_t)));
  EPCOMM_CUDA_CHECK(cudaDeviceSynchronize());
  // The same domains as the backend's region: every rank allocates this after it, in the same
  // order, so both are symmetric.
  staging_ = std::make_unique<MemoryDomain>(bootstrap, device, layout_.total_bytes,
                                            Transport::kNvshmem, layout_.ranks_per_domain);
  module_ = NvshmemModule::load(*staging_->heap());
}

DomainPaths::~DomainPaths() {
  module_.reset();
  staging_.reset();  // the backend has synchronized and passed a barrier with every peer
  cudaFree(d_blocks_done_);
}

nvshmem::HtPuts DomainPaths::puts(int num_tokens, int counter) const {
  nvshmem::HtPuts a{};
  a.region = region_;
  a.domains = layout_;
  a.main = main_;
  a.staging = staging_->local();
  a.rank = wait_.rank;
  a.num_tokens = num_tokens;
  a.epoch = &wait_.state->epoch;
  a.combine_seq = &wait_.state->combine_seq;
  a.domain_combines = &wait_.state->domain_combines;
  a.failed = &wait_.state->failed;
  a.dispatch_ok = &wait_.state->dispatch_ok;
  a.blocks_done = d_blocks_done_ + counter;
  return a;
}

void DomainPaths::exchange_counts(cudaStream_t stream) const {
  module_->ht_puts(puts(0, 0), HtPutKind::kCounts, 1, stream);
}

void DomainPaths::forward(const DomainKernelParams& p, int sms, cudaStream_t stream) const {
  module_->ht_puts(puts(p.num_tokens, 0), HtPutKind::kForward, sms, stream);
  kernels::launch_forward(p, sms, stream);
  EPCOMM_LAUNCH_CHECK("forward_kernel");
}

void DomainPaths::combine(const DomainKernelParams& p, int sms, cudaStream_t stream) const {
  kernels::launch_domain_partials(p, sms, stream);
  EPCOMM_LAUNCH_CHECK("domain_partials_kernel");
  module_->ht_puts(puts(p.num_tokens, 1), HtPutKind::kPartials, sms, stream);
  kernels::launch_wait_partials(p, stream);
  EPCOMM_LAUNCH_CHECK("wait_partials_kernel");
  kernels::launch_domain_sum(p, sms, stream);
  EPCOMM_LAUNCH_CHECK("domain_sum_kernel");
}

}  // namespace epcomm::cuda
