// Host-callable launchers of the device kernels. Each takes one params struct by value.
// Callers check cudaGetLastError() after each launch.
#pragma once

#include <cuda_runtime.h>

#include "ll_params.hpp"
#include "params.hpp"

namespace epcomm::kernels {

// Each loads its file's kernels into the current context and returns the first error.
cudaError_t load_layout_kernels();
cudaError_t load_notify_kernels();
cudaError_t load_flat_send_kernels();
cudaError_t load_drain_kernels();
cudaError_t load_gather_combine_kernels();
cudaError_t load_ring_kernels();
cudaError_t load_ll_dispatch_kernels();
cudaError_t load_ll_combine_kernels();
cudaError_t load_stream_prime_kernels();
cudaError_t load_domain_forward_kernels();
cudaError_t load_domain_combine_kernels();

// Loads every kernel of the library. Called while creating a communicator: under lazy loading
// a kernel's first launch can wait for the whole context, and so for a peer's kernel that is
// itself waiting for this rank.
inline cudaError_t load_all_kernels() {
  for (auto load : {load_layout_kernels, load_notify_kernels, load_flat_send_kernels,
                    load_drain_kernels, load_gather_combine_kernels, load_ring_kernels,
                    load_ll_dispatch_kernels, load_ll_combine_kernels, load_stream_prime_kernels,
                    load_domain_forward_kernels, load_domain_combine_kernels}) {
    const cudaError_t err = load();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

// Launches an empty kernel: a stream's first launch, issued while no peer waits (stream_prime.cu).
void launch_stream_prime(cudaStream_t stream);

size_t layout_shared_bytes(int num_experts, int num_ranks);
size_t pair_layout_shared_bytes(int max_topk);
size_t notify_shared_bytes(int num_ranks, int experts_per_rank);

void launch_layout(const cuda::LayoutParams& p, cudaStream_t stream);
void launch_pair_layout(const cuda::LayoutParams& p, cudaStream_t stream);
void launch_notify(const cuda::NotifyParams& p, cudaStream_t stream);
// Dynamic shared memory of a flat send block on R ranks, with or without bulk copies (the
// bulk form fits where this is at most the device's opt-in limit per block).
size_t flat_send_shared_bytes(int num_ranks, bool bulk);
void launch_flat_send(const cuda::SendParams& p, int num_blocks, cudaStream_t stream);
void launch_wait_arrivals(const cuda::ArrivalWaitParams& p, cudaStream_t stream);
void launch_drain(const cuda::DrainParams& p, int num_blocks, cudaStream_t stream);
void launch_copy_rows(const cuda::RowCopyParams& p, int num_blocks, cudaStream_t stream);
void launch_combine_ready(const cuda::CombineReadyParams& p, cudaStream_t stream);
void launch_gather(const cuda::GatherParams& p, int num_blocks, cudaStream_t stream);
// Across NVLink domains (docs/design.md section 23). The forwarder waits inside its grid, for
// the sources' forward words only, each of which the source's module sets after its puts.
void launch_forward(const cuda::DomainKernelParams& p, int num_blocks, cudaStream_t stream);
void launch_domain_partials(const cuda::DomainKernelParams& p, int num_blocks, cudaStream_t stream);
void launch_wait_partials(const cuda::DomainKernelParams& p, cudaStream_t stream);
void launch_domain_sum(const cuda::DomainKernelParams& p, int num_blocks, cudaStream_t stream);
// Ring path: 2 x channels blocks of kRingThreads.
constexpr int kRingThreads = 1024;
void launch_ring_dispatch(const cuda::RingParams& p, cudaStream_t stream);
void launch_ring_combine(const cuda::RingParams& p, cudaStream_t stream);
// Low-latency mode (ll_params.hpp). The receive kernels wait inside their grids. Every LL kernel
// runs blocks of kLlThreads threads, one per SM it is given (dispatch_sms, combine_sms), at most
// 64 registers each: a block fills an SM's register file, so check_residency
// (low_latency_engine.cpp) counts SMs and never relies on blocks of two kernels sharing one, and
// it keeps twice the loads in flight of the 512-thread blocks before it (docs/perf.md). A kernel
// above 64 registers (the combine send with overlapped copies took 110) cannot launch.
constexpr int kLlThreads = 1024;
size_t ll_send_shared_bytes(int num_experts, int num_ranks);
size_t ll_recv_shared_bytes(int experts_per_rank, int num_ranks);
void launch_ll_dispatch_send(const cuda::LowLatencyParams& p, int num_blocks, cudaStream_t stream);
void launch_ll_dispatch_recv(const cuda::LowLatencyParams& p, int num_blocks, cudaStream_t stream);
void launch_ll_combine_send(const cuda::LowLatencyParams& p, int num_blocks, cudaStream_t stream);
void launch_ll_combine_recv(const cuda::LowLatencyParams& p, int num_blocks, cudaStream_t stream);
// Blocks of any low-latency kernel that fit on an SM (each is built for 2: one waiting, one not).
int ll_blocks_per_sm();
// Blocks of one ring kernel that fit on an SM (the ring kernels wait inside wide grids).
int ring_blocks_per_sm();

}  // namespace epcomm::kernels
