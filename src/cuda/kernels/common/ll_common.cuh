// Device helpers the low-latency kernels share: reading top-k ids, the per-token expert rule
// (once per expert, under its first slot), the fp8 cast, and the "last block" hand-off.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "../launch.hpp"
#include "../ll_params.hpp"
#include "last_block.cuh"
#include "ptx.cuh"
#include "wait.cuh"
#include "warp_copy.cuh"

namespace epcomm::kernels {

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

// The index of the last entry <= value in the ascending table[0..n] (table[0] <= value).
__device__ __forceinline__ int last_at_most(const int* table, int n, int value) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (table[mid] <= value)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// One warp turns values[0..n) into their exclusive prefix sums in place and writes the total to
// values[n] (shuffles, 32 entries at a time).
__device__ __forceinline__ void warp_exclusive_scan(int* values, int n, int lane) {
  int carry = 0;
  for (int i0 = 0; i0 < n; i0 += 32) {  // warp-uniform bound: the shuffles need every lane
    const int i = i0 + lane;
    const int v = i < n ? values[i] : 0;
    int inclusive = v;
#pragma unroll
    for (int d = 1; d < 32; d *= 2) {
      const int up = __shfl_up_sync(0xffffffffu, inclusive, d);
      if (lane >= d) inclusive += up;
    }
    if (i < n) values[i] = carry + inclusive - v;
    carry += __shfl_sync(0xffffffffu, inclusive, 31);
  }
  if (lane == 0) values[n] = carry;
}

// Rows whose addresses a block tables in shared memory at once.
constexpr int kRowTable = 128;

// The whole block copies `num_rows` rows of `row_bytes` (a multiple of 16), row j from src_of(j)
// to dst_of(j) (a null destination skips the row). Each row's addresses are computed once, into a
// shared table; then every thread takes items (a 16-byte column of kUnroll rows; 8: enough bytes in
// flight per SM to cover the latency with one block per SM), so a handful of rows (decode batches)
// keeps the whole block's loads in flight. (Issuing the next item's loads before the current stores
// was slower in the dispatch receive at 4 rows, and at 8 rows needs more than the 64 registers a
// 1024-thread block leaves.) kLocalInput: the rows are this rank's own input, which nobody writes
// during the kernel (non-coherent loads). Every thread of the block must call it (it synchronizes
// the block).
template <bool kLocalInput, typename SrcOf, typename DstOf>
__device__ __forceinline__ void block_copy_rows(int num_rows, size_t row_bytes, SrcOf src_of,
                                                DstOf dst_of) {
  __shared__ const char* s_src[kRowTable];
  __shared__ char* s_dst[kRowTable];
  const int row_vectors = static_cast<int>(row_bytes / 16);
  for (int r0 = 0; r0 < num_rows; r0 += kRowTable) {
    const int n = min(kRowTable, num_rows - r0);
    __syncthreads();  // the previous table is no longer read
    for (int r = threadIdx.x; r < n; r += blockDim.x) {
      s_src[r] = reinterpret_cast<const char*>(src_of(r0 + r));
      s_dst[r] = reinterpret_cast<char*>(dst_of(r0 + r));
    }
    __syncthreads();
    constexpr int kUnroll = 8;
    const int items = (n + kUnroll - 1) / kUnroll * row_vectors;
    for (int i = threadIdx.x; i < items; i += blockDim.x) {
      const int r = i / row_vectors * kUnroll, c = i % row_vectors;
      uint4 v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (r + u >= n || s_dst[r + u] == nullptr) continue;
        const auto* src = reinterpret_cast<const uint4*>(s_src[r + u]) + c;
        v[u] = kLocalInput ? ld_nc_na(src) : ld_na(src);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (r + u < n && s_dst[r + u] != nullptr) {
          st_na(reinterpret_cast<uint4*>(s_dst[r + u]) + c, v[u]);
        }
      }
    }
  }
}

// ceil(log2(v)) for a positive normal v, from its bits (the host reference's log2_ceil).
__device__ __forceinline__ int log2_ceil(float v) {
  const uint32_t bits = __float_as_uint(v);
  return static_cast<int>((bits >> 23) & 0xffu) - 127 + ((bits & 0x7fffffu) != 0 ? 1 : 0);
}

// 2^e for e in [-126, 127], exactly.
__device__ __forceinline__ float pow2(int e) {
  return __uint_as_float(static_cast<uint32_t>(e + 127) << 23);
}

// Casts 8 bf16 (one lane's share of a 128-element group spread over a half-warp) to fp8 e4m3
// exactly as the host reference does: a = max(amax, 1e-4f), q = e4m3(x * (448 / a)) rounded to
// nearest even and saturated, scale = a / 448 (IEEE division and multiplication); with
// round_scale, e = ceil(log2(a * (1 / 448))), q = e4m3(x * 2^-e), scale = 2^e. Every lane of
// the warp must call it (the amax is reduced with shuffles inside each half-warp).
__device__ __forceinline__ uint2 cast_group_to_fp8(const uint4& v, bool round_scale, float* scale) {
  float f[8];
  bf16x8_to_float(v, f);
  float amax = 0.f;
#pragma unroll
  for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(f[i]));
