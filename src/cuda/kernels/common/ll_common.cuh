// Device helpers the low-latency kernels share: reading top-k ids, the per-token expert rule
// (once per expert, under its first slot), the fp8 cast, and the "last block" hand-off.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "../ll_params.hpp"
#include "ptx.cuh"
#include "warp_copy.cuh"

namespace epcomm::kernels {

constexpr int kLlThreads = 512;
constexpr int kLlWarps = kLlThreads / 32;

__device__ __forceinline__ int64_t load_topk(const void* topk_idx, bool idx_int64, size_t i) {
  return idx_int64 ? __ldg(static_cast<const long long*>(topk_idx) + i)
                   : __ldg(static_cast<const int*>(topk_idx) + i);
}

// The expert slot k of token t sends to, or -1: empty, out of range, or an expert an earlier
// slot of the token already names (a token goes once to each of its experts).
__device__ __forceinline__ int first_expert(const void* topk_idx, bool idx_int64, int t, int k,
                                            int num_topk, int num_experts) {
  const size_t row = static_cast<size_t>(t) * num_topk;
  const int64_t e = load_topk(topk_idx, idx_int64, row + k);
  if (e < 0 || e >= num_experts) return -1;
  for (int j = 0; j < k; ++j) {
    if (load_topk(topk_idx, idx_int64, row + j) == e) return -1;
  }
  return static_cast<int>(e);
}

__device__ __forceinline__ void bf16x8_to_float(const uint4& v, float (&f)[8]) {
  const auto* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 p = __bfloat1622float2(h[i]);
    f[2 * i] = p.x;
    f[2 * i + 1] = p.y;
  }
}

// One warp casts a row of H bf16 (H % 128 == 0) to fp8 e4m3 with one fp32 scale per 128
// elements, exactly as the host reference does: a = max(amax, 1e-4f), q = e4m3(x * (448 / a))
// rounded to nearest even and saturated, scale = a / 448 (IEEE division and multiplication).
// Each half-warp handles one 128-element block: 16 lanes x 8 elements.
__device__ __forceinline__ void cast_row_to_fp8(uint8_t* q, float* scales, const uint16_t* x,
                                                int hidden, int lane) {
  const int half = lane / 16, sub = lane % 16;
  const int blocks = hidden / 128;
  for (int b0 = 0; b0 < blocks; b0 += 2) {  // warp-uniform: the shuffles need every lane
    const int b = b0 + half;
    const bool active = b < blocks;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (active) v = ld_nc_na(reinterpret_cast<const uint4*>(x + b * 128) + sub);
    float f[8];
    bf16x8_to_float(v, f);
    float amax = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(f[i]));
#pragma unroll
    for (int m = 8; m >= 1; m /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, m));
    const float a = fmaxf(amax, 1e-4f);
    const float inv = __fdiv_rn(448.0f, a);
    uint32_t packed[2] = {0, 0};
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const uint32_t byte = __nv_cvt_float_to_fp8(__fmul_rn(f[i], inv), __NV_SATFINITE, __NV_E4M3);
      packed[i / 4] |= byte << (8 * (i % 4));
    }
    if (active) {
      *reinterpret_cast<uint2*>(q + b * 128 + sub * 8) = make_uint2(packed[0], packed[1]);
      if (sub == 0) scales[b] = __fdiv_rn(a, 448.0f);
    }
  }
}

__device__ __forceinline__ uint32_t atomic_add_acq_rel_gpu(uint32_t* p, uint32_t v) {
  uint32_t old;
  asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], %2;" : "=r"(old) : "l"(p), "r"(v)
               : "memory");
  return old;
}

__device__ __forceinline__ void st_release_sys(uint64_t* p, uint64_t v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

// Called by every thread of every block at the end of a kernel: true in the one block that
// finishes last, after every other block's earlier reads and writes. That block may then reset
// what all blocks read (and the counter itself, for the next launch).
__device__ __forceinline__ bool last_block_done(uint32_t* blocks_done) {
  __shared__ bool s_last;
  __syncthreads();
  if (threadIdx.x == 0) {
    s_last = atomic_add_acq_rel_gpu(blocks_done, 1) == gridDim.x - 1;
    if (s_last) *blocks_done = 0;
  }
  __syncthreads();
  return s_last;
}

}  // namespace epcomm::kernels
