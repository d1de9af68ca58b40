// CUDA faults across processes: the last rank leaves (--mode=exit) or stalls (--mode=sleep)
// after creating its communicator; every other rank's dispatch must end in a timeout that
// names it, within the configured wait, and every process must still reach MPI_Finalize.
// --mode=bad-ipc: the last rank alone sets EPCOMM_IPC to a value epcomm does not know; every
// rank's Communicator::create must throw kInvalidArgument naming the variable (none waits).
// --mode=ll-exit: as exit, for a low-latency dispatch: every other rank's receive must time out
// naming the last rank. With --transport=nvshmem --ranks-per-domain=L (exit and ll-exit): the
// same across NVLink domains of L ranks.
#include <mpi.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "epcomm/epcomm.hpp"
#include "epcomm/mpi_bootstrap.hpp"
#include "harness.hpp"
#include "mpi_check.hpp"

namespace epcomm {
namespace {

using testing::Buffer;
using testing::Checks;

constexpr int kWaitTimeoutMs = 1000;
// Without MPS, processes sharing a GPU time-slice; a failing wait may take a while to be seen.
constexpr double kMaxFailSeconds = 10.0 * kWaitTimeoutMs / 1000.0;
// Longer than the dispatch wait, so that teardown barriers outlast the others' failure.
constexpr int kBootstrapTimeoutMs = 60000;

enum class Mode { kExit, kSleep };

// Runs `call`, which must end within kMaxFailSeconds in a kTimeout naming rank `absent`.
template <typename Call>
void expect_timeout_naming(Checks& checks, const std::string& name, int absent, Call call) {
  const auto start = std::chrono::steady_clock::now();
  try {
    call();
    checks.expect(false, name + " returned without rank " + std::to_string(absent));
  } catch (const Error& e) {
    const std::string what = e.what();
    checks.expect(e.code() == ErrorCode::kTimeout, name + " threw " + what);
    checks.expect(what.find("peer rank " + std::to_string(absent)) != std::string::npos,
                  "the timeout does not name rank " + std::to_string(absent) + ": " + what);
  }
  const double seconds = testing::seconds_since(start);
  checks.expect(seconds < kMaxFailSeconds, "failed after " + std::to_string(seconds) +
                                               " s; the wait timeout is " +
                                               std::to_string(kWaitTimeoutMs) + " ms");
}

void run_fault(Checks& checks, Mode mode, int device, Transport transport, int ranks_per_domain) {
  auto bootstrap = std::make_shared<MpiBootstrap>(MPI_COMM_WORLD, kBootstrapTimeoutMs);
  const int rank = bootstrap->rank(), R = bootstrap->size(), absent = R - 1;
  testing::Shape shape;
  shape.num_ranks = R;
  shape.num_tokens = 8;
  shape.hidden = 64;
  shape.num_experts = 2 * R;
  shape.num_topk = 2;
  Config cfg = testing::config_for(shape);
  cfg.dispatch_sms = 2;
  cfg.combine_sms = 2;
  cfg.wait_timeout_ms = kWaitTimeoutMs;
  cfg.transport = transport;
  cfg.ranks_per_domain = ranks_per_domain;
  auto memory = testing::make_memory(Backend::kCuda, device);
  auto comm = Communicator::create(bootstrap, cfg, Backend::kCuda, device);
  if (rank == absent) {
    // kExit: drop the communicator at once; its teardown barrier waits for the others' (the
    // process leaves the job's dispatches, but cannot leave MPI without ending the job).
    // kSleep: stall outside MPI and CUDA well past the others' timeout.
    if (mode == Mode::kSleep) {
      std::this_thread::sleep_for(std::chrono::milliseconds(3 * kWaitTimeoutMs));
    }
    return;
  }
  const testing::RankData data =
      testing::make_rank_data(shape, testing::Routing::kUniform, 11, rank);
  Buffer x(*memory, data.x.size()), topk(*memory, data.topk_idx.size());
  memory->upload(x.get(), data.x.data(), data.x.size());
  memory->upload(topk.get(), data.topk_idx.data(), data.topk_idx.size());
  DispatchInputs in;
  in.x = x.get();
  in.topk_idx = topk.get();
  in.num_tokens = shape.num_tokens;
  in.num_topk = shape.num_topk;

  expect_timeout_naming(checks, "dispatch", absent, [&] {
    comm->dispatch(in);
    comm->synchronize();
  });
  try {
    comm->dispatch(in);
    checks.expect(false, "a timed-out communicator accepted more work");
  } catch (const Error& e) {
    checks.expect(e.code() == ErrorCode::kBroken, std::string("second dispatch threw ") + e.what());
  }
}

void run_ll_fault(Checks& checks, int device, Transport transport, int ranks_per_domain) {
  auto bootstrap = std::make_shared<MpiBootstrap>(MPI_COMM_WORLD, kBootstrapTimeoutMs);
  const int rank = bootstrap->rank(), R = bootstrap->size(), absent = R - 1;
  constexpr int kTokens = 8, kTopk = 2, kHidden = 128;
  Config cfg;
  cfg.num_experts = 2 * R;
  cfg.hidden = kHidden;
  cfg.max_tokens_per_rank = kTokens;
  cfg.max_topk = kTopk;
  cfg.ll_max_tokens_per_rank = kTokens;
  cfg.dispatch_sms = cfg.combine_sms = 2;
  cfg.wait_timeout_ms = kWaitTimeoutMs;
  cfg.transport = transport;
  cfg.ranks_per_domain = ranks_per_domain;
  auto memory = testing::make_memory(Backend::kCuda, device);
  auto comm = Communicator::create(bootstrap, cfg, Backend::kCuda, device);
  if (rank == absent) return;  // leaves at once; its teardown barrier waits for the others
  // Token t names experts 2t and 2t + 1 (mod E): every rank, the absent one included, gets
  // messages, and every rank waits for every peer's counts.
  std::vector<uint16_t> x(kTokens * kHidden, 0x3f80);  // bf16 1.0
  std::vector<int64_t> topk(kTokens * kTopk);
  for (int i = 0; i < kTokens * kTopk; ++i) topk[i] = i % cfg.num_experts;
  Buffer d_x(*memory, x.size() * sizeof(uint16_t)), d_topk(*memory, topk.size() * sizeof(int64_t));
  memory->upload(d_x.get(), x.data(), x.size() * sizeof(uint16_t));
  memory->upload(d_topk.get(), topk.data(), topk.size() * sizeof(int64_t));
  LowLatencyDispatchInputs in;
  in.x = d_x.get();
  in.topk_idx = d_topk.get();
  in.num_tokens = kTokens;
  in.num_topk = kTopk;
  expect_timeout_naming(checks, "low_latency_dispatch", absent, [&] {
    comm->low_latency_dispatch(in);
    comm->synchronize();
  });
}

void run_bad_ipc_setting(Checks& checks, int device) {
  auto bootstrap = std::make_shared<MpiBootstrap>(MPI_COMM_WORLD, kBootstrapTimeoutMs);
  const int R = bootstrap->size();
  if (bootstrap->rank() == R - 1) setenv("EPCOMM_IPC", "shared-pointers", 1);
  testing::Shape shape;
  shape.num_ranks = R;
  shape.num_experts = 2 * R;
  const auto start = std::chrono::steady_clock::now();
  try {
    auto comm = Communicator::create(bootstrap, testing::config_for(shape), Backend::kCuda, device);
    checks.expect(false, "Communicator::create accepted EPCOMM_IPC=shared-pointers on a rank");
  } catch (const Error& e) {
    const std::string what = e.what();
    checks.expect(e.code() == ErrorCode::kInvalidArgument, "create threw " + what);
    checks.expect(what.find("EPCOMM_IPC") != std::string::npos,
                  "the error does not name EPCOMM_IPC: " + what);
  }
  checks.expect(testing::seconds_since(start) < kMaxFailSeconds,
                "the refusal took " + std::to_string(testing::seconds_since(start)) + " s");
  unsetenv("EPCOMM_IPC");
}

}  // namespace
}  // namespace epcomm

