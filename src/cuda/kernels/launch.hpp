// Host-callable launchers of the device kernels. Each takes one params struct by value.
// Callers check cudaGetLastError() after each launch.
#pragma once

#include <cuda_runtime.h>

#include "params.hpp"

namespace epcomm::kernels {

size_t layout_shared_bytes(int num_experts, int num_ranks);
size_t notify_shared_bytes(int num_ranks, int experts_per_rank);

void launch_layout(const cuda::LayoutParams& p, cudaStream_t stream);
void launch_notify(const cuda::NotifyParams& p, cudaStream_t stream);
void launch_flat_send(const cuda::SendParams& p, int num_blocks, cudaStream_t stream);
void launch_wait_arrivals(const cuda::ArrivalWaitParams& p, cudaStream_t stream);
void launch_drain(const cuda::DrainParams& p, int num_blocks, cudaStream_t stream);
void launch_copy_rows(const cuda::RowCopyParams& p, int num_blocks, cudaStream_t stream);
void launch_combine_ready(const cuda::CombineReadyParams& p, cudaStream_t stream);
void launch_gather(const cuda::GatherParams& p, int num_blocks, cudaStream_t stream);

}  // namespace epcomm::kernels
