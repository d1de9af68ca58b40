// Copy bandwidth with a given number of SMs: the bound for a call that runs on that many SMs.
// One block of 1024 threads per SM (the dynamic shared memory keeps a second block off), each
// thread keeping eight 16-byte loads in flight (128 KB an SM) before it stores each of them to
// `fanout` destinations (fanout 1: a copy; more: the dispatch's pattern, one read per row and
// a write per destination rank).
#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <vector>

#include "cuda_timing.hpp"
#include "device_support.hpp"
#include "epcomm/error.hpp"

namespace epcomm::bench {
namespace {

constexpr int kThreads = 1024;
constexpr int kInFlight = 8;
constexpr int kPinSharedBytes = 150 * 1024;  // over half an SM's shared memory

__global__ void __launch_bounds__(kThreads, 1)
    sm_copy_kernel(const int4* __restrict__ src, int4* __restrict__ dst, size_t vectors,
                   int fanout) {
  extern __shared__ int4 pin[];  // never touched: it only keeps one block per SM
  const size_t stride = static_cast<size_t>(gridDim.x) * kThreads * kInFlight;
  for (size_t base = static_cast<size_t>(blockIdx.x) * kThreads * kInFlight + threadIdx.x;
       base < vectors; base += stride) {
    int4 v[kInFlight];
#pragma unroll
    for (int i = 0; i < kInFlight; ++i) {
      const size_t at = base + static_cast<size_t>(i) * kThreads;
      if (at < vectors) v[i] = src[at];
    }
#pragma unroll
    for (int i = 0; i < kInFlight; ++i) {
      const size_t at = base + static_cast<size_t>(i) * kThreads;
      if (at >= vectors) continue;
      for (int f = 0; f < fanout; ++f) dst[static_cast<size_t>(f) * vectors + at] = v[i];
    }
  }
  (void)pin;
}

}  // namespace

double measure_sm_copy_gbps(int device, int sms, int fanout) {
  check(cudaSetDevice(device), "cudaSetDevice");
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  const int blocks = std::min(std::max(sms, 1), prop.multiProcessorCount);
  check(cudaFuncSetAttribute(sm_copy_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             kPinSharedBytes),
        "cudaFuncSetAttribute");
  if (fanout < 1) throw Error(ErrorCode::kInvalidArgument, "measure_sm_copy_gbps: fanout < 1");
  const size_t bytes = (size_t{1} << 30) / fanout / 16 * 16;  // read once
  const double ms = median_copy_ms(
      device, bytes, bytes * fanout, 1, 7, [&](const void* src, void* dst, cudaStream_t stream) {
        sm_copy_kernel<<<blocks, kThreads, kPinSharedBytes, stream>>>(
            static_cast<const int4*>(src), static_cast<int4*>(dst), bytes / sizeof(int4), fanout);
        check(cudaGetLastError(), "sm_copy_kernel launch");
      });
  return (1.0 + fanout) * bytes / (ms * 1e-3) / 1e9;
}

}  // namespace epcomm::bench
