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
                           Transport transport, int ranks_per_domain)
    : device_(device),
      rank_(bootstrap.rank()),
      ranks_per_domain_(bootstrap.size()),
      bytes_(region_bytes) {
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
      throw Error(ErrorCode::kInvalidArgument, "EPCOMM_IPC on rank " +
                                                   std::to_string(bad - all.begin()) +
                                                   ": expected cumem (the default) or legacy");
    }
    cumem = std::count(all.begin(), all.end(), 1) == static_cast<long>(all.size());
  }
  if (transport == Transport::kNvshmem) {
    map_through_nvshmem(bootstrap, ranks_per_domain);
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

// The heap's memory is zeroed (nvshmem_calloc) and the same size on every PE. Every rank of
// this rank's domain must be mapped by nvshmem_ptr; the others keep no pointer (puts only).
void MemoryDomain::map_through_nvshmem(Bootstrap& bootstrap, int ranks_per_domain) {
  heap_ = NvshmemHeap::join(bootstrap);
  region_ = static_cast<char*>(heap_->allocate(bytes_));
  const int R = static_cast<int>(peers_.size());
  for (int i = 0; i < R; ++i) peers_[i] = static_cast<char*>(heap_->peer(region_, i));
  // This rank's verdict: L > 0 when its domain is the L consecutive ranks from (rank / L) * L,
  // all mapped (given L; or found: the mapped ranks, when they form such a block); else
  // -1 - the first rank of its domain it cannot map, or -1 - R when the mapped ranks form no
  // block. Gathered, so that every rank throws alike.
  int L = ranks_per_domain;
  if (L == 0) {
    L = static_cast<int>(std::count_if(peers_.begin(), peers_.end(), [](char* p) { return p; }));
  }
  int32_t mine = L;
  const int first = rank_ / L * L;
  for (int i = 0; i < R && mine > 0; ++i) {
    const bool inside = i >= first && i < first + L;
    if (inside && peers_[i] == nullptr) mine = -1 - i;
    if (!inside && peers_[i] != nullptr && ranks_per_domain == 0) mine = -1 - R;
  }
  if (R % L != 0 && mine > 0) mine = -1 - R;
  std::vector<int32_t> all(R);
  bootstrap.allGather(&mine, all.data(), sizeof(mine));
  for (int r = 0; r < R; ++r) {
    if (all[r] == all[0] && all[r] > 0) continue;
    heap_->release(region_);
    region_ = nullptr;
    const std::string given = "Config.ranks_per_domain = " + std::to_string(ranks_per_domain);
    if (all[r] == -1 - R || all[r] > 0) {
      throw Error(ErrorCode::kUnsupported,
                  given +
                      ", transport = nvshmem: the peers nvshmem_ptr maps do not form equal "
                      "domains of consecutive ranks (rank " +
                      std::to_string(r) + " maps " + std::to_string(all[r] > 0 ? all[r] : 0) +
                      " ranks as its domain, rank 0 " + std::to_string(std::max(all[0], 0)) +
                      "); give Config.ranks_per_domain");
    }
    throw Error(ErrorCode::kUnsupported,
                given + ", transport = nvshmem: rank " + std::to_string(r) + " cannot reach rank " +
                    std::to_string(-1 - all[r]) +
                    " of its domain by load and store (nvshmem_ptr is null: another NVLink "
                    "domain); give a Config.ranks_per_domain whose domains it can map");
  }
  ranks_per_domain_ = L;
  // Ranks outside the domain are reached through the NVSHMEM module's puts only: no kernel
  // gets a pointer it could store through.
  for (int i = 0; i < R; ++i) {
    if (i / L != rank_ / L) peers_[i] = nullptr;
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