#pragma unroll
  for (int m = 8; m >= 1; m /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, m));
  const float a = fmaxf(amax, 1e-4f);
  const int e = round_scale ? log2_ceil(__fmul_rn(a, 1.0f / 448.0f)) : 0;
  const float inv = round_scale ? pow2(-e) : __fdiv_rn(448.0f, a);
  uint32_t packed[2] = {0, 0};
#pragma unroll
  for (int i = 0; i < 8; i += 2) {  // the first of a pair lands in the low byte
    const uint32_t pair = __nv_cvt_float2_to_fp8x2(
        make_float2(__fmul_rn(f[i], inv), __fmul_rn(f[i + 1], inv)), __NV_SATFINITE, __NV_E4M3);
    packed[i / 4] |= pair << (8 * (i % 4));
  }
  *scale = round_scale ? pow2(e) : __fdiv_rn(a, 448.0f);
  return make_uint2(packed[0], packed[1]);
}

// The tag of this buffer's current round in its signal words (never 0: see sequence_tag).
__device__ __forceinline__ uint32_t round_tag(const cuda::LowLatencyParams& p) {
  return cuda::sequence_tag(p.counters->round[p.buffer]);
}

// Warp 0 of the last block (last_block_done) posts n signals: signal(i) gets value(i), which is
// evaluated for every i; a null signal(i) (a masked peer) is skipped. One
// system-scope fence, then relaxed stores: each lane's stores follow the fence (a release
// pattern), cumulative over every block's writes, which the last block acquired (and which
// each block released at system scope itself). One fence per lane instead of one per signal.
template <typename SignalOf, typename ValueOf>
__device__ __forceinline__ void post_signals(int n, SignalOf signal, ValueOf value) {
  if (threadIdx.x >= 32) return;
  fence_acq_rel_sys();
  for (int i = threadIdx.x; i < n; i += 32) {
    const uint64_t v = value(i);
    if (uint64_t* target = signal(i)) st_relaxed_sys(target, v);
  }
}

__device__ __forceinline__ bool rank_masked(const cuda::LowLatencyParams& p, int rank) {
  return *reinterpret_cast<const volatile int32_t*>(p.mask + rank) != 0;
}

// How a receive kernel's wait on a peer ended.
enum class PeerWait { kArrived, kMasked, kFailed };

// A receive kernel's wait on `peer`'s word: kArrived once done(word) holds (word in *seen),
// kMasked when the peer is masked, kFailed when the rank failed. Without shrink a timeout fails the
// rank as bounded_wait does. With shrink the blocks agree on each peer through verdict[peer] (first
// CAS wins): a thread that sees the word claims kPeerArrived, one that times out first claims
// kPeerMasked and masks the peer, and every thread follows the verdict, so all blocks use the
// same peers. A timeout after kPeerArrived (the peer posted to other threads but not this one)
// fails the rank. *waited_ns gets the time waited.
template <typename Done>
__device__ PeerWait wait_on_peer(const cuda::LowLatencyParams& p, const uint64_t* addr, Done done,
                                 uint64_t expected, int32_t phase, int peer, uint32_t* verdict,
                                 uint64_t* seen, uint64_t* waited_ns, uint32_t backoff_ns = 0) {
  using cuda::kPeerArrived;
  using cuda::kPeerMasked;
  using cuda::kPeerUndecided;
  const uint64_t start = global_timer_ns();
  *waited_ns = 0;
  if (rank_masked(p, peer)) return PeerWait::kMasked;
  if (!p.shrink) {
    const bool ok = bounded_wait(p.wait, addr, done, expected, phase, peer, seen, backoff_ns);
    *waited_ns = global_timer_ns() - start;
    return ok ? PeerWait::kArrived : PeerWait::kFailed;
  }
  uint32_t spins = 0;
  while (true) {
    const uint64_t v = ld_acquire_sys(addr);
    if (done(v)) {
      *waited_ns = global_timer_ns() - start;
      const uint32_t was = atomicCAS(verdict, kPeerUndecided, kPeerArrived);
      *seen = v;
      return was == kPeerMasked ? PeerWait::kMasked : PeerWait::kArrived;
    }
    if (backoff_ns != 0) __nanosleep(backoff_ns);
    if ((++spins & 63) != 0) continue;
    if (rank_failed(p.wait.state)) return PeerWait::kFailed;
    if (*reinterpret_cast<volatile uint32_t*>(verdict) == kPeerMasked) break;
    if (global_timer_ns() - start <= p.wait.timeout_ns) continue;
    const uint32_t was = atomicCAS(verdict, kPeerUndecided, kPeerMasked);
    if (was == kPeerArrived) {
      record_error(p.wait.errors, cuda::kDevTimeout, phase, p.rank, peer, expected, v);
      *reinterpret_cast<volatile int32_t*>(&p.wait.state->failed) = 1;
      return PeerWait::kFailed;
    }
    *reinterpret_cast<volatile int32_t*>(p.mask + peer) = 1;
    break;
  }
  *waited_ns = global_timer_ns() - start;
  return PeerWait::kMasked;
}

__device__ __forceinline__ void add_wait_cost(const cuda::LowLatencyParams& p, int peer,
                                              uint64_t ns) {
  if (p.wait_cost_stats != nullptr && ns != 0) {
    atomicAdd(reinterpret_cast<unsigned long long*>(p.wait_cost_stats + peer),
              static_cast<unsigned long long>(ns));
  }
}

}  // namespace epcomm::kernels
