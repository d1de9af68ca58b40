// CUDA driver calls found through the runtime, so that libepcomm need not link libcuda.
#pragma once

#include <cuda_runtime.h>

namespace epcomm::cuda {

// Sets *out to the driver's `name` (the CUDA 12.0 form of the call); false, with *out
// untouched and no runtime error left pending, when the driver lacks it.
template <typename F>
bool resolve_driver_call(const char* name, F* out) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult status{};
  if (cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &status) !=
          cudaSuccess ||
      status != cudaDriverEntryPointSuccess || fn == nullptr) {
    cudaGetLastError();
    return false;
  }
  *out = reinterpret_cast<F>(fn);
  return true;
}

}  // namespace epcomm::cuda
