// Checks, the agreed exit code, and the GPU choice shared by the multi-process (mpirun) tests.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "epcomm/epcomm.hpp"
#include "epcomm/mpi_bootstrap.hpp"
#include "memory.hpp"

namespace epcomm::testing {

// Bootstrap waits of the case-list programs: 8 processes may share one GPU without MPS.
constexpr int kMpiBootstrapTimeoutMs = 120000;

// Counts failed checks of this rank and prints each with the rank, so that mpirun's merged
// output says who failed.
class Checks {
 public:
  explicit Checks(int rank) : rank_(rank) {}
  void expect(bool ok, const std::string& what) {
    ++num_checks_;
    if (ok) return;
    ++num_failures_;
    std::fprintf(stderr, "FAILED rank %d: %s\n", rank_, what.c_str());
    std::fflush(stderr);
  }
  int num_checks() const { return num_checks_; }
  int num_failures() const { return num_failures_; }

  // Collective over MPI_COMM_WORLD: 1 on every rank when any rank failed a check, else 0.
  int agreed_exit_code(const char* program) const {
    int mine = num_failures_, total = 0, checks = 0;
    MPI_Allreduce(&mine, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(&num_checks_, &checks, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank_ == 0) {
      std::printf("%s: %s: %d failed of %d checks on all ranks\n", program,
                  total ? "FAILED" : "PASSED", total, checks);
    }
    return total ? 1 : 0;
  }

 private:
  int rank_;
  int num_checks_ = 0;
  int num_failures_ = 0;
};

inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Collective over MPI_COMM_WORLD. The GPU of this rank (local rank % device count, the local
// rank taken among the ranks sharing this host), or -1 on every rank when some rank sees no
// GPU; rank 0 then prints the marker ctest's SKIP_REGULAR_EXPRESSION looks for.
inline int pick_gpu(const char* program) {
  MPI_Comm node = MPI_COMM_NULL;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int local_rank = 0;
  MPI_Comm_rank(node, &local_rank);
  MPI_Comm_free(&node);
  const int devices = cuda_device_count();
  int fewest = 0;
  MPI_Allreduce(&devices, &fewest, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (fewest > 0) return local_rank % devices;
  int world_rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  if (world_rank == 0) std::printf("[  SKIPPED ] %s: no GPU present\n", program);
  return -1;
}

// The main() of a program of checks on this rank's GPU: MPI started, `before_gpu(checks)` (the
// checks that need no GPU), then, when every rank has a GPU, run(checks, rank, size, device)
// with this rank's (an exception counts as a failed check). Returns the exit code every rank
// agrees on.
template <typename BeforeGpu, typename Run>
int run_gpu_program(int argc, char** argv, const char* program, BeforeGpu before_gpu, Run run) {
  MPI_Init(&argc, &argv);
  int world_rank = 0, world_size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  Checks checks(world_rank);
  before_gpu(checks);
  const int device = pick_gpu(program);
  if (device >= 0) {
    try {
      run(checks, world_rank, world_size, device);
    } catch (const std::exception& e) {
      checks.expect(false, std::string("threw: ") + e.what());
    }
  }
  const int rc = checks.agreed_exit_code(program);
  MPI_Finalize();
  return rc;
}

// The transport every communicator of a case-list program uses (--transport=nvshmem).
inline Transport& program_transport() {
  static Transport transport = Transport::kIpc;
  return transport;
}

// The domains every communicator of a case-list program is built with
// (--ranks-per-domain=L: Config::ranks_per_domain, nvshmem only; 0: as found).
inline int& program_ranks_per_domain() {
  static int ranks_per_domain = 0;
  return ranks_per_domain;
}

// Across NVLink domains (ranks_per_domain = R / 2 over NVSHMEM), what is not built is refused on
// every rank alike, with kUnsupported naming it: an expert-major dispatch. A token-major
// dispatch runs (the suites check its bytes), and a second combine of it returns the first
// one's bytes (its partials go to the other buffer).
inline void check_across_domain_refusals(Checks& checks,
                                         const std::shared_ptr<Bootstrap>& bootstrap,
                                         Memory& memory, int device, Config config) {
  const int R = bootstrap->size();
  if (R < 2 || R % 2 != 0) return;
  config.transport = Transport::kNvshmem;
  config.ranks_per_domain = R / 2;
  // Under an MPS share (the nvshmem runs) the device shows fewer SMs than the default 16.
  config.dispatch_sms = config.combine_sms = std::min(16, cuda_sm_count(device));
  auto expect_unsupported = [&](const std::string& what, const std::string& names, auto call) {
    try {
      call();
      checks.expect(false, what + " across domains was issued");
    } catch (const Error& e) {
      checks.expect(e.code() == ErrorCode::kUnsupported &&
                        std::string(e.what()).find(names) != std::string::npos,
                    what + " across domains threw " + e.what());
    }
  };
  try {
    auto comm = Communicator::create(bootstrap, config, Backend::kCuda, device);
    Buffer x(memory, config.row_bytes()), topk(memory, sizeof(int64_t));
    const int64_t expert = (bootstrap->rank() + R / 2) % R * config.experts_per_rank(R);
    memory.upload(topk.get(), &expert, sizeof(expert));
    DispatchInputs in;
    in.x = x.get();
    in.topk_idx = topk.get();
    in.num_tokens = 1;
    in.num_topk = 1;
    DispatchOptions expert_major;
    expert_major.layout = RecvLayout::kExpertMajor;
    expect_unsupported("an expert-major dispatch", "expert_major",
                       [&] { comm->dispatch(in, expert_major); });
    const DispatchResult r = comm->dispatch(in);
    const size_t row = 2 * static_cast<size_t>(config.hidden);
    Buffer y(memory, comm->recv_capacity() * row), out(memory, row), again(memory, row);
    memory.fill(y.get(), 0x3c, comm->recv_capacity() * row);  // 0x3c3c: a small bf16
    memory.fill(out.get(), 0xff, row);
    memory.fill(again.get(), 0x00, row);
    comm->combine(y.get(), r.handle, out.get());
    comm->combine(y.get(), r.handle, again.get());
    comm->synchronize();
    std::vector<unsigned char> first(row), second(row);
    memory.download(first.data(), out.get(), row);
    memory.download(second.data(), again.get(), row);
    // The token went to one rank of the other domain: its partial is that rank's row of y.
    const std::vector<unsigned char> want(row, 0x3c);
    checks.expect(first == want, "a combine across domains did not return the one row of y");
    checks.expect(second == want, "a second combine of one dispatch across domains differs");
    bootstrap->barrier();
  } catch (const Error& e) {
    checks.expect(false, std::string("ranks_per_domain = R / 2: ") + e.what());
  }
}

// The main() of a case-list program. Usage: <program> [--first N] [--transport=nvshmem]
// [--ranks-per-domain=L] (N: run only the first N cases, e.g. under compute-sanitizer; nvshmem:
// every communicator's regions come from NVSHMEM's symmetric heap, see program_transport; L:
// program_ranks_per_domain). run_case(checks,
// bootstrap, memory, device, case) returns false to stop (a rank failed in a way that leaves
// the job unusable). Returns the exit code every rank agrees on.
template <typename MakeCases, typename RunCase>
int run_case_program(int argc, char** argv, const char* program, MakeCases make_cases,
                     RunCase run_case) {
  MPI_Init(&argc, &argv);
  size_t first_cases = SIZE_MAX;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--first" && i + 1 < argc) {
      first_cases = std::stoul(argv[++i]);
    } else if (arg == "--transport=nvshmem") {
      program_transport() = Transport::kNvshmem;
    } else if (arg.rfind("--ranks-per-domain=", 0) == 0) {
      program_ranks_per_domain() = std::stoi(arg.substr(std::strlen("--ranks-per-domain=")));
    } else if (arg != "--transport=ipc") {
      std::fprintf(stderr, "%s: unknown argument '%s'\n", program, arg.c_str());
      MPI_Finalize();
      return 2;
    }
  }
  int world_rank = 0, world_size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  const int device = pick_gpu(program);
  if (device < 0) {
    MPI_Finalize();
    return 0;
  }
  Checks checks(world_rank);
  {
    auto bootstrap = std::make_shared<MpiBootstrap>(MPI_COMM_WORLD, kMpiBootstrapTimeoutMs);
    auto memory = make_memory(Backend::kCuda, device);
    const auto cases = make_cases(world_size);
    if (program_transport() == Transport::kNvshmem) {
      if (world_rank == 0) std::printf("transport: nvshmem\n");
      Config config;
      config.num_experts = 2 * world_size;
      config.hidden = 128;
      config.max_tokens_per_rank = 4;
      check_across_domain_refusals(checks, bootstrap, *memory, device, config);
      if (world_rank == 0) std::printf("ranks per domain: %d\n", program_ranks_per_domain());
    }
    for (size_t i = 0; i < cases.size() && i < first_cases; ++i) {
      if (!run_case(checks, bootstrap, *memory, device, cases[i])) break;
    }
  }
  const int code = checks.agreed_exit_code(program);
  MPI_Finalize();
  return code;
}

}  // namespace epcomm::testing
