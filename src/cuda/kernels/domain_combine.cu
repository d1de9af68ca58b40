// Combine across NVLink domains (DESIGN section 11, docs/design.md section 23):
//   out[t] = bf16( sum over domains D ascending, that t reached, of f32(P_D) + bias + bias2 )
//   P_D = bf16( sum over ranks d of D ascending of y_d[slot(t, d)] in fp32 )
// the order the host reference implements (src/host/combine_order.hpp).
// - domain_partials: this rank's own domain's partial of each of its tokens into
//   in_partial(b, own, t), and as forwarder, for each token a source of another domain A
//   forwarded here, this domain's partial into out_partial(A, t), which the NVSHMEM module then
//   puts to that source's in_partial(b, this domain, t) before setting its partial word.
// - wait_partials: one block waits for every other domain's partial word of this combine, then
//   counts the combine (DeviceState::domain_combines).
// - domain_sum: the partials of each token in ascending domain order, then the biases.
// b = domain_combines & 1 before wait_partials counts the combine (so (count - 1) & 1 after)
// picks the partials and partial words: a forwarder writes buffer b again only in the combine
// after next, which it starts after waiting for this source's partials of the next one, sent
// after this source's wait and sum. (A second combine of one dispatch has no count exchange
// between them, which would otherwise order the forwarder after the source.)
// Only the first waits, in one block; the wide kernels read rows and partials already in place.
#include "common/gather_rows.cuh"
#include "common/wait.cuh"
#include "launch.hpp"

