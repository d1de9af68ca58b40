// CuMemRegions: cuMem allocations, their file descriptors passed between processes, mappings.
#include "cumem_region.hpp"

#include <cuda.h>
#include <cuda_runtime.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <random>
#include <string>

#include "cuda_check.hpp"
#include "driver_entry.hpp"
#include "env.hpp"

namespace epcomm::cuda {
namespace {

// The driver calls, resolved through the runtime (libepcomm does not link libcuda).
struct Driver {
  decltype(&cuDeviceGet) device_get = nullptr;
  decltype(&cuDeviceGetAttribute) device_attribute = nullptr;
  decltype(&cuMemGetAllocationGranularity) granularity = nullptr;
  decltype(&cuMemCreate) create = nullptr;
  decltype(&cuMemRelease) release = nullptr;
  decltype(&cuMemExportToShareableHandle) export_handle = nullptr;
  decltype(&cuMemImportFromShareableHandle) import_handle = nullptr;
  decltype(&cuMemAddressReserve) reserve = nullptr;
  decltype(&cuMemAddressFree) address_free = nullptr;
  decltype(&cuMemMap) map = nullptr;
  decltype(&cuMemUnmap) unmap = nullptr;
  decltype(&cuMemSetAccess) set_access = nullptr;
  bool ok = false;
};

const Driver& driver() {
  static const Driver d = [] {
    Driver r;
    r.ok = resolve_driver_call("cuDeviceGet", &r.device_get) &&
           resolve_driver_call("cuDeviceGetAttribute", &r.device_attribute) &&
           resolve_driver_call("cuMemGetAllocationGranularity", &r.granularity) &&
           resolve_driver_call("cuMemCreate", &r.create) &&
           resolve_driver_call("cuMemRelease", &r.release) &&
           resolve_driver_call("cuMemExportToShareableHandle", &r.export_handle) &&
           resolve_driver_call("cuMemImportFromShareableHandle", &r.import_handle) &&
           resolve_driver_call("cuMemAddressReserve", &r.reserve) &&
           resolve_driver_call("cuMemAddressFree", &r.address_free) &&
           resolve_driver_call("cuMemMap", &r.map) && resolve_driver_call("cuMemUnmap", &r.unmap) &&
           resolve_driver_call("cuMemSetAccess", &r.set_access);
    return r;
  }();
  return d;
}

void check(CUresult result, const char* call) {
  if (result != CUDA_SUCCESS) {
    throw Error(ErrorCode::kCuda, std::string("CUDA driver: ") + call + " returned " +
                                      std::to_string(static_cast<int>(result)));
  }
}

[[noreturn]] void fail(const std::string& what) {
  throw Error(ErrorCode::kBootstrap,
              "cuMem region exchange: " + what + " (" + std::strerror(errno) + ")");
}

// The abstract Unix-socket name of `rank` in the job identified by `token`.
sockaddr_un address_of(uint64_t token, int rank, socklen_t* length) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  const std::string name = "epcomm-" + std::to_string(token) + "-" + std::to_string(rank);
  std::memcpy(a.sun_path + 1, name.data(), name.size());  // sun_path[0] = 0: abstract
  *length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  return a;
}

// One message of the exchange: the sender's rank as data, one descriptor as SCM_RIGHTS.
struct RankMessage {
  explicit RankMessage(int32_t r) : rank(r) {
    io.iov_base = &rank;
    io.iov_len = sizeof(rank);
    msg.msg_iov = &io;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
  }
  RankMessage(const RankMessage&) = delete;
  RankMessage& operator=(const RankMessage&) = delete;
  int32_t rank;
  iovec io{};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
};

// Collective: every rank's `fd` reaches every other rank; returns fds[r] (-1 for this rank).
// Each rank listens first; after a barrier it connects to every peer and sends its rank and its
// descriptor (the kernel buffers them, so no send waits for an accept), then accepts R - 1.
std::vector<int> exchange_descriptors(Bootstrap& bootstrap, int fd) {
  const int R = bootstrap.size(), me = bootstrap.rank();
  uint64_t token = 0;
  if (me == 0) token = std::random_device{}() * 0x9e3779b97f4a7c15ull ^ getpid();
  std::vector<uint64_t> tokens(R);
  bootstrap.allGather(&token, tokens.data(), sizeof(token));
  token = tokens[0];
  const int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listener < 0) fail("socket");
  socklen_t length = 0;
  sockaddr_un mine = address_of(token, me, &length);
  if (bind(listener, reinterpret_cast<sockaddr*>(&mine), length) != 0) fail("bind");
  if (listen(listener, R) != 0) fail("listen");
  bootstrap.barrier();
  for (int peer = 0; peer < R; ++peer) {
    if (peer == me) continue;
    const int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un theirs = address_of(token, peer, &length);
    if (s < 0 || connect(s, reinterpret_cast<sockaddr*>(&theirs), length) != 0) {
      fail("connect to rank " + std::to_string(peer));
    }
    RankMessage m(me);
    cmsghdr* c = CMSG_FIRSTHDR(&m.msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
    if (sendmsg(s, &m.msg, 0) != static_cast<ssize_t>(sizeof(m.rank))) {
      fail("sendmsg to rank " + std::to_string(peer));
    }
    close(s);
  }
  std::vector<int> fds(R, -1);
  for (int i = 0; i < R - 1; ++i) {
    const int s = accept(listener, nullptr, nullptr);
    if (s < 0) fail("accept");
    RankMessage m(-1);
    if (recvmsg(s, &m.msg, MSG_CMSG_CLOEXEC) != static_cast<ssize_t>(sizeof(m.rank))) {
      fail("recvmsg");
    }
    const int32_t rank = m.rank;
    cmsghdr* c = CMSG_FIRSTHDR(&m.msg);
    if (c == nullptr || c->cmsg_type != SCM_RIGHTS || rank < 0 || rank >= R || rank == me ||
        fds[rank] >= 0) {
      fail("a message without a descriptor, or from an unexpected rank " + std::to_string(rank));
    }
    std::memcpy(&fds[rank], CMSG_DATA(c), sizeof(int));
    close(s);
  }
  close(listener);
  bootstrap.barrier();  // every rank has its descriptors before any may exit
  return fds;
}

}  // namespace

