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

// Loads a thread keeps in flight in the drain loops: a thread's elements are independent, but
// the compiler cannot hoist a load above the previous element's store (the pointers may alias),
// so without batching every element would wait a full memory round trip.
constexpr int kDrainBatch = 8;

// For i = first, first + stride, ... < n: store(i, load(i)), the loads of kDrainBatch elements
// issued before their stores.
template <typename Load, typename Store>
__device__ __forceinline__ void drain_elements(size_t n, size_t first, size_t stride, Load load,
                                               Store store) {
  for (size_t base = first; base < n; base += stride * kDrainBatch) {
    decltype(load(size_t{0})) v[kDrainBatch];
#pragma unroll
    for (int u = 0; u < kDrainBatch; ++u) {
      const size_t i = base + u * stride;
      if (i < n) v[u] = load(i);
    }
#pragma unroll
    for (int u = 0; u < kDrainBatch; ++u) {
      const size_t i = base + u * stride;
      if (i < n) store(i, v[u]);
    }
  }
}

struct SlotMeta {
  int32_t id;
  float weight;
};
struct PairMeta {
  int2 src;
  SlotMeta slot;
};

__global__ void __launch_bounds__(512) drain_kernel(cuda::DrainParams p) {
  if (rank_failed(p.state) || !p.state->dispatch_ok) return;
  const cuda::MetaLayout& meta = p.layout.meta;
  const int num_recv = *p.num_recv, K = p.num_topk, S = meta.num_scales;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  const size_t first = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (!p.cached) {
    drain_elements(
        static_cast<size_t>(num_recv) * K, first, stride,
        [&](size_t i) {
          const char* m = p.layout.meta_row(p.local, static_cast<int>(i / K));
          const size_t k = i % K;
          return SlotMeta{reinterpret_cast<const int32_t*>(m + meta.ids_offset())[k],
                          reinterpret_cast<const float*>(m + meta.weights_offset())[k]};
        },
        [&](size_t i, SlotMeta v) {
          write_index(p.recv_topk_idx, p.idx_int64, i, v.id);
          p.recv_topk_weights[i] = v.weight;
        });
    drain_elements(
        static_cast<size_t>(num_recv), first, stride,
        [&](size_t row) {
          return *reinterpret_cast<const int2*>(p.layout.meta_row(p.local, static_cast<int>(row)));
        },
        [&](size_t row, int2 src) { reinterpret_cast<int2*>(p.recv_src)[row] = src; });
  }
  if (p.recv_scales) {
    drain_elements(
        static_cast<size_t>(num_recv) * S, first, stride,
        [&](size_t i) {
          const char* m = p.layout.meta_row(p.local, static_cast<int>(i / S));
          return reinterpret_cast<const float*>(m + meta.scales_offset())[i % S];
        },
        [&](size_t i, float v) { p.recv_scales[i] = v; });
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

// Whether expert-major row `row` is padding: past its group's pairs. `offsets` [Le + 1] and
// `pairs` [Le] are the block's shared-memory copies of the group table.
__device__ __forceinline__ bool padding_row(const int* offsets, const int* pairs, int Le, int row) {
  const int le = group_of(offsets, Le, row);
  return row >= offsets[le] + pairs[le];
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
  // The group table in shared memory: every pair element asks it for its row's group.
  extern __shared__ int s_groups[];
  int* s_offsets = s_groups;         // [Le + 1]
  int* s_pairs = s_groups + Le + 1;  // [Le]
  for (int i = threadIdx.x; i <= Le; i += blockDim.x) {
    s_offsets[i] = p.expert_offsets[i];
    if (i < Le) s_pairs[i] = p.group_pairs[i];
  }
  __syncthreads();
  auto padding = [&](int row) { return padding_row(s_offsets, s_pairs, Le, row); };
  for (int le = 0; le < Le; ++le) {
    const int pad_begin = p.expert_offsets[le] + p.group_pairs[le];
    const size_t pad_vecs = static_cast<size_t>(p.expert_offsets[le + 1] - pad_begin) * vec_per_row;
    for (size_t i = first; i < pad_vecs; i += stride) {
      auto* row = reinterpret_cast<uint4*>(p.layout.row(p.local, pad_begin + i / vec_per_row));
      row[i % vec_per_row] = make_uint4(0, 0, 0, 0);
    }
  }
  if (!p.cached) {
    drain_elements(
        static_cast<size_t>(num_recv), first, stride,
        [&](size_t r) {
          const int row = static_cast<int>(r);
          if (padding(row)) return PairMeta{make_int2(-1, -1), SlotMeta{-1, 0.f}};
          const char* m = p.layout.meta_row(p.local, row);
          return PairMeta{*reinterpret_cast<const int2*>(m),
                          SlotMeta{reinterpret_cast<const int32_t*>(m + meta.ids_offset())[0],
                                   reinterpret_cast<const float*>(m + meta.weights_offset())[0]}};
        },
        [&](size_t row, PairMeta v) {
          reinterpret_cast<int2*>(p.recv_src)[row] = v.src;
          p.recv_topk_slot[row] = v.slot.id;
          p.recv_weight[row] = v.slot.weight;
        });
  }
  if (p.recv_scales) {
    drain_elements(
        static_cast<size_t>(num_recv) * S, first, stride,
        [&](size_t i) {
          const int row = static_cast<int>(i / S);
          if (padding(row)) return 0.f;
          return reinterpret_cast<const float*>(p.layout.meta_row(p.local, row) +
                                                meta.scales_offset())[i % S];
        },
        [&](size_t i, float v) { p.recv_scales[i] = v; });
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
    const size_t group_table = sizeof(int) * (2 * static_cast<size_t>(p.experts_per_rank) + 1);
    pair_drain_kernel<<<num_blocks, 512, group_table, stream>>>(p);
  } else {
    drain_kernel<<<num_blocks, 512, 0, stream>>>(p);
  }
}

void launch_copy_rows(const cuda::RowCopyParams& p, int num_blocks, cudaStream_t stream) {
  copy_rows_kernel<<<num_blocks, 1024, 0, stream>>>(p);
}

}  // namespace epcomm::kernels
