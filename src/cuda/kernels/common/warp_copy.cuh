// Warp-wide copies of rows in 16-byte vectors, and bf16 <-> fp32 accumulation helpers.
#pragma once

#include <cuda_bf16.h>

#include "ptx.cuh"

namespace epcomm::kernels {

// One warp copies `bytes` (a multiple of 16) from src to dst; four vectors per lane in flight.
__device__ __forceinline__ void warp_copy(char* dst, const char* src, size_t bytes, int lane) {
  constexpr int kUnroll = 4;
  const int num_vec = static_cast<int>(bytes / 16);
  const auto* s = reinterpret_cast<const uint4*>(src);
  auto* d = reinterpret_cast<uint4*>(dst);
  for (int base = 0; base < num_vec; base += 32 * kUnroll) {
    uint4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + lane + 32 * u;
      if (i < num_vec) v[u] = ld_na(s + i);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + lane + 32 * u;
      if (i < num_vec) st_na(d + i, v[u]);
    }
  }
}

__device__ __forceinline__ void accumulate_bf16x8(float (&acc)[8], const uint4& v) {
  const auto* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    acc[2 * i] += f.x;
    acc[2 * i + 1] += f.y;
  }
}

// acc = fmaf(w, v, acc) per element: the weighted sum of an expert-major combine, one rounding
// per product-and-add as the host reference's std::fma.
__device__ __forceinline__ void fma_bf16x8(float (&acc)[8], float w, const uint4& v) {
  const auto* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    acc[2 * i] = __fmaf_rn(w, f.x, acc[2 * i]);
    acc[2 * i + 1] = __fmaf_rn(w, f.y, acc[2 * i + 1]);
  }
}

// Round to nearest even, as the host reference does.
__device__ __forceinline__ uint4 to_bf16x8(const float (&acc)[8]) {
  uint4 out;
  auto* h = reinterpret_cast<__nv_bfloat162*>(&out);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(acc[2 * i], acc[2 * i + 1]);
  return out;
}

}  // namespace epcomm::kernels