bool CuMemRegions::usable(int device) {
  if (env::ipc_regions() == env::IpcRegions::kLegacy) return false;
  const Driver& d = driver();
  if (!d.ok) return false;
  CUdevice dev = 0;
  int supported = 0;
  return d.device_get(&dev, device) == CUDA_SUCCESS &&
         d.device_attribute(&supported,
                            CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED,
                            dev) == CUDA_SUCCESS &&
         supported != 0;
}

void CuMemRegions::map(Mapping& m, int device) {
  const Driver& d = driver();
  CUdeviceptr base = 0;
  check(d.reserve(&base, size_, 0, 0, 0), "cuMemAddressReserve");
  m.base = reinterpret_cast<char*>(base);
  check(d.map(base, size_, 0, m.handle, 0), "cuMemMap");
  CUmemAccessDesc access{};
  access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  access.location.id = device;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  check(d.set_access(base, size_, &access, 1), "cuMemSetAccess");
}

CuMemRegions::CuMemRegions(Bootstrap& bootstrap, int device, size_t bytes) {
  const Driver& d = driver();
  const int R = bootstrap.size(), me = bootstrap.rank();
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = device;
  prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
  size_t granularity = 0;
  check(d.granularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED),
        "cuMemGetAllocationGranularity");
  // Every rank's size is the same: equal Configs give equal layouts and granularities.
  size_ = (std::max<size_t>(bytes, 1) + granularity - 1) / granularity * granularity;
  mappings_.resize(R);
  peers_.assign(R, nullptr);
  CUmemGenericAllocationHandle own = 0;
  check(d.create(&own, size_, &prop, 0), "cuMemCreate");
  mappings_[me].handle = own;
  map(mappings_[me], device);
  peers_[me] = mappings_[me].base;
  EPCOMM_CUDA_CHECK(cudaMemset(peers_[me], 0, size_));
  EPCOMM_CUDA_CHECK(cudaDeviceSynchronize());
  int fd = -1;
  check(d.export_handle(&fd, own, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0),
        "cuMemExportToShareableHandle");
  const std::vector<int> fds = exchange_descriptors(bootstrap, fd);
  close(fd);
  for (int r = 0; r < R; ++r) {
    if (r == me) continue;
    CUmemGenericAllocationHandle imported = 0;
    const CUresult result =
        d.import_handle(&imported, reinterpret_cast<void*>(static_cast<uintptr_t>(fds[r])),
                        CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
    close(fds[r]);
    check(result, "cuMemImportFromShareableHandle");
    mappings_[r].handle = imported;
    map(mappings_[r], device);
    peers_[r] = mappings_[r].base;
  }
}

CuMemRegions::~CuMemRegions() {
  const Driver& d = driver();
  for (Mapping& m : mappings_) {
    if (m.base != nullptr) {
      d.unmap(reinterpret_cast<CUdeviceptr>(m.base), size_);
      d.address_free(reinterpret_cast<CUdeviceptr>(m.base), size_);
    }
    if (m.handle != 0) d.release(m.handle);
  }
}

}  // namespace epcomm::cuda
