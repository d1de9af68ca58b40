// Checks a CUDA communicator makes while it is created (cuda_backend.cpp), each throwing an
// Error that names the setting and the numbers.
#pragma once

#include <algorithm>

#include "epcomm/bootstrap.hpp"
#include "epcomm/config.hpp"
#include "epcomm/dispatch.hpp"
#include "epcomm/error.hpp"

namespace epcomm::cuda {

// Ring channels of `config`: max(1, dispatch_sms / 2) on the ring path, 0 on the flat path.
inline int ring_channels(const Config& config) {
  return config.algorithm == Algorithm::kRing ? std::max(1, config.dispatch_sms / 2) : 0;
}

// kInvalidArgument when Config.<field> = value exceeds the device's SMs.
void check_sms(const char* field, int value, int device_sms, int device);

// The ring path's limits (ranks, equal SM knobs, resident grids); nothing on the flat path.
void check_ring(const Config& config, int num_ranks, int sharing, int device, int device_sms);

// Config::transport: nvshmem needs one rank per process (kInvalidArgument). Domains smaller
// than the job are checked where the region is mapped (MemoryDomain).
void check_transport(const Config& config, const Bootstrap& bootstrap);

// A high-throughput call (`call`) across domains smaller than the R ranks: the flat path's
// token-major rows only (kUnsupported naming the layout or algorithm and the domains found).
void check_across_domains(const char* call, const Config& config, const DispatchOptions& options,
                          int ranks_per_domain, int R);

// Ranks of this process on `device`, this one included. Collective among in-process ranks.
int ranks_sharing_device(Bootstrap& bootstrap, int device);

// In-process ranks sharing a GPU need their own hardware queues (kUnsupported otherwise).
void check_hardware_queues(int sharing, int device);

}  // namespace epcomm::cuda
