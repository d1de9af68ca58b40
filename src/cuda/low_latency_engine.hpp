// The low-latency mode of the CUDA backend (DESIGN section 10): its own symmetric region (two
// buffers), the outputs of each buffer, and the four launches of a round.
#pragma once

#include <cuda_runtime.h>

#include <memory>

#include "../backend.hpp"
#include "kernels/ll_params.hpp"
#include "memory_domain.hpp"
#include "nvshmem_module.hpp"

namespace epcomm::cuda {

class LowLatencyEngine {
 public:
  // Collective (maps every rank's region). `sharing` = ranks of this process on the GPU;
  // `ranks_per_domain`: the domains the backend's region found (R: one). With smaller domains
  // (transport nvshmem) what crosses them goes through the NVSHMEM module's puts.
  LowLatencyEngine(Bootstrap& bootstrap, const Config& config, int device, int sharing,
                   const WaitContext& wait, int ranks_per_domain);
  ~LowLatencyEngine();
  LowLatencyEngine(const LowLatencyEngine&) = delete;
  LowLatencyEngine& operator=(const LowLatencyEngine&) = delete;

  LowLatencyDispatchResult dispatch_send(const LowLatencyDispatchInputs& in, int buffer,
                                         cudaStream_t stream);
  void dispatch_receive(int buffer, cudaStream_t stream);
  void combine_send(const detail::LowLatencyCombineArgs& args, int buffer, cudaStream_t stream);
  void combine_receive(int buffer, cudaStream_t stream);
  // Rank masks, ordered on `stream`.
  void update_mask(int rank, bool masked, cudaStream_t stream);
  void query_mask(int32_t* mask_out, cudaStream_t stream);
  void clean_mask(cudaStream_t stream);
  // This rank's low-latency region (peers write it).
  detail::MemoryRange shared_memory() const { return {domain_->local(), domain_->bytes()}; }

 private:
  // What a buffer's latest call was given; the receive launches reuse it.
  struct BufferCall {
    LowLatencyDispatchInputs in;
    detail::LowLatencyCombineArgs combine;
    LowLatencyOutputs outputs{};
    uint32_t* rows_from = nullptr;     // [R]
    int64_t* dispatch_topk = nullptr;  // [M][max_topk]: the ids of the buffer's dispatch
    // Across domains only: the dispatch's staged messages [M][max_topk] and the signal words
    // the module posts ([E] dispatch counts, then [R] combine signals).
    nvshmem::LlRemoteMessage* remote_messages = nullptr;
    uint64_t* remote_words = nullptr;
  };
  // `combine`: the combine kernels' ids (the dispatch's saved ones), else the dispatch's input.
  LowLatencyParams params(int buffer, bool combine) const;
  // What the module's puts of this buffer's dispatch (or combine) send send across domains.
  nvshmem::LlPuts puts(const LowLatencyParams& p, bool combine) const;

  Config config_;
  int rank_, num_ranks_, experts_per_rank_;
  WaitContext wait_;
  LowLatencyLayout layout_;
  int ranks_per_domain_;
  std::unique_ptr<MemoryDomain> domain_;
  std::unique_ptr<NvshmemModule> module_;  // across domains only
  LowLatencyCounters* d_counters_ = nullptr;
  int32_t* d_mask_ = nullptr;       // [R]
  uint32_t* d_verdicts_ = nullptr;  // [buffer][dispatch, combine][R]
  BufferCall calls_[2];
};

}  // namespace epcomm::cuda
