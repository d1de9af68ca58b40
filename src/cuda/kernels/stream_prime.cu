// An empty kernel that gives a stream its first launch while no kernel waits on a peer.
// Observed on an H100 (CUDA 13.0, driver 580): with several ranks' streams in one context, the
// first kernel issued to a stream that never ran one could stay queued for as long as another
// stream's kernel was waiting for a peer, here 5 s, until that wait timed out.
// docs/design.md, section 12.
#include "common/wait.cuh"
#include "launch.hpp"

namespace epcomm::kernels {
namespace {

__global__ void stream_prime_kernel() {}

}  // namespace

cudaError_t load_stream_prime_kernels() { return load_kernels(stream_prime_kernel); }

void launch_stream_prime(cudaStream_t stream) { stream_prime_kernel<<<1, 32, 0, stream>>>(); }

}  // namespace epcomm::kernels