int main(int argc, char** argv) {
  using namespace epcomm;
  MPI_Init(&argc, &argv);
  int world_rank = 0, world_size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  Checks checks(world_rank);
  const char* mode_arg = argc > 1 ? argv[1] : "";
  const bool exit_mode = std::strcmp(mode_arg, "--mode=exit") == 0;
  const bool sleep_mode = std::strcmp(mode_arg, "--mode=sleep") == 0;
  const bool bad_ipc_mode = std::strcmp(mode_arg, "--mode=bad-ipc") == 0;
  const bool ll_exit_mode = std::strcmp(mode_arg, "--mode=ll-exit") == 0;
  Transport transport = Transport::kIpc;
  int ranks_per_domain = 0;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--transport=nvshmem") {
      transport = Transport::kNvshmem;
    } else if (arg.rfind("--ranks-per-domain=", 0) == 0) {
      ranks_per_domain = std::stoi(arg.substr(std::strlen("--ranks-per-domain=")));
    } else {
      checks.expect(false, "unknown argument '" + arg + "'");
    }
  }
  checks.expect(exit_mode || sleep_mode || bad_ipc_mode || ll_exit_mode,
                std::string("usage: --mode=exit|sleep|bad-ipc|ll-exit, not '") + mode_arg + "'");
  checks.expect(world_size >= 2, "needs 2 or more ranks, not " + std::to_string(world_size));
  // Every rank has the same arguments, so all or none call the collective pick_gpu.
  const int device = checks.num_failures() == 0 ? testing::pick_gpu("mpi_faults_test") : -1;
  if (device >= 0) {
    try {
      if (bad_ipc_mode) {
        run_bad_ipc_setting(checks, device);
      } else if (ll_exit_mode) {
        run_ll_fault(checks, device, transport, ranks_per_domain);
      } else {
        run_fault(checks, exit_mode ? Mode::kExit : Mode::kSleep, device, transport,
                  ranks_per_domain);
      }
    } catch (const std::exception& e) {
      checks.expect(false, std::string("unexpected exception: ") + e.what());
    }
  }
  const int code = checks.agreed_exit_code("mpi_faults_test");
  MPI_Finalize();
  return code;
}
