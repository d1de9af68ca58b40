// MpiBootstrap: allGather and barrier as nonblocking MPI collectives, polled until a deadline.
#include "epcomm/mpi_bootstrap.hpp"

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <thread>

#include "epcomm/error.hpp"

namespace epcomm {
namespace {

using Clock = std::chrono::steady_clock;

// Polls this often without sleeping, then sleeps between polls: under --oversubscribe a
// spinning rank would take the core from the peer it waits for.
constexpr int kSpinPolls = 64;
constexpr auto kPollSleep = std::chrono::microseconds(100);

std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) {
    return "MPI error code " + std::to_string(code);
  }
  return std::string(text, static_cast<size_t>(length));
}

Error mpi_error(int rank, int code, const std::string& what) {
  return Error(ErrorCode::kBootstrap,
               "rank " + std::to_string(rank) + ": " + what + " failed: " + mpi_error_string(code));
}

// Polls `request` until it completes (true) or `deadline` passes or MPI fails (false; `rc`
// tells which). Polling is what progresses a nonblocking collective in most MPI builds.
bool test_until(MPI_Request* request, Clock::time_point deadline, int* rc) {
  for (int polls = 0;; ++polls) {
    int done = 0;
    *rc = MPI_Test(request, &done, MPI_STATUS_IGNORE);
    if (*rc != MPI_SUCCESS) return false;
    if (done) return true;
    if (Clock::now() >= deadline) return false;
    if (polls < kSpinPolls) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(kPollSleep);
    }
  }
}

}  // namespace

MpiBootstrap::MpiBootstrap(MPI_Comm comm, int timeout_ms) : timeout_ms_(timeout_ms) {
  if (comm == MPI_COMM_NULL) {
    throw Error(ErrorCode::kInvalidArgument, "MpiBootstrap: comm is MPI_COMM_NULL");
  }
  if (timeout_ms < 1) {
    throw Error(ErrorCode::kInvalidArgument,
                "MpiBootstrap: timeout_ms = " + std::to_string(timeout_ms) + ": must be positive");
  }
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) {
    throw Error(ErrorCode::kBootstrap, std::string("MpiBootstrap: MPI is ") +
                                           (finalized ? "already finalized" : "not initialized") +
                                           "; create the bootstrap between MPI_Init and "
                                           "MPI_Finalize");
  }
  int rc = MPI_Comm_rank(comm, &rank_);
  if (rc == MPI_SUCCESS) rc = MPI_Comm_size(comm, &size_);
  if (rc != MPI_SUCCESS) throw mpi_error(rank_, rc, "MpiBootstrap: MPI_Comm_rank/size");

  // NOTE: MPI writes the duplicate into *dup when the request completes, which may be after a
  // timeout; the cell then stays allocated on purpose.
  auto dup = std::make_unique<MPI_Comm>(MPI_COMM_NULL);
  MPI_Request request = MPI_REQUEST_NULL;
  rc = MPI_Comm_idup(comm, dup.get(), &request);
  if (rc != MPI_SUCCESS) throw mpi_error(rank_, rc, "MpiBootstrap: MPI_Comm_idup");
  if (!test_until(&request, Clock::now() + std::chrono::milliseconds(timeout_ms_), &rc)) {
    if (rc != MPI_SUCCESS) throw mpi_error(rank_, rc, "MpiBootstrap: MPI_Comm_idup");
    dup.release();
    throw Error(ErrorCode::kTimeout,
                "rank " + std::to_string(rank_) + ": MpiBootstrap: duplicating the " +
                    std::to_string(size_) + "-rank communicator did not complete within " +
                    std::to_string(timeout_ms_) +
                    " ms; some rank did not join (an MPI collective cannot say which)");
  }
  comm_ = *dup;
  rc = MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  if (rc != MPI_SUCCESS) {
    MPI_Comm_free(&comm_);
    throw mpi_error(rank_, rc, "MpiBootstrap: MPI_Comm_set_errhandler");
  }
}

