// MpiBootstrap under mpirun: rank and size, allGather order, barrier, sub-communicators, and a
// collective one rank skips (the others time out, the late rank can still complete it).
#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "epcomm/epcomm.hpp"
#include "epcomm/mpi_bootstrap.hpp"
#include "mpi_check.hpp"

namespace epcomm {
namespace {

using testing::Checks;
using Clock = std::chrono::steady_clock;

constexpr int kTimeoutMs = 20000;     // generous: ranks share two cores under --oversubscribe
constexpr int kShortTimeoutMs = 500;  // for the collective one rank skips

// Runs `fn` and checks it throws epcomm::Error with `code`, returning its message ("" if not).
std::string expect_error(Checks& checks, ErrorCode code, const std::string& what,
                         const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    checks.expect(e.code() == code, what + ": threw " + e.what());
    return e.what();
  }
  checks.expect(false, what + ": did not throw");
  return "";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

void check_arguments(Checks& checks) {
  expect_error(checks, ErrorCode::kInvalidArgument, "MPI_COMM_NULL",
               [] { MpiBootstrap b(MPI_COMM_NULL); });
  const std::string what = expect_error(checks, ErrorCode::kInvalidArgument, "timeout_ms = 0",
                                        [] { MpiBootstrap b(MPI_COMM_WORLD, 0); });
  checks.expect(contains(what, "timeout_ms = 0"), "message names timeout_ms: " + what);
}

void check_rank_size_and_all_gather(Checks& checks, int world_rank, int world_size) {
  MpiBootstrap b(MPI_COMM_WORLD, kTimeoutMs);
  checks.expect(b.rank() == world_rank, "rank() = " + std::to_string(b.rank()));
  checks.expect(b.size() == world_size, "size() = " + std::to_string(b.size()));
  checks.expect(!b.in_process(), "in_process() is true");
  checks.expect(b.timeout_ms() == kTimeoutMs, "timeout_ms()");
  const int n = world_size;
  for (int round = 0; round < 20; ++round) {
    // Sizes vary by round: empty, a few bytes, an IPC-handle-sized record, 64 KiB.
    const size_t words = round % 5 == 0 ? 0 : round % 5 == 1 ? 1 : round % 5 == 2 ? 9 : 8192;
    std::vector<int64_t> mine(words), all(words * n + 1, -7);
    for (size_t i = 0; i < words; ++i) mine[i] = world_rank * 1000003 + round * 101 + i;
    b.allGather(mine.data(), all.data(), words * 8);
    bool ok = all[words * n] == -7;  // nothing written past size() * bytes
    for (int s = 0; s < n && ok; ++s) {
      for (size_t i = 0; i < words; ++i) {
        ok = ok && all[s * words + i] == static_cast<int64_t>(s * 1000003 + round * 101 + i);
      }
    }
    checks.expect(ok, "allGather round " + std::to_string(round) + " of " +
                          std::to_string(words * 8) + " bytes: wrong data or order");
  }
}

// NOTE: compares steady_clock readings of different processes, which holds on one host
// (CLOCK_MONOTONIC is system-wide); ctest starts every rank on this host.
void check_barrier(Checks& checks, int world_rank, int world_size) {
  MpiBootstrap b(MPI_COMM_WORLD, kTimeoutMs);
  for (int round = 0; round < 5; ++round) {
    // One rank, a different one each round, arrives late.
    if (world_rank == round % world_size) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    const int64_t entered = Clock::now().time_since_epoch().count();
    b.barrier();
    const int64_t left = Clock::now().time_since_epoch().count();
    std::vector<int64_t> all_entered(world_size);
    b.allGather(&entered, all_entered.data(), sizeof(entered));
    const int64_t last = *std::max_element(all_entered.begin(), all_entered.end());
    checks.expect(left >= last, "barrier round " + std::to_string(round) +
                                    " returned before rank " + std::to_string(round % world_size) +
                                    " entered it");
  }
}

void check_sub_communicator(Checks& checks, int world_rank) {
  MPI_Comm half = MPI_COMM_NULL;
  MPI_Comm_split(MPI_COMM_WORLD, world_rank % 2, world_rank, &half);
  int half_rank = 0, half_size = 0;
  MPI_Comm_rank(half, &half_rank);
  MPI_Comm_size(half, &half_size);
  {
    MpiBootstrap b(half, kTimeoutMs);
    checks.expect(
        b.rank() == half_rank && b.size() == half_size,
        "sub-communicator rank/size " + std::to_string(b.rank()) + "/" + std::to_string(b.size()));
    std::vector<int> members(half_size);
    b.allGather(&world_rank, members.data(), sizeof(int));
    for (int i = 0; i < half_size; ++i) {
      checks.expect(members[i] == world_rank % 2 + 2 * i,
                    "sub-communicator member " + std::to_string(i) + " is world rank " +
                        std::to_string(members[i]));
    }
  }
  MPI_Comm_free(&half);
}

// The last rank skips allGather #1; the others must time out after about kShortTimeoutMs and
// then refuse further calls. Afterwards the last rank joins late, which completes the abandoned
// collective, so every rank can still free its requests and reach MPI_Finalize.
void check_timeout(Checks& checks, int world_rank, int world_size) {
  const int late = world_size - 1;
  MpiBootstrap b(MPI_COMM_WORLD, kShortTimeoutMs);
  int value = world_rank;
  std::vector<int> all(world_size);
  b.allGather(&value, all.data(), sizeof(int));  // collective #0: everyone
  value = 100 + world_rank;
  if (world_rank != late) {
    const Clock::time_point start = Clock::now();
    const std::string what = expect_error(checks, ErrorCode::kTimeout, "skipped allGather",
                                          [&] { b.allGather(&value, all.data(), sizeof(int)); });
    const double seconds = testing::seconds_since(start);
    checks.expect(seconds >= kShortTimeoutMs / 1000.0 && seconds < 5.0,
                  "timed out after " + std::to_string(seconds) + " s; the timeout is 0.5 s");
    checks.expect(contains(what, "rank " + std::to_string(world_rank) + ": allGather of 4 bytes") &&
                      contains(what, "collective #1") && contains(what, "within 500 ms"),
                  "timeout message names rank, call and limit: " + what);
    const std::string refused =
        expect_error(checks, ErrorCode::kBootstrap, "call after timeout", [&] { b.barrier(); });
    checks.expect(contains(refused, "timed out"), "refusal says why: " + refused);
  }
  // A different communicator: the late rank gets here at once, the others after timing out.
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank == late) {
    // The others' abandoned collective #1 is still posted; joining it now completes it.
    b.allGather(&value, all.data(), sizeof(int));
    for (int s = 0; s < world_size; ++s) {
      checks.expect(all[s] == 100 + s, "late allGather got " + std::to_string(all[s]) +
                                           " from rank " + std::to_string(s));
    }
  }
  // The others' destructors wait for collective #1 to complete before freeing its buffers.
}

}  // namespace
}  // namespace epcomm

