// MpiBootstrap: the ranks of an MPI communicator as an epcomm::Bootstrap (one rank per process).
#pragma once

#include <mpi.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "epcomm/bootstrap.hpp"

namespace epcomm {

// Every wait is a nonblocking MPI collective polled with MPI_Test until a deadline. MPI cannot
// say which rank failed to join a collective, so a timeout names the collective, not the rank.
// A collective that timed out cannot be cancelled (MPI forbids it): the bootstrap keeps its
// buffers alive and refuses further calls, since its collectives would no longer line up.
// Not thread-safe: one thread at a time calls it, as MPI's thread level allows.
class MpiBootstrap final : public Bootstrap {
 public:
  static constexpr int kDefaultTimeoutMs = 30000;

  // Collective over `comm`: every rank of it calls this. Duplicates `comm` (MPI_Comm_idup),
  // so epcomm's collectives never match the caller's; errors on the duplicate are returned,
  // not fatal. Needs MPI initialized and not finalized. Blocks until every rank has joined,
  // at most `timeout_ms`. Throws kInvalidArgument for MPI_COMM_NULL or timeout_ms < 1,
  // kBootstrap when MPI is not initialized or a call fails, kTimeout when a rank never joins.
  explicit MpiBootstrap(MPI_Comm comm, int timeout_ms = kDefaultTimeoutMs);

  // Destroy before MPI_Finalize. If a collective timed out, first waits up to timeout_ms for
  // it to complete (a late rank may still join it); if it does not, its buffers are leaked on
  // purpose, because MPI may still write into them. Never throws; logs to stderr instead.
  ~MpiBootstrap() override;
  MpiBootstrap(const MpiBootstrap&) = delete;
  MpiBootstrap& operator=(const MpiBootstrap&) = delete;

  int rank() const override { return rank_; }  // rank in `comm`
  int size() const override { return size_; }
  bool in_process() const override { return false; }
  int timeout_ms() const { return timeout_ms_; }

  // Collective. Blocks until every rank has contributed, at most timeout_ms; `send` and `recv`
  // may be reused on return, also after a throw. Throws kInvalidArgument for a null pointer or
  // bytes > INT_MAX, kTimeout when the collective does not complete in time, kBootstrap for an
  // MPI error or when an earlier collective of this bootstrap failed.
  void allGather(const void* send, void* recv, size_t bytes) override;

  // Collective. Blocks until every rank has called it, at most timeout_ms; throws as allGather.
  void barrier() override;

 private:
  // A collective still in flight: MPI owns its buffers until the request completes.
  struct InFlight {
    MPI_Request request = MPI_REQUEST_NULL;
    std::unique_ptr<unsigned char[]> send, recv;
  };

  void check_usable(const char* what) const;
  // Polls `op` until it completes or the deadline passes; on timeout moves it to abandoned_.
  void wait(InFlight& op, const std::string& what);
  [[noreturn]] void fail_mpi(int code, const std::string& what);

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 0;
  int timeout_ms_;
  uint64_t num_collectives_ = 0;  // collectives started, for messages
  std::string broken_;            // why this bootstrap refuses further calls ("" when usable)
  std::vector<InFlight> abandoned_;
};

}  // namespace epcomm