MpiBootstrap::~MpiBootstrap() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) {
    std::fprintf(stderr,
                 "epcomm: rank %d: MpiBootstrap destroyed after MPI_Finalize; its communicator "
                 "was not freed\n",
                 rank_);
    for (InFlight& op : abandoned_) {
      op.send.release();  // MPI may have kept pointers to them
      op.recv.release();
    }
    return;
  }
  // A late rank may still join a collective that timed out here; give it one more timeout.
  const Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(timeout_ms_);
  for (InFlight& op : abandoned_) {
    int rc = MPI_SUCCESS;
    if (op.request == MPI_REQUEST_NULL || test_until(&op.request, deadline, &rc)) continue;
    std::fprintf(stderr,
                 "epcomm: rank %d: a collective that timed out never completed (%s); its "
                 "buffers are leaked because MPI may still write into them\n",
                 rank_, rc == MPI_SUCCESS ? "no rank joined late" : mpi_error_string(rc).c_str());
    op.send.release();
    op.recv.release();
  }
  if (comm_ != MPI_COMM_NULL) {
    const int rc = MPI_Comm_free(&comm_);
    if (rc != MPI_SUCCESS) {
      std::fprintf(stderr, "epcomm: rank %d: MPI_Comm_free failed: %s\n", rank_,
                   mpi_error_string(rc).c_str());
    }
  }
}

void MpiBootstrap::check_usable(const char* what) const {
  if (broken_.empty()) return;
  throw Error(ErrorCode::kBootstrap, "rank " + std::to_string(rank_) + ": " + what +
                                         " refused: " + broken_ +
                                         ", so this bootstrap's collectives no longer line up "
                                         "across ranks");
}

void MpiBootstrap::fail_mpi(int code, const std::string& what) {
  broken_ = "an earlier " + what + " failed in MPI";
  throw mpi_error(rank_, code, what);
}

void MpiBootstrap::wait(InFlight& op, const std::string& what) {
  int rc = MPI_SUCCESS;
  if (test_until(&op.request, Clock::now() + std::chrono::milliseconds(timeout_ms_), &rc)) return;
  // MPI forbids cancelling a collective: keep the request and its buffers until it completes.
  if (op.request != MPI_REQUEST_NULL) abandoned_.push_back(std::move(op));
  if (rc != MPI_SUCCESS) fail_mpi(rc, what);
  broken_ = "an earlier " + what + " timed out";
  throw Error(ErrorCode::kTimeout, "rank " + std::to_string(rank_) + ": " + what +
                                       " did not complete within " + std::to_string(timeout_ms_) +
                                       " ms; some rank of " + std::to_string(size_) +
                                       " did not join it (an MPI collective cannot say which)");
}

void MpiBootstrap::allGather(const void* send, void* recv, size_t bytes) {
  check_usable("allGather");
  if (bytes > static_cast<size_t>(INT_MAX)) {
    throw Error(ErrorCode::kInvalidArgument,
                "MpiBootstrap::allGather: bytes = " + std::to_string(bytes) + " exceeds INT_MAX");
  }
  if (bytes > 0 && (send == nullptr || recv == nullptr)) {
    throw Error(ErrorCode::kInvalidArgument, std::string("MpiBootstrap::allGather: ") +
                                                 (send ? "recv" : "send") +
                                                 " is null with bytes = " + std::to_string(bytes));
  }
  // MPI's own copies, so that the caller's buffers are free again even after a timeout.
  InFlight op;
  op.send.reset(new unsigned char[bytes > 0 ? bytes : 1]);
  op.recv.reset(new unsigned char[bytes > 0 ? bytes * size_ : 1]);
  if (bytes > 0) std::memcpy(op.send.get(), send, bytes);
  const std::string what = "allGather of " + std::to_string(bytes) + " bytes (collective #" +
                           std::to_string(num_collectives_++) + " of this bootstrap)";
  const int count = static_cast<int>(bytes);
  const int rc = MPI_Iallgather(op.send.get(), count, MPI_BYTE, op.recv.get(), count, MPI_BYTE,
                                comm_, &op.request);
  if (rc != MPI_SUCCESS) fail_mpi(rc, what);
  wait(op, what);
  if (bytes > 0) std::memcpy(recv, op.recv.get(), bytes * size_);
}

void MpiBootstrap::barrier() {
  check_usable("barrier");
  InFlight op;
  const std::string what =
      "barrier (collective #" + std::to_string(num_collectives_++) + " of this bootstrap)";
  const int rc = MPI_Ibarrier(comm_, &op.request);
  if (rc != MPI_SUCCESS) fail_mpi(rc, what);
  wait(op, what);
}

}  // namespace epcomm
