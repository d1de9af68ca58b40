// The start gate's wait: one thread spins on a flag in mapped host memory until the host opens
// the gate with the ticket, then the stream goes on. See StartGate in ll_device.hpp. Also the
// stamp clock's mark: one thread writes the global timer.
#include <cuda_runtime.h>

#include <cstdint>

namespace epcomm::bench {
namespace {

__device__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// NOTE: the gate must give up on its own: a call that waited on the host for this stream would
// otherwise never reach the barrier that opens it.
__global__ void gate_wait_kernel(const volatile uint32_t* flag, uint32_t ticket,
                                 uint64_t timeout_ns, volatile uint32_t* gave_up) {
  const uint64_t start = global_ns();
  while (static_cast<int32_t>(*flag - ticket) < 0) {  // tickets increase; wrap-safe
    if (global_ns() - start > timeout_ns) {
      *gave_up = 1;
      __threadfence_system();
      return;
    }
  }
}

__global__ void stamp_kernel(uint64_t* slot) { *slot = global_ns(); }

}  // namespace

// See StartGate::prepare (ll_device.hpp); the stamp kernel is loaded with it, for the same reason.
cudaError_t load_gate_kernel() {
  cudaFuncAttributes attr;
  const cudaError_t gate = cudaFuncGetAttributes(&attr, gate_wait_kernel);
  return gate != cudaSuccess ? gate : cudaFuncGetAttributes(&attr, stamp_kernel);
}

cudaError_t launch_stamp(cudaStream_t stream, uint64_t* slot) {
  stamp_kernel<<<1, 1, 0, stream>>>(slot);
  return cudaGetLastError();
}

cudaError_t launch_gate_wait(cudaStream_t stream, const uint32_t* d_flag, uint32_t ticket,
                             uint64_t timeout_ns, uint32_t* d_gave_up) {
  gate_wait_kernel<<<1, 1, 0, stream>>>(d_flag, ticket, timeout_ns, d_gave_up);
  return cudaGetLastError();
}

}  // namespace epcomm::bench