int main(int argc, char** argv) {
  using namespace epcomm;
  Checks before_init(-1);
  expect_error(before_init, ErrorCode::kBootstrap, "before MPI_Init",
               [] { MpiBootstrap b(MPI_COMM_WORLD); });

  MPI_Init(&argc, &argv);
  int world_rank = 0, world_size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  Checks checks(world_rank);
  try {
    check_arguments(checks);
    check_rank_size_and_all_gather(checks, world_rank, world_size);
    check_barrier(checks, world_rank, world_size);
    check_sub_communicator(checks, world_rank);
    if (world_size >= 2) {
      check_timeout(checks, world_rank, world_size);
    } else if (world_rank == 0) {
      std::printf("timeout check needs 2 or more ranks; not run on 1\n");
    }
  } catch (const std::exception& e) {
    checks.expect(false, std::string("unexpected exception: ") + e.what());
  }
  int code = checks.agreed_exit_code("mpi_bootstrap_test");
  MPI_Finalize();

  Checks after_finalize(world_rank);
  expect_error(after_finalize, ErrorCode::kBootstrap, "after MPI_Finalize",
               [] { MpiBootstrap b(MPI_COMM_WORLD); });
  if (before_init.num_failures() + after_finalize.num_failures() > 0) code = 1;
  return code;
}
