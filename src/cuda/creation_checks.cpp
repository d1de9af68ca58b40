// Checks a CUDA communicator makes while it is created: SM counts, the ring path's limits, the
// ranks sharing a GPU and their hardware queues.
#include "creation_checks.hpp"

#include <algorithm>
#include <string>
#include <vector>

#include "env.hpp"
#include "kernels/launch.hpp"

namespace epcomm::cuda {

void check_sms(const char* field, int value, int device_sms, int device) {
  if (value > device_sms) {
    throw Error(ErrorCode::kInvalidArgument,
                std::string("Config.") + field + " = " + std::to_string(value) + " exceeds the " +
                    std::to_string(device_sms) + " SMs of GPU " + std::to_string(device));
  }
}

// The ring kernels wait inside wide grids: every rank's grid must be resident at once, and each
// peer needs its own warp group (with groups shared by peers, rings could wait on each other in
// a cycle). Collective among in-process ranks, like check_hardware_queues.
void check_ring(const Config& config, int num_ranks, int sharing, int device, int device_sms) {
  if (config.algorithm != Algorithm::kRing) return;
  const int R = num_ranks;
  if (R > 15) {
    throw Error(ErrorCode::kUnsupported,
                "the ring path supports up to 15 ranks, not " + std::to_string(R));
  }
  if (config.combine_sms != config.dispatch_sms) {
    throw Error(ErrorCode::kInvalidArgument,
                "Config.combine_sms = " + std::to_string(config.combine_sms) +
                    ": the ring path runs combine through the dispatch's channels, so it must "
                    "equal Config.dispatch_sms = " +
                    std::to_string(config.dispatch_sms));
  }
  // NOTE: `sharing` counts ranks of this process only; ranks in other processes sharing the GPU
  // (MPS) are not known here. The 8-process ring runs on one H200 (mpi_overlap_np8, the soak)
  // used SM counts whose grids fit together.
  const int blocks = sharing * 2 * ring_channels(config);
  const int fit = device_sms * kernels::ring_blocks_per_sm();
  if (blocks > fit) {
    throw Error(
        ErrorCode::kUnsupported,
        "ring path: " + std::to_string(sharing) + " ranks on GPU " + std::to_string(device) +
            " with Config.dispatch_sms = " + std::to_string(config.dispatch_sms) + " need " +
            std::to_string(blocks) + " resident blocks, but only " + std::to_string(fit) + " fit");
  }
}

// Ranks of this process on `device`, this one included (1 when ranks are separate processes,
// which have their own queues and contexts). Collective among in-process ranks.
int ranks_sharing_device(Bootstrap& bootstrap, int device) {
  if (!bootstrap.in_process()) return 1;
  std::vector<int> devices(bootstrap.size());
  bootstrap.allGather(&device, devices.data(), sizeof(int));
  return static_cast<int>(std::count(devices.begin(), devices.end(), device));
}

// Ranks of one process that share a GPU issue waiting kernels on their own streams. CUDA maps
// streams onto CUDA_DEVICE_MAX_CONNECTIONS hardware queues; two ranks on one queue deadlock
// (a rank's next kernel waits behind its spinning notify, and a peer's notify behind that).
void check_hardware_queues(int sharing, int device) {
  const int needed = 4 * sharing;  // a rank's own stream, and room for the caller's streams
  const int have = env::cuda_device_max_connections();
  if (sharing > 8) {
    throw Error(ErrorCode::kUnsupported, std::to_string(sharing) +
                                             " ranks of this process share GPU " +
                                             std::to_string(device) +
                                             ": CUDA has at most 32 hardware queues, enough "
                                             "for 8; run the others as separate processes");
  }
  if (sharing > 1 && have < needed) {
    throw Error(ErrorCode::kUnsupported,
                std::to_string(sharing) + " ranks of this process share GPU " +
                    std::to_string(device) + " but CUDA_DEVICE_MAX_CONNECTIONS is " +
                    std::to_string(have) + ": set it to at least " + std::to_string(needed) +
                    " before the first CUDA call, or run one rank per process");
  }
}

void check_transport(const Config& config, const Bootstrap& bootstrap) {
  if (config.transport == Transport::kNvshmem && bootstrap.in_process()) {
    throw Error(ErrorCode::kInvalidArgument,
                "Config.transport = nvshmem: the bootstrap's ranks are threads of one process, "
                "but NVSHMEM has one PE per process (use one rank per process, e.g. MpiBootstrap)");
  }
}

void check_across_domains(const char* call, const Config& config, const DispatchOptions& options,
                          int ranks_per_domain, int R) {
  if (ranks_per_domain >= R) return;
  const std::string domains =
      " (domains of " + std::to_string(ranks_per_domain) + " of " + std::to_string(R) +
      " ranks, Config.ranks_per_domain = " + std::to_string(config.ranks_per_domain) + ")";
  if (config.algorithm == Algorithm::kRing) {
    throw Error(ErrorCode::kUnsupported,
                std::string(call) +
                    ": Config.algorithm = ring does not cross NVLink domains; the flat path "
                    "does" +
                    domains);
  }
  if (options.layout == RecvLayout::kExpertMajor) {
    throw Error(ErrorCode::kUnsupported,
                std::string(call) +
                    ": DispatchOptions.layout = expert_major is not built across NVLink domains; "
                    "token-major rows are" +
                    domains);
  }
}

}  // namespace epcomm::cuda
