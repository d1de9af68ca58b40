// RoutingPool: stream-ordered allocations on a private stream, recycled through a free list.
#include "routing_pool.hpp"

#include "cuda_check.hpp"
#include "kernels/launch.hpp"

namespace epcomm::cuda {

RoutingPool::RoutingPool(int device, int max_tokens, int max_topk, int num_ranks,
                         int experts_per_rank, int ring_channels, int initial_buffers)
    : device_(device),
      slot_elems_(static_cast<size_t>(max_tokens) * num_ranks),
      pair_elems_(static_cast<size_t>(max_tokens) * max_topk),
      num_ranks_(num_ranks),
      experts_per_rank_(experts_per_rank),
      ring_channels_(ring_channels) {
  EPCOMM_CUDA_CHECK(cudaSetDevice(device_));
  EPCOMM_CUDA_CHECK(cudaStreamCreateWithFlags(&alloc_stream_, cudaStreamNonBlocking));
  kernels::launch_stream_prime(alloc_stream_);  // its first kernel, before any peer waits
  EPCOMM_LAUNCH_CHECK("stream_prime_kernel");
  for (int i = 0; i < initial_buffers; ++i) free_.push_back(allocate());
}

RoutingPool::~RoutingPool() {
  cudaSetDevice(device_);
  for (auto& b : all_) cudaFreeAsync(b->allocation, alloc_stream_);
  cudaStreamSynchronize(alloc_stream_);
  cudaStreamDestroy(alloc_stream_);
}

RoutingBuffer* RoutingPool::allocate() {
  const size_t ring_ints = static_cast<size_t>(ring_channels_) * num_ranks_;
  const size_t ints = slot_elems_ + 2 * static_cast<size_t>(num_ranks_) + 2 + 2 * ring_ints +
                      3 * pair_elems_ + 2 * static_cast<size_t>(experts_per_rank_) + 1;
  auto buffer = std::make_unique<RoutingBuffer>();
  EPCOMM_CUDA_CHECK(cudaMallocAsync(&buffer->allocation, ints * sizeof(int), alloc_stream_));
  EPCOMM_CUDA_CHECK(cudaStreamSynchronize(alloc_stream_));
  int* base = static_cast<int*>(buffer->allocation);
  Routing& t = buffer->tables;
  t.slot = base;
  t.send_counts = base + slot_elems_;
  t.recv_counts = t.send_counts + num_ranks_;
  t.num_recv = t.recv_counts + num_ranks_;
  t.accepted = t.num_recv + 1;
  t.ring_send_counts = t.accepted + 1;
  t.ring_recv_counts = t.ring_send_counts + ring_ints;
  t.pair_row = t.ring_recv_counts + ring_ints;
  t.pair_dest = t.pair_row + pair_elems_;
  t.pair_weight = reinterpret_cast<float*>(t.pair_dest + pair_elems_);
  t.expert_offsets = reinterpret_cast<int*>(t.pair_weight + pair_elems_);
  t.group_pairs = t.expert_offsets + experts_per_rank_ + 1;
  all_.push_back(std::move(buffer));
  return all_.back().get();
}

void RoutingPool::check_capture_locked(cudaStream_t stream) const {
  if (!free_.empty()) return;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  EPCOMM_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  if (status != cudaStreamCaptureStatusNone) {
    throw Error(ErrorCode::kUnsupported,
                "dispatch during CUDA graph capture needs a free routing buffer: release old "
                "handles, or run a dispatch before capturing");
  }
}

void RoutingPool::check_acquirable(cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_capture_locked(stream);
}

std::shared_ptr<RoutingBuffer> RoutingPool::acquire(cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (free_.empty()) {
    check_capture_locked(stream);
    EPCOMM_CUDA_CHECK(cudaSetDevice(device_));
    free_.push_back(allocate());
  }
  RoutingBuffer* buffer = free_.back();
  free_.pop_back();
  std::shared_ptr<RoutingPool> self = shared_from_this();
  return std::shared_ptr<RoutingBuffer>(buffer, [self](RoutingBuffer* b) { self->release(b); });
}

void RoutingPool::release(RoutingBuffer* buffer) {
  std::lock_guard<std::mutex> lock(mutex_);
  free_.push_back(buffer);
}

}  // namespace epcomm::cuda
