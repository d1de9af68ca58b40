// NvshmemSession: this process as one PE of an NVSHMEM job whose PEs are the ranks of an
// epcomm Bootstrap (one rank per process). The unique id is drawn by rank 0 and spread with
// the bootstrap's allGather, so MpiBootstrap and the Python torch group both work.
#pragma once

#include <cstddef>

#include "epcomm/bootstrap.hpp"

namespace epcomm::detail {

class NvshmemSession {
 public:
  // Collective over `bootstrap`; the calling thread's current CUDA device becomes the PE's.
  // Throws kInvalidArgument for in-process ranks (NVSHMEM has one PE per process) and kCuda
  // naming the NVSHMEM call that failed.
  explicit NvshmemSession(Bootstrap& bootstrap);
  ~NvshmemSession();  // nvshmem_finalize (collective: every PE destroys its session)
  NvshmemSession(const NvshmemSession&) = delete;
  NvshmemSession& operator=(const NvshmemSession&) = delete;

  int pe() const { return pe_; }
  int num_pes() const { return num_pes_; }
  // Collective: `bytes` of the symmetric heap, at the same offset on every PE; zeroed.
  void* allocate(size_t bytes);
  void release(void* symmetric);  // collective
  // `symmetric` as seen in `pe`'s memory by loads and stores from this GPU, or nullptr when
  // that PE is reachable only through puts (another NVLink domain).
  void* peer_pointer(void* symmetric, int pe) const;

 private:
  int pe_ = -1;
  int num_pes_ = 0;
};

}  // namespace epcomm::detail
