// Region allocation and peer mapping for the CUDA backend.
#include "memory_domain.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>

#include "cuda_check.hpp"
#include "cumem_region.hpp"
#include "nvshmem_heap.hpp"

namespace epcomm::cuda {
namespace {

struct InProcessEntry {
  char* base;
  int device;
};

cudaUUID_t uuid_of(int device) {
  cudaDeviceProp prop{};
  EPCOMM_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.uuid;
}

// The ordinal, in this process, of the GPU with `uuid`; -1 when it is not visible here.
int device_with_uuid(const cudaUUID_t& uuid) {
  int count = 0;
  EPCOMM_CUDA_CHECK(cudaGetDeviceCount(&count));
  for (int d = 0; d < count; ++d) {
    const cudaUUID_t u = uuid_of(d);
    if (std::memcmp(u.bytes, uuid.bytes, sizeof(u.bytes)) == 0) return d;
  }
  return -1;
}

// Every signal is an atomic (or a release store) on a peer's memory: across two GPUs the link
// must carry them natively, or they would not be atomic with the peer's own accesses.
void check_native_atomics(int device, int peer_device, int peer_rank) {
  if (peer_device == device) return;
  int native = 0;
  EPCOMM_CUDA_CHECK(
      cudaDeviceGetP2PAttribute(&native, cudaDevP2PAttrNativeAtomicSupported, device, peer_device));
  if (!native) {
    throw Error(ErrorCode::kUnsupported,
                "GPU " + std::to_string(device) + " has no native atomics on its link to GPU " +
                    std::to_string(peer_device) + " (rank " + std::to_string(peer_rank) +
                    "): epcomm's signals are atomics on peer memory");
  }
}

}  // namespace

MemoryDomain::MemoryDomain(Bootstrap& bootstrap, int device, size_t region_bytes,
                           Transport transport)
    : device_(device), rank_(bootstrap.rank()), bytes_(region_bytes) {
  EPCOMM_CUDA_CHECK(cudaSetDevice(device_));
  peers_.assign(bootstrap.size(), nullptr);
  opened_.assign(bootstrap.size(), false);
  // Across processes, cuMem regions unless a rank asks for legacy handles or cannot export
  // file descriptors (collective: all decide alike; a rank with a bad EPCOMM_IPC makes every
  // rank throw, so none waits for it).
  bool cumem = false;
  if (transport == Transport::kIpc && !bootstrap.in_process()) {
    int32_t mine = 0;
    std::optional<Error> bad_setting;
    try {
      mine = CuMemRegions::usable(device_) ? 1 : 0;
    } catch (const Error& e) {
      mine = -1;
      bad_setting = e;
    }
    std::vector<int32_t> all(bootstrap.size());
    bootstrap.allGather(&mine, all.data(), sizeof(mine));
    const auto bad = std::find(all.begin(), all.end(), -1);
    if (bad != all.end()) {
      if (bad_setting) throw *bad_setting;
      throw Error(ErrorCode::kInvalidArgument,
                  "EPCOMM_IPC on rank " + std::to_string(bad - all.begin()) +
                      ": expected cumem (the default) or legacy");
    }
    cumem = std::count(all.begin(), all.end(), 1) == static_cast<long>(all.size());
  }
  if (transport == Transport::kNvshmem) {
    map_through_nvshmem(bootstrap);
  } else if (cumem) {
    check_peer_processes(bootstrap);
    cumem_ = std::make_unique<CuMemRegions>(bootstrap, device_, region_bytes);
    peers_ = cumem_->peers();
    region_ = peers_[rank_];
    bulk_copies_ = true;
  } else {
    EPCOMM_CUDA_CHECK(cudaMalloc(&region_, region_bytes));
    EPCOMM_CUDA_CHECK(cudaMemset(region_, 0, region_bytes));
    EPCOMM_CUDA_CHECK(cudaDeviceSynchronize());
    if (bootstrap.in_process()) {
      map_in_process(bootstrap);
    } else {
      map_through_ipc(bootstrap);
    }
  }
  EPCOMM_CUDA_CHECK(cudaMalloc(&d_peers_, sizeof(char*) * peers_.size()));
  EPCOMM_CUDA_CHECK(
      cudaMemcpy(d_peers_, peers_.data(), sizeof(char*) * peers_.size(), cudaMemcpyHostToDevice));
  // NOTE: no peer may signal into this region before it is zeroed everywhere.
  bootstrap.barrier();
}

void MemoryDomain::map_in_process(Bootstrap& bootstrap) {
  const InProcessEntry mine{region_, device_};
  std::vector<InProcessEntry> all(bootstrap.size());
  bootstrap.allGather(&mine, all.data(), sizeof(mine));
  bulk_copies_ = true;
  for (size_t i = 0; i < all.size(); ++i) {
    peers_[i] = all[i].base;
    if (all[i].device == device_) continue;
    bulk_copies_ = false;
    check_native_atomics(device_, all[i].device, static_cast<int>(i));
    int can = 0;
    EPCOMM_CUDA_CHECK(cudaDeviceCanAccessPeer(&can, device_, all[i].device));
    if (!can) {
      throw Error(ErrorCode::kUnsupported, "GPU " + std::to_string(device_) +
                                               " cannot access peer GPU " +
                                               std::to_string(all[i].device));
    }
    const cudaError_t err = cudaDeviceEnablePeerAccess(all[i].device, 0);
    if (err == cudaErrorPeerAccessAlreadyEnabled) {
      cudaGetLastError();
    } else {
      EPCOMM_CUDA_CHECK(err);
    }
  }
}

void MemoryDomain::map_through_ipc(Bootstrap& bootstrap) {
  check_peer_processes(bootstrap);
  cudaIpcMemHandle_t mine{};
  EPCOMM_CUDA_CHECK(cudaIpcGetMemHandle(&mine, region_));
  std::vector<cudaIpcMemHandle_t> all(bootstrap.size());
  bootstrap.allGather(&mine, all.data(), sizeof(mine));
  for (size_t i = 0; i < all.size(); ++i) {
    if (static_cast<int>(i) == rank_) {
      peers_[i] = region_;
      continue;
    }
    void* ptr = nullptr;
    EPCOMM_CUDA_CHECK(cudaIpcOpenMemHandle(&ptr, all[i], cudaIpcMemLazyEnablePeerAccess));
    peers_[i] = static_cast<char*>(ptr);
    opened_[i] = true;
  }
}

void MemoryDomain::check_peer_processes(Bootstrap& bootstrap) {
  struct Entry {
    cudaUUID_t uuid;
    int pid;
  };
  const Entry mine{uuid_of(device_), static_cast<int>(getpid())};
  std::vector<Entry> all(bootstrap.size());
  bootstrap.allGather(&mine, all.data(), sizeof(mine));
  for (size_t i = 0; i < all.size(); ++i) {
    if (static_cast<int>(i) == rank_) continue;
    if (all[i].pid == mine.pid) {
      throw Error(ErrorCode::kUnsupported,
                  "ranks " + std::to_string(rank_) + " and " + std::to_string(i) +
                      " share a process but the bootstrap is not in-process");
    }
    const int peer_device = device_with_uuid(all[i].uuid);
    if (peer_device < 0) {
      throw Error(ErrorCode::kUnsupported,
                  "the GPU of rank " + std::to_string(i) + " is not visible to rank " +
                      std::to_string(rank_) +
                      ", so its link cannot be checked for native atomics: make every GPU of "
                      "the node visible to every rank");
    }
    check_native_atomics(device_, peer_device, static_cast<int>(i));
  }
}

// The heap's memory is zeroed (nvshmem_calloc) and the same size on every PE. A peer that
// nvshmem_ptr cannot map is in another NVLink domain, which the kernels cannot reach yet.
void MemoryDomain::map_through_nvshmem(Bootstrap& bootstrap) {
  heap_ = NvshmemHeap::join(bootstrap);
  region_ = static_cast<char*>(heap_->allocate(bytes_));
  for (int i = 0; i < static_cast<int>(peers_.size()); ++i) {
    peers_[i] = static_cast<char*>(heap_->peer(region_, i));
  }
  // Collective, so that every rank throws alike when any rank lacks a peer.
  int32_t mine = -1;
  for (int i = 0; i < static_cast<int>(peers_.size()) && mine < 0; ++i) {
    if (peers_[i] == nullptr) mine = i;
  }
  std::vector<int32_t> all(peers_.size());
  bootstrap.allGather(&mine, all.data(), sizeof(mine));
  for (size_t r = 0; r < all.size(); ++r) {
    if (all[r] < 0) continue;
    heap_->release(region_);
    region_ = nullptr;
    throw Error(ErrorCode::kUnsupported,
                "Config.transport = nvshmem: rank " + std::to_string(r) + " reaches rank " +
                    std::to_string(all[r]) +
                    " only through NVSHMEM puts (nvshmem_ptr is null: another NVLink domain); "
                    "the paths across domains are not built yet, so every rank must reach "
                    "every other by load and store");
  }
}

MemoryDomain::~MemoryDomain() {
  cudaSetDevice(device_);
  for (size_t i = 0; i < peers_.size(); ++i) {
    if (opened_[i] && cudaIpcCloseMemHandle(peers_[i]) != cudaSuccess) {
      std::fprintf(stderr, "epcomm: cudaIpcCloseMemHandle of rank %zu's region failed\n", i);
    }
  }
  cudaFree(d_peers_);
  if (heap_ != nullptr) {
    heap_->release(region_);  // collective: every rank destroys its domains in the same order
  } else if (cumem_ != nullptr) {
    cumem_.reset();
  } else {
    cudaFree(region_);
  }
}

}  // namespace epcomm::cuda
