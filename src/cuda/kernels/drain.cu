// Dispatch receive side (DESIGN section 5, step 6). A one-block kernel waits until every
// source's delivered-row counter reaches what the count exchange promised; then a wide kernel
// with no waits turns meta rows into recv_topk_idx, weights, sources and scales.
#include "common/wait.cuh"
#include "launch.hpp"

namespace epcomm::kernels {
namespace {

__global__ void __launch_bounds__(256) wait_arrivals_kernel(cuda::ArrivalWaitParams p) {
  cuda::DeviceState* state = p.wait.state;
  if (rank_failed(state) || !state->dispatch_ok) return;
  const uint64_t* arrived = p.layout.arrived(p.local);
  for (int src = threadIdx.x; src < p.num_ranks; src += blockDim.x) {
    if (!wait_at_least(p.wait, arrived + src, state->expected_arrived[src], cuda::kPhaseArrival,
                       src)) {
      return;
    }
  }
}

__device__ __forceinline__ void write_index(void* base, bool is_int64, size_t i, int32_t v) {
  if (is_int64) {
    static_cast<int64_t*>(base)[i] = v;
  } else {
    static_cast<int32_t*>(base)[i] = v;
  }
}

__global__ void __launch_bounds__(512) drain_kernel(cuda::DrainParams p) {
  if (rank_failed(p.state) || !p.state->dispatch_ok) return;
  const cuda::MetaLayout& meta = p.layout.meta;
  const int num_recv = *p.num_recv, K = p.num_topk, S = meta.num_scales;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  const size_t first = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (!p.cached) {
    for (size_t i = first; i < static_cast<size_t>(num_recv) * K; i += stride) {
      const int row = static_cast<int>(i / K), k = static_cast<int>(i % K);
      const char* m = p.layout.meta_row(p.local, row);
      write_index(p.recv_topk_idx, p.idx_int64, i,
                  reinterpret_cast<const int32_t*>(m + meta.ids_offset())[k]);
      p.recv_topk_weights[i] = reinterpret_cast<const float*>(m + meta.weights_offset())[k];
    }
    for (size_t row = first; row < static_cast<size_t>(num_recv); row += stride) {
      const int2 src = *reinterpret_cast<const int2*>(p.layout.meta_row(p.local, row));
      reinterpret_cast<int2*>(p.recv_src)[row] = src;
    }
  }
  if (p.recv_scales) {
    for (size_t i = first; i < static_cast<size_t>(num_recv) * S; i += stride) {
      const size_t row = i / S, j = i % S;
      p.recv_scales[i] =
          reinterpret_cast<const float*>(p.layout.meta_row(p.local, row) + meta.scales_offset())[j];
    }
  }
}

// The group of an expert-major row: the last local expert whose group starts at or before it
// (empty groups start where the next one does, so they are passed over).
__device__ __forceinline__ int group_of(const int* offsets, int num_groups, int row) {
  int lo = 0, hi = num_groups - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= row) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Expert-major receive side: pair rows get their source, slot, weight and scales from the meta
// row; padding rows (after each group's pairs) get zero x and scales and the marks {-1, -1},
// -1, 0. A cached dispatch rewrites x and scales only (its meta outputs are the handle's).
__global__ void __launch_bounds__(512) pair_drain_kernel(cuda::DrainParams p) {
  if (rank_failed(p.state) || !p.state->dispatch_ok) return;
  const cuda::MetaLayout& meta = p.layout.meta;
  const int num_recv = *p.num_recv, Le = p.experts_per_rank, S = meta.num_scales;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  const size_t first = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const size_t vec_per_row = p.layout.row_bytes / 16;
  for (int le = 0; le < Le; ++le) {
    const int pad_begin = p.expert_offsets[le] + p.group_pairs[le];
    const size_t pad_vecs = static_cast<size_t>(p.expert_offsets[le + 1] - pad_begin) * vec_per_row;
    for (size_t i = first; i < pad_vecs; i += stride) {
      auto* row = reinterpret_cast<uint4*>(p.layout.row(p.local, pad_begin + i / vec_per_row));
      row[i % vec_per_row] = make_uint4(0, 0, 0, 0);
    }
  }
  for (size_t r = first; r < static_cast<size_t>(num_recv); r += stride) {
    const int row = static_cast<int>(r);
    const int le = group_of(p.expert_offsets, Le, row);
    const bool pad = row >= p.expert_offsets[le] + p.group_pairs[le];
    const char* m = p.layout.meta_row(p.local, row);
    if (!p.cached) {
      reinterpret_cast<int2*>(p.recv_src)[row] =
          pad ? make_int2(-1, -1) : *reinterpret_cast<const int2*>(m);
      p.recv_topk_slot[row] = pad ? -1 : reinterpret_cast<const int32_t*>(m + meta.ids_offset())[0];
      p.recv_weight[row] = pad ? 0.f : reinterpret_cast<const float*>(m + meta.weights_offset())[0];
    }
    if (p.recv_scales) {
      const auto* scales = reinterpret_cast<const float*>(m + meta.scales_offset());
      for (int j = 0; j < S; ++j) p.recv_scales[r * S + j] = pad ? 0.f : scales[j];
    }
  }
}

__global__ void __launch_bounds__(1024) copy_rows_kernel(cuda::RowCopyParams p) {
  if (rank_failed(p.state)) return;
  const int num_rows = *p.num_rows;
  const size_t vec_per_row = p.row_bytes / 16;
  const size_t total = vec_per_row * num_rows;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t row = i / vec_per_row, v = i % vec_per_row;
    const auto* src = reinterpret_cast<const uint4*>(p.src + row * p.src_stride) + v;
    auto* dst = reinterpret_cast<uint4*>(p.dst + row * p.dst_stride) + v;
    st_na(dst, ld_na(src));
  }
}

}  // namespace

cudaError_t load_drain_kernels() {
  return load_kernels(wait_arrivals_kernel, drain_kernel, pair_drain_kernel, copy_rows_kernel);
}

void launch_wait_arrivals(const cuda::ArrivalWaitParams& p, cudaStream_t stream) {
  wait_arrivals_kernel<<<1, 256, 0, stream>>>(p);
}

void launch_drain(const cuda::DrainParams& p, int num_blocks, cudaStream_t stream) {
  if (p.expert_major) {
    pair_drain_kernel<<<num_blocks, 512, 0, stream>>>(p);
  } else {
    drain_kernel<<<num_blocks, 512, 0, stream>>>(p);
  }
}

void launch_copy_rows(const cuda::RowCopyParams& p, int num_blocks, cudaStream_t stream) {
  copy_rows_kernel<<<num_blocks, 1024, 0, stream>>>(p);
}

}  // namespace epcomm::kernels
