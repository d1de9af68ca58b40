// CudaBackend's low-latency calls: each first throws a failure a kernel has posted, then
// forwards to LowLatencyEngine on this backend's stream.
#include "cuda_backend.hpp"
#include "cuda_check.hpp"

namespace epcomm::cuda {

LowLatencyDispatchResult CudaBackend::ll_dispatch_send(const LowLatencyDispatchInputs& in,
                                                       int buffer) {
  raise_posted_failure();
  EPCOMM_CUDA_CHECK(cudaSetDevice(device_));
  return ll_->dispatch_send(in, buffer, stream_);
}

void CudaBackend::ll_dispatch_receive(int buffer) {
  raise_posted_failure();
  EPCOMM_CUDA_CHECK(cudaSetDevice(device_));
  ll_->dispatch_receive(buffer, stream_);
}

void CudaBackend::ll_combine_send(const detail::LowLatencyCombineArgs& args, int buffer) {
  raise_posted_failure();
  EPCOMM_CUDA_CHECK(cudaSetDevice(device_));
  ll_->combine_send(args, buffer, stream_);
}

void CudaBackend::ll_combine_receive(int buffer) {
  raise_posted_failure();
  EPCOMM_CUDA_CHECK(cudaSetDevice(device_));
  ll_->combine_receive(buffer, stream_);
}

void CudaBackend::ll_update_mask(int rank, bool masked) {
  EPCOMM_CUDA_CHECK(cudaSetDevice(device_));
  ll_->update_mask(rank, masked, stream_);
}

void CudaBackend::ll_query_mask(int32_t* mask_out) {
  EPCOMM_CUDA_CHECK(cudaSetDevice(device_));
  ll_->query_mask(mask_out, stream_);
}

void CudaBackend::ll_clean_mask() {
  EPCOMM_CUDA_CHECK(cudaSetDevice(device_));
  ll_->clean_mask(stream_);
}

}  // namespace epcomm::cuda
