#include "nvshmem_session.hpp"

#include <cuda_runtime.h>
#include <nvshmem.h>
#include <nvshmemx.h>

#include <cstring>
#include <string>
#include <vector>

#include "epcomm/error.hpp"

namespace epcomm::detail {
namespace {

void check_nvshmem(int status, const char* call) {
  if (status != 0) {
    throw Error(ErrorCode::kCuda, std::string("NVSHMEM: ") + call + " returned " +
                                      std::to_string(status));
  }
}

}  // namespace

NvshmemSession::NvshmemSession(Bootstrap& bootstrap) {
  if (bootstrap.in_process()) {
    throw Error(ErrorCode::kInvalidArgument,
                "NvshmemSession: the bootstrap's ranks are threads of one process; NVSHMEM "
                "has one PE per process (use MpiBootstrap or one rank per process)");
  }
  nvshmemx_uniqueid_t id = NVSHMEMX_UNIQUEID_INITIALIZER;
  if (bootstrap.rank() == 0) check_nvshmem(nvshmemx_get_uniqueid(&id), "nvshmemx_get_uniqueid");
  std::vector<nvshmemx_uniqueid_t> ids(bootstrap.size());
  bootstrap.allGather(&id, ids.data(), sizeof(id));
  nvshmemx_init_attr_t attr = NVSHMEMX_INIT_ATTR_INITIALIZER;
  check_nvshmem(nvshmemx_set_attr_uniqueid_args(bootstrap.rank(), bootstrap.size(), &ids[0],
                                                &attr),
                "nvshmemx_set_attr_uniqueid_args");
  check_nvshmem(nvshmemx_init_attr(NVSHMEMX_INIT_WITH_UNIQUEID, &attr), "nvshmemx_init_attr");
  pe_ = nvshmem_my_pe();
  num_pes_ = nvshmem_n_pes();
  if (pe_ != bootstrap.rank() || num_pes_ != bootstrap.size()) {
    throw Error(ErrorCode::kBootstrap, "NvshmemSession: NVSHMEM made rank " +
                                           std::to_string(bootstrap.rank()) + " of " +
                                           std::to_string(bootstrap.size()) + " PE " +
                                           std::to_string(pe_) + " of " +
                                           std::to_string(num_pes_));
  }
}

NvshmemSession::~NvshmemSession() { nvshmem_finalize(); }

void* NvshmemSession::allocate(size_t bytes) {
  void* p = nvshmem_calloc(1, bytes);
  if (p == nullptr && bytes > 0) {
    throw Error(ErrorCode::kCuda, "NVSHMEM: nvshmem_calloc of " + std::to_string(bytes) +
                                      " bytes failed (symmetric heap: NVSHMEM_SYMMETRIC_SIZE)");
  }
  return p;
}

void NvshmemSession::release(void* symmetric) { nvshmem_free(symmetric); }

void* NvshmemSession::peer_pointer(void* symmetric, int pe) const {
  if (pe < 0 || pe >= num_pes_) {
    throw Error(ErrorCode::kInvalidArgument,
                "NvshmemSession::peer_pointer: pe " + std::to_string(pe) + " is outside [0, " +
                    std::to_string(num_pes_) + ")");
  }
  return nvshmem_ptr(symmetric, pe);
}

}  // namespace epcomm::detail