namespace epcomm::kernels {
namespace {

using cuda::DomainKernelParams;
using cuda::DomainLayout;

constexpr int kDomainThreads = 1024;

__device__ cuda::GatherParams gather_into(const DomainKernelParams& p, char* out) {
  cuda::GatherParams g{};
  g.hidden = p.hidden;
  g.out = reinterpret_cast<uint16_t*>(out);
  g.bias = p.bias;
  g.bias2 = p.bias2;
  return g;
}

// Lists the rows of this domain's ranks ascending whose slot in `slots` (indexed by rank) is
// set; returns how many.
__device__ int list_domain_rows(const DomainKernelParams& p, const int32_t* slots,
                                const uint4** rows, int lane) {
  const int L = p.domains.layout.ranks_per_domain, first = p.domains.layout.domain_of(p.rank) * L;
  int n = 0;
  for (int base = 0; base < L; base += 32) {
    const int d = first + base + lane;
    const int slot = base + lane < L ? slots[d] : -1;
    const uint32_t mask = __ballot_sync(0xffffffffu, slot >= 0);
    if (slot >= 0) {
      rows[n + __popc(mask & lanemask_lt())] =
          reinterpret_cast<const uint4*>(p.layout.combine_row(p.peers[d], slot));
    }
    n += __popc(mask);
  }
  __syncwarp();
  return n;
}

// Tokens the source of domain `a` forwarded here in the current dispatch (0 for this domain,
// or when its word is not of this dispatch: the dispatch was rejected).
__device__ int forwarded_tokens(const DomainKernelParams& p, int a, uint32_t tag) {
  const DomainLayout& dl = p.domains.layout;
  if (a == dl.domain_of(p.rank)) return 0;
  const uint64_t word =
      *reinterpret_cast<volatile uint64_t*>(dl.forward_word(p.domains.staging, a));
  return static_cast<uint32_t>(word >> 32) == tag ? static_cast<int>(static_cast<uint32_t>(word))
                                                  : 0;
}

// Shared memory: [warps][L] row pointers.
__global__ void __launch_bounds__(kDomainThreads) domain_partials_kernel(DomainKernelParams p) {
  const cuda::DeviceState* state = p.wait.state;
  if (rank_failed(state) || !state->dispatch_ok) return;
  const DomainLayout& dl = p.domains.layout;
  extern __shared__ const uint4* s_rows[];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const uint4** rows = s_rows + warp * dl.ranks_per_domain;
  const int first_warp = blockIdx.x * (blockDim.x / 32), num_warps = gridDim.x * blockDim.x / 32;
  const int mine = dl.domain_of(p.rank);
  const uint32_t tag = cuda::sequence_tag(state->epoch);
  const int buffer = static_cast<int>(state->domain_combines & 1);
  // a = -1: this rank's own tokens, into in_partial(mine, t); else the tokens the source of
  // domain a forwarded here, into out_partial(a, t).
  for (int a = -1; a < dl.num_domains(); ++a) {
    const int T = a < 0 ? p.num_tokens : forwarded_tokens(p, a, tag);
    const cuda::GatherParams g =
        gather_into(p, a < 0 ? dl.in_partial(p.domains.staging, buffer, mine, 0)
                             : dl.out_partial(p.domains.staging, a, 0));
    for (int t = first_warp + warp; t < T; t += num_warps) {
      const int32_t* slots = p.slot + static_cast<size_t>(t) * p.num_ranks;
      if (a >= 0) {
        char* record = dl.in_record(p.domains.staging, a, t);
        if (*reinterpret_cast<volatile uint32_t*>(&dl.header(record)->tag) != tag) continue;
        slots = dl.slots(record);
      }
      const int n = list_domain_rows(p, slots, rows, lane);
      // A domain the token does not reach adds nothing: domain_sum skips it too.
      if (n > 0) gather_token<false, false>(g, rows, nullptr, n, t, lane);
      __syncwarp();
    }
  }
}

__global__ void __launch_bounds__(128) wait_partials_kernel(DomainKernelParams p) {
  cuda::DeviceState* state = p.wait.state;
  if (rank_failed(state) || !state->dispatch_ok) return;
  const DomainLayout& dl = p.domains.layout;
  const uint32_t tag = cuda::sequence_tag(state->combine_seq);
  const int buffer = static_cast<int>(state->domain_combines & 1);
  bool ok = true;
  for (int b = threadIdx.x; b < dl.num_domains() && ok; b += blockDim.x) {
    if (b == dl.domain_of(p.rank)) continue;
    uint64_t word = 0;
    ok = wait_tagged(p.wait, dl.partial_word(p.domains.staging, buffer, b), tag,
                     cuda::kPhasePartials, dl.partner(p.rank, b), &word);
  }
  if (__syncthreads_and(ok) && threadIdx.x == 0) state->domain_combines += 1;
}

// Lists token t's partials in ascending domain order, one per domain one of whose ranks holds
// a row of t; returns how many. Shared memory: [warps][D] pointers.
__device__ int list_partials(const DomainKernelParams& p, int buffer, int t, const uint4** rows,
                             int lane) {
  const DomainLayout& dl = p.domains.layout;
  const int L = dl.ranks_per_domain;
  const int32_t* slots = p.slot + static_cast<size_t>(t) * p.num_ranks;
  int n = 0;
  for (int base = 0; base < dl.num_domains(); base += 32) {
    const int b = base + lane;
    bool reached = false;
    for (int d = b * L; b < dl.num_domains() && d < (b + 1) * L; ++d) reached |= slots[d] >= 0;
    const uint32_t mask = __ballot_sync(0xffffffffu, reached);
    if (reached) {
      rows[n + __popc(mask & lanemask_lt())] =
          reinterpret_cast<const uint4*>(dl.in_partial(p.domains.staging, buffer, b, t));
    }
    n += __popc(mask);
  }
  __syncwarp();
  return n;
}

template <bool kBias>
__global__ void __launch_bounds__(kDomainThreads) domain_sum_kernel(DomainKernelParams p) {
  const cuda::DeviceState* state = p.wait.state;
  if (rank_failed(state) || !state->dispatch_ok) return;
  extern __shared__ const uint4* s_rows[];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, num_warps = blockDim.x / 32;
  const uint4** rows = s_rows + warp * p.domains.layout.num_domains();
  const cuda::GatherParams g = gather_into(p, reinterpret_cast<char*>(p.out));
  const int buffer = static_cast<int>((state->domain_combines - 1) & 1);  // counted already
  for (int t = blockIdx.x * num_warps + warp; t < p.num_tokens; t += gridDim.x * num_warps) {
    const int n = list_partials(p, buffer, t, rows, lane);
    gather_token<kBias, false>(g, rows, nullptr, n, t, lane);
    __syncwarp();
  }
}

}  // namespace

cudaError_t load_domain_combine_kernels() {
  return load_kernels(domain_partials_kernel, wait_partials_kernel, domain_sum_kernel<false>,
                      domain_sum_kernel<true>);
}

void launch_domain_partials(const cuda::DomainKernelParams& p, int num_blocks,
                            cudaStream_t stream) {
  const size_t shared =
      sizeof(const uint4*) * (kDomainThreads / 32) * p.domains.layout.ranks_per_domain;
  domain_partials_kernel<<<num_blocks, kDomainThreads, shared, stream>>>(p);
}

void launch_wait_partials(const cuda::DomainKernelParams& p, cudaStream_t stream) {
  wait_partials_kernel<<<1, 128, 0, stream>>>(p);
}

void launch_domain_sum(const cuda::DomainKernelParams& p, int num_blocks, cudaStream_t stream) {
  if (p.num_tokens == 0) return;
  const size_t shared =
      sizeof(const uint4*) * (kDomainThreads / 32) * p.domains.layout.num_domains();
  if (p.bias != nullptr || p.bias2 != nullptr) {
    domain_sum_kernel<true><<<num_blocks, kDomainThreads, shared, stream>>>(p);
  } else {
    domain_sum_kernel<false><<<num_blocks, kDomainThreads, shared, stream>>>(p);
  }
}

}  // namespace epcomm::kernels
