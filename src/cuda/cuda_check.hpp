// Turns CUDA runtime failures into epcomm::Error(kCuda) naming the call and where it was made.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "epcomm/error.hpp"

namespace epcomm::cuda {

inline void check_cuda(cudaError_t err, const char* what, const char* file, int line) {
  if (err == cudaSuccess) return;
  throw Error(ErrorCode::kCuda, std::string(what) + " failed at " + file + ":" +
                                    std::to_string(line) + ": " + cudaGetErrorString(err));
}

}  // namespace epcomm::cuda

#define EPCOMM_CUDA_CHECK(call) ::epcomm::cuda::check_cuda((call), #call, __FILE__, __LINE__)
// After a kernel launch: catches bad configurations (too many threads, too much shared memory).
#define EPCOMM_LAUNCH_CHECK(name) \
  ::epcomm::cuda::check_cuda(cudaGetLastError(), "launch of " name, __FILE__, __LINE__)
