// One warp sums a token's rows in fp32 in list order and rounds once to bf16 (the gather
// combine, and the partials and their sum across NVLink domains).
#pragma once

#include "../params.hpp"
#include "warp_copy.cuh"

namespace epcomm::kernels {

constexpr int kGatherUnroll = 2;  // 16-byte vectors per lane per pass
constexpr int kGatherBatch = 4;   // source rows whose loads are in flight together

// One warp gathers token t from the `n` rows listed in `rows`, in list order. kBias: add the
// biases the params name; kWeighted: acc = fmaf(weights[j], row j, acc) (instantiations of their
// own, so that the common combine without them keeps its registers).
template <bool kBias, bool kWeighted>
__device__ __forceinline__ void gather_token(const cuda::GatherParams& p, const uint4* const* rows,
                                             const float* weights, int n, int t, int lane) {
  const int num_vec = p.hidden / 8;
  auto* out = reinterpret_cast<uint4*>(p.out + static_cast<size_t>(t) * p.hidden);
  for (int v0 = lane; v0 < num_vec; v0 += 32 * kGatherUnroll) {
    float acc[kGatherUnroll][8];
#pragma unroll
    for (int u = 0; u < kGatherUnroll; ++u) {
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[u][i] = 0.f;
    }
    for (int j0 = 0; j0 < n; j0 += kGatherBatch) {
      uint4 vec[kGatherBatch][kGatherUnroll];
#pragma unroll
      for (int b = 0; b < kGatherBatch; ++b) {
#pragma unroll
        for (int u = 0; u < kGatherUnroll; ++u) {
          if (j0 + b < n && v0 + 32 * u < num_vec) vec[b][u] = ld_na(rows[j0 + b] + v0 + 32 * u);
        }
      }
#pragma unroll
      for (int b = 0; b < kGatherBatch; ++b) {
#pragma unroll
        for (int u = 0; u < kGatherUnroll; ++u) {
          if (j0 + b < n && v0 + 32 * u < num_vec) {
            if (kWeighted) {
              fma_bf16x8(acc[u], weights[j0 + b], vec[b][u]);
            } else {
              accumulate_bf16x8(acc[u], vec[b][u]);
            }
          }
        }
      }
    }
    const size_t token_vec = static_cast<size_t>(t) * num_vec;
#pragma unroll
    for (int u = 0; u < kGatherUnroll; ++u) {
      const int v = v0 + 32 * u;
      if (v >= num_vec) continue;
      if (kBias && p.bias) {
        accumulate_bf16x8(acc[u], reinterpret_cast<const uint4*>(p.bias)[token_vec + v]);
      }
      if (kBias && p.bias2) {
        accumulate_bf16x8(acc[u], reinterpret_cast<const uint4*>(p.bias2)[token_vec + v]);
      }
      st_na(out + v, to_bf16x8(acc[u]));
    }
  }
}

}  // namespace epcomm::kernels
