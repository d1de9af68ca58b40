// Device routing tables for dispatch handles, recycled so that a dispatch allocates nothing
// (and can run inside CUDA graph capture) once a buffer is free.
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <mutex>
#include <vector>

#include "kernels/params.hpp"

namespace epcomm::cuda {

struct RoutingBuffer {
  Routing tables;  // pointers into one allocation
  void* allocation = nullptr;
};

// Buffers return to the pool when the last handle using them goes away. Reuse is safe in
// stream order: the communicator issues all work on one stream (set_stream chains streams).
class RoutingPool : public std::enable_shared_from_this<RoutingPool> {
 public:
  RoutingPool(int device, int max_tokens, int max_topk, int num_ranks, int experts_per_rank,
              int ring_channels, int initial_buffers);
  ~RoutingPool();
  // Throws kUnsupported when none is free while `stream` is being captured into a graph.
  std::shared_ptr<RoutingBuffer> acquire(cudaStream_t stream);
  // Throws what acquire would; buffers only return to the pool, so acquire then succeeds.
  void check_acquirable(cudaStream_t stream);

 private:
  void check_capture_locked(cudaStream_t stream) const;
  RoutingBuffer* allocate();
  void release(RoutingBuffer* buffer);

  int device_;
  size_t slot_elems_;
  size_t pair_elems_;  // [T][K] tables of expert-major dispatches
  int num_ranks_;
  int experts_per_rank_;
  int ring_channels_;
  cudaStream_t alloc_stream_ = nullptr;  // private: allocation never waits for peers' work
  std::mutex mutex_;
  std::vector<std::unique_ptr<RoutingBuffer>> all_;
  std::vector<RoutingBuffer*> free_;
};

}  // namespace epcomm::cuda
