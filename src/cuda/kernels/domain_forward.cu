// Dispatch across NVLink domains, the forwarder's part (DESIGN section 11, docs/design.md
// section 23). The source of domain A with this rank's local index has put one record per token
// bound for this rank's domain into in_record(A, token), then set forward_word(A) to this
// dispatch's tag and its token count. The forwarder waits for that word, then stores each
// record's row, fp8 scales and meta row at the token's final slot on every rank of this domain
// it reaches (over NVLink, as the flat send does), and raises arrived[source] there by the rows
// it delivered. wait_arrivals and the drain at those ranks are unchanged.
#include "common/meta_row.cuh"
#include "common/wait.cuh"
#include "launch.hpp"

namespace epcomm::kernels {
namespace {

using cuda::DomainKernelParams;
using cuda::DomainLayout;

constexpr int kForwardThreads = 1024;

// The number of tokens the source of `domain` staged in this dispatch, once its forward word
// carries `tag`; false after a timeout.
__device__ bool wait_forwarded(const DomainKernelParams& p, int domain, uint32_t tag, int* tokens) {
  const DomainLayout& dl = p.domains.layout;
  uint64_t word = 0;
  if (!wait_tagged(p.wait, dl.forward_word(p.domains.staging, domain), tag, cuda::kPhaseForward,
                   dl.partner(p.rank, domain), &word)) {
    return false;
  }
  *tokens = static_cast<int>(static_cast<uint32_t>(word));
  return true;
}

// One warp reads `row` once, two 16-byte vectors a lane in flight, and stores it at row
// `slot` (lane k's) of rank first + k for each lane k in `mask`.
__device__ void store_row(const DomainKernelParams& p, const char* row, int first, uint32_t mask,
                          int slot, int lane) {
  constexpr int kUnroll = 2;
  const int num_vec = static_cast<int>(p.layout.row_bytes / 16);
  const auto* src = reinterpret_cast<const uint4*>(row);
  // NOTE: the loop bound is warp-uniform: the shuffles below need every lane.
  for (int base = 0; base < num_vec; base += 32 * kUnroll) {
    uint4 vec[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (base + lane + 32 * u < num_vec) vec[u] = ld_na(src + base + lane + 32 * u);
    }
    for (uint32_t m = mask; m; m &= m - 1) {
      const int k = __ffs(m) - 1;
      const int dst_row = __shfl_sync(0xffffffffu, slot, k);
      auto* dst = reinterpret_cast<uint4*>(p.layout.row(p.peers[first + k], dst_row));
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (base + lane + 32 * u < num_vec) st_na(dst + base + lane + 32 * u, vec[u]);
      }
    }
  }
}

// One warp stores token t's record (from `source`) at its final slot on each rank of this
// domain it reaches, counting the rows per local index in `delivered`.
__device__ void forward_record(const DomainKernelParams& p, char* record, int source, int t,
                               int* delivered, int lane) {
  const DomainLayout& dl = p.domains.layout;
  const int L = dl.ranks_per_domain, first = dl.domain_of(p.rank) * L;
  TokenSlots slots;
  if (!p.cached && lane < p.num_topk) {
    slots.expert = dl.ids(record)[lane];
    slots.weight = dl.weights(record)[lane];
  }
  for (int base = 0; base < L; base += 32) {
    const int j = base + lane;
    const int slot = j < L ? dl.slots(record)[first + j] : -1;
    const uint32_t mask = __ballot_sync(0xffffffffu, slot >= 0);
    if (mask != 0) store_row(p, dl.row(record), first + base, mask, slot, lane);
    for (uint32_t m = mask; m; m &= m - 1) {
      const int k = __ffs(m) - 1, d = first + base + k;
      const int row = __shfl_sync(0xffffffffu, slot, k);
      write_meta_row(p.layout.meta_row(p.peers[d], row), p.layout.meta, slots, p.cached, source, t,
                     d, p.num_topk, p.experts_per_rank, dl.scales(record), lane);
    }
    if (slot >= 0) atomicAdd(&delivered[j], 1);
  }
}

// Shared memory: tokens [D] per source domain, then delivered [D][L] rows per (source domain,
// local index of the destination).
__global__ void __launch_bounds__(kForwardThreads) forward_kernel(DomainKernelParams p) {
  const cuda::DeviceState* state = p.wait.state;
  if (rank_failed(state) || !state->dispatch_ok) return;
  const DomainLayout& dl = p.domains.layout;
  const int D = dl.num_domains(), L = dl.ranks_per_domain, mine = dl.domain_of(p.rank);
  extern __shared__ int s_tokens[];
  int* s_delivered = s_tokens + D;
  const uint32_t tag = cuda::sequence_tag(state->epoch);
  for (int i = threadIdx.x; i < D * L; i += blockDim.x) s_delivered[i] = 0;
  bool ok = true;
  for (int a = threadIdx.x; a < D; a += blockDim.x) {
    s_tokens[a] = 0;
    if (a != mine && ok) ok = wait_forwarded(p, a, tag, &s_tokens[a]);
  }
  if (!__syncthreads_and(ok)) return;  // the error record names the source

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;
  for (int a = 0; a < D; ++a) {
    if (a == mine) continue;
    const int T = s_tokens[a], source = dl.partner(p.rank, a);
    const int t_begin = static_cast<int>(static_cast<long long>(T) * blockIdx.x / gridDim.x);
    const int t_end = static_cast<int>(static_cast<long long>(T) * (blockIdx.x + 1) / gridDim.x);
    for (int t = t_begin + warp; t < t_end; t += num_warps) {
      char* record = dl.in_record(p.domains.staging, a, t);
      // A record of an earlier dispatch: the token does not reach this domain now.
      if (*reinterpret_cast<volatile uint32_t*>(&dl.header(record)->tag) != tag) continue;
      forward_record(p, record, source, t, s_delivered + a * L, lane);
    }
  }
  // NOTE: the barrier comes before the release: publishing first would let a counter
  // overtake rows other warps of this block are still writing.
  __syncthreads();
  for (int i = threadIdx.x; i < D * L; i += blockDim.x) {
    if (s_delivered[i] == 0) continue;
    const int d = mine * L + i % L;
    __threadfence_system();
    red_add_release_sys(p.layout.arrived(p.peers[d]) + dl.partner(p.rank, i / L), s_delivered[i]);
  }
}

}  // namespace

cudaError_t load_domain_forward_kernels() { return load_kernels(forward_kernel); }

void launch_forward(const cuda::DomainKernelParams& p, int num_blocks, cudaStream_t stream) {
  const DomainLayout& dl = p.domains.layout;
  const size_t shared = sizeof(int) * dl.num_domains() * (1 + dl.ranks_per_domain);
  forward_kernel<<<num_blocks, kForwardThreads, shared, stream>>>(p);
}

}  // namespace epcomm::kernels
