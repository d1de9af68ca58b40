// Writing a token's meta row as a destination sees it (flat and ring senders share this).
#pragma once

#include "../params.hpp"

namespace epcomm::kernels {

// Top-k slot `lane` of token t (lanes >= K get id -1): the expert id and weight, read once and
// reused for every destination. An id out of range reads as -1 (the layout step reported it).
struct TokenSlots {
  int64_t expert = -1;
  float weight = 0.f;
};

__device__ __forceinline__ TokenSlots load_token_slots(const void* topk_idx, bool idx_int64,
                                                       const float* topk_weights, int t, int K,
                                                       int num_experts, int lane) {
  TokenSlots s;
  if (lane < K) {
    const size_t i = static_cast<size_t>(t) * K + lane;
    s.expert = idx_int64 ? static_cast<const int64_t*>(topk_idx)[i]
                         : static_cast<const int32_t*>(topk_idx)[i];
    if (s.expert < -1 || s.expert >= num_experts) s.expert = -1;
    if (topk_weights) s.weight = topk_weights[i];
  }
  return s;
}

// Token t's row of fp8 scales in x_scales ([T][num_scales]; null without scales).
__device__ __forceinline__ const float* token_scales(const float* x_scales, int t, int num_scales) {
  return x_scales ? x_scales + static_cast<size_t>(t) * num_scales : nullptr;
}

// One warp writes the meta row of token t for destination d: source (rank, t), the top-k slots
// rebased to d's local experts (-1 and weight 0 elsewhere), and fp8 scales (`token_scales`: the
// token's row of scales). With `scales_only` (cached dispatch) only the scales are written.
__device__ __forceinline__ void write_meta_row(char* out, const cuda::MetaLayout& meta,
                                               const TokenSlots& slots, bool scales_only, int rank,
                                               int t, int d, int K, int experts_per_rank,
                                               const float* token_scales, int lane) {
  if (!scales_only) {
    if (lane == 0) {
      reinterpret_cast<int32_t*>(out)[0] = rank;
      reinterpret_cast<int32_t*>(out)[1] = t;
    }
    if (lane < K) {
      const bool local = slots.expert >= 0 && slots.expert / experts_per_rank == d;
      reinterpret_cast<int32_t*>(out + meta.ids_offset())[lane] =
          local ? static_cast<int32_t>(slots.expert - static_cast<int64_t>(d) * experts_per_rank)
                : -1;
      reinterpret_cast<float*>(out + meta.weights_offset())[lane] = local ? slots.weight : 0.f;
    }
  }
  auto* scales = reinterpret_cast<float*>(out + meta.scales_offset());
  for (int i = lane; i < meta.num_scales; i += 32) scales[i] = token_scales[i];
}

}  // namespace epcomm::kernels
