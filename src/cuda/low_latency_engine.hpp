// The low-latency mode of the CUDA backend (DESIGN section 10): its own symmetric region (two
// buffers), the outputs of each buffer, and the four launches of a round.
#pragma once

#include <cuda_runtime.h>

#include <memory>

#include "../backend.hpp"
#include "kernels/ll_params.hpp"
#include "memory_domain.hpp"

namespace epcomm::cuda {

class LowLatencyEngine {
 public:
  // Collective (maps every rank's region). `sharing` = ranks of this process on the GPU.
  LowLatencyEngine(Bootstrap& bootstrap, const Config& config, int device, int sharing,
                   const WaitContext& wait);
  ~LowLatencyEngine();
  LowLatencyEngine(const LowLatencyEngine&) = delete;
  LowLatencyEngine& operator=(const LowLatencyEngine&) = delete;

  LowLatencyDispatchResult dispatch_send(const LowLatencyDispatchInputs& in, int buffer,
                                         cudaStream_t stream);
  void dispatch_receive(int buffer, cudaStream_t stream);
  void combine_send(const detail::LowLatencyCombineArgs& args, int buffer, cudaStream_t stream);
  void combine_receive(int buffer, cudaStream_t stream);

 private:
  // What a buffer's latest call was given; the receive launches reuse it.
  struct BufferCall {
    LowLatencyDispatchInputs in;
    detail::LowLatencyCombineArgs combine;
    LowLatencyOutputs outputs{};
    uint32_t* rows_from = nullptr;  // [R]
  };
  // `combine`: topk_idx from the combine's arguments, else from the dispatch's.
  LowLatencyParams params(int buffer, bool combine) const;

  Config config_;
  int rank_, num_ranks_, experts_per_rank_;
  WaitContext wait_;
  LowLatencyLayout layout_;
  std::unique_ptr<MemoryDomain> domain_;
  LowLatencyCounters* d_counters_ = nullptr;
  BufferCall calls_[2];
};

}  // namespace epcomm::cuda
