// CUDA conformance with one rank per process (mpirun; CUDA IPC, or NVSHMEM with
// --transport=nvshmem, in domains of --ranks-per-domain=L ranks): every rank's outputs against
// the host reference, which each process computes for all ranks on threads of its own; the
// expert-major cases also against an independent computation of the layout and combine
// (tests/common/independent_check.cpp).
#include <mpi.h>

#include <algorithm>
#include <sstream>
#include <vector>

#include "epcomm/epcomm.hpp"
#include "epcomm/mpi_bootstrap.hpp"
#include "harness.hpp"
#include "independent_check.hpp"
#include "mpi_check.hpp"

namespace epcomm {
namespace {

using testing::Checks;
using testing::RoundOptions;
using testing::Routing;
using testing::Shape;

struct Case {
  Shape shape;
  Routing routing = Routing::kUniform;
  RoundOptions options;
  int sms = 4;
  int rounds = 2;
  uint64_t seed = 1;
  int config_alignment = 0;  // Config::expert_alignment; 0: 1 + seed % 3
};

bool expert_major(const Case& c) { return c.options.layout == RecvLayout::kExpertMajor; }

std::string case_name(const Case& c) {
  std::ostringstream os;
  os << c.shape.name() << "_" << testing::to_string(c.routing) << "_sms" << c.sms
     << (c.options.copy_recv_x ? "_copyx" : "_viewx")
     << (c.options.stage_y ? "_stagey" : "_inplacey")
     << (c.options.wait_num_recv ? "_exact" : "_worstcase")
     << (c.options.caller_meta ? "_callermeta" : "_ownmeta") << "_rounds" << c.rounds;
  if (expert_major(c)) {
    os << "_em_align" << c.config_alignment;
    if (c.options.expert_alignment) os << "_callalign" << c.options.expert_alignment;
    if (c.options.apply_weights) os << "_applyw";
    if (c.options.bias) os << "_bias" << c.options.bias;
  }
  return os.str();
}

// Buffer reuse across many calls on one communicator: T = 64, E = 4R, K = 4, H = 512, 8 SMs,
// fresh routing and rows every round.
Case many_rounds_case(int num_ranks, int rounds, uint64_t seed) {
  Case c;
  c.shape.num_ranks = num_ranks;
  c.shape.num_tokens = 64;
  c.shape.num_experts = 4 * num_ranks;
  c.shape.num_topk = 4;
  c.shape.hidden = 512;
  c.sms = 8;
  c.rounds = rounds;
  c.seed = seed;
  return c;
}

// Expert-major cases, after the token-major ones (so that --first N keeps picking those): every
// (routing, T) with repeated experts among the routings, dtype alternating, alignment 1, 2, 4 or
// 32 in the Config or per call, weights applied or not, biases, then 20 rounds on fresh data.
void append_expert_major_cases(int num_ranks, std::vector<Case>& cases) {
  constexpr int kAlignments[] = {1, 2, 4, 32};
  int i = 0;
  for (Routing routing : {Routing::kUniform, Routing::kSkewed, Routing::kAllToOne,
                          Routing::kOneRankEmpty, Routing::kWithHoles, Routing::kRepeats}) {
    for (int T : {0, 1, 13, 96}) {
      Case c;
      c.routing = routing;
      c.shape.num_ranks = num_ranks;
      c.shape.num_tokens = T;
      c.shape.num_experts = i % 5 == 2 ? 2 * num_ranks : 8 * num_ranks;
      c.shape.num_topk = i % 3 == 0 ? 8 : 4;
      c.shape.hidden = i % 11 == 6 ? 7168 : (i % 2 ? 256 : 128);
      c.shape.dtype = i % 2 ? DType::kFP8E4M3 : DType::kBF16;
      c.shape.index_type = (i / 2) % 2 ? IndexType::kInt32 : IndexType::kInt64;
      c.shape.with_weights = i % 5 != 3;
      c.sms = 1 + (i * 5) % 12;
      c.options.layout = RecvLayout::kExpertMajor;
      c.options.apply_weights = c.shape.with_weights && i % 3 != 1;
      c.options.copy_recv_x = i % 4 == 1;
      c.options.stage_y = i % 3 == 2;
      c.options.wait_num_recv = i % 4 != 3;
      c.options.caller_meta = i % 2 == 0;
      c.options.bias = (i / 2) % 4;
      c.seed = 7500 + 10 * i;
      const int alignment = kAlignments[(i / 3) % 4];
      c.config_alignment = i % 2 ? alignment : 3;
      if (i % 2 == 0) c.options.expert_alignment = alignment;  // over Config's 3
      cases.push_back(c);
      ++i;
    }
  }
  Case many = many_rounds_case(num_ranks, 20, 9300);
  many.routing = Routing::kRepeats;
  many.config_alignment = 4;
  many.options.layout = RecvLayout::kExpertMajor;
  many.options.apply_weights = true;
  cases.push_back(many);
}

// Every (routing, T, dtype) on R ranks; index type, K, hidden, weights and output modes vary
// with the case index so that each meets several shapes.
std::vector<Case> make_cases(int num_ranks) {
  std::vector<Case> cases;
  int i = 0;
  for (Routing routing : {Routing::kUniform, Routing::kSkewed, Routing::kAllToOne,
                          Routing::kOneRankEmpty, Routing::kWithHoles}) {
    for (int T : {0, 1, 13, 96}) {
      for (DType dtype : {DType::kBF16, DType::kFP8E4M3}) {
        Case c;
        c.routing = routing;
        c.shape.num_ranks = num_ranks;
        c.shape.num_tokens = T;
        c.shape.num_experts = 8 * num_ranks;
        c.shape.num_topk = i % 3 == 0 ? 8 : 4;
        c.shape.hidden = i % 9 == 4 ? 7168 : (i % 2 ? 256 : 128);
        c.shape.dtype = dtype;
        c.shape.index_type = (i / 2) % 2 ? IndexType::kInt32 : IndexType::kInt64;
        c.shape.with_weights = i % 5 != 3;
        c.sms = 1 + (i * 5) % 12;
        c.options.copy_recv_x = i % 4 == 1;
        c.options.stage_y = i % 3 == 2;
        c.options.wait_num_recv = i % 4 != 3;
        c.options.caller_meta = i % 2 == 0;
        c.seed = 7000 + 10 * i;
        cases.push_back(c);
        ++i;
      }
    }
  }
  cases.push_back(many_rounds_case(num_ranks, 100, 9100));
  // Across NVLink domains the token-major rows only (expert-major ones are refused there:
  // mpi_check.hpp's check_across_domain_refusals).
  const int L = testing::program_ranks_per_domain();
  if (L == 0 || L == num_ranks) append_expert_major_cases(num_ranks, cases);
  return cases;
}

Config config_of(const Case& c) {
  Config cfg = testing::config_for(c.shape);
  cfg.dispatch_sms = c.sms;
  cfg.combine_sms = c.sms;
  cfg.expert_alignment = c.config_alignment ? c.config_alignment : 1 + c.seed % 3;
  cfg.transport = testing::program_transport();
  // The host reference combines in the same domain order (DESIGN section 11).
  cfg.ranks_per_domain = testing::program_ranks_per_domain();
  if (expert_major(c)) {
    cfg.max_recv_rows = testing::expert_major_max_rows(
        c.shape, std::max(cfg.expert_alignment, c.options.expert_alignment));
  }
  return cfg;
}

// Collective: runs one case on this rank; returns false when it could not finish, after which
// the communicators of the ranks no longer agree and later cases would only time out.
bool run_case(Checks& checks, const std::shared_ptr<MpiBootstrap>& bootstrap,
              testing::Memory& memory, int device, const Case& c) {
  const int rank = bootstrap->rank();
  const std::string name = case_name(c);
  if (rank == 0) {
    std::printf("case %s seed %llu\n", name.c_str(), static_cast<unsigned long long>(c.seed));
    std::fflush(stdout);
  }
  const Config cfg = config_of(c);
  try {
    const auto want =
        testing::run_cluster(Backend::kHost, cfg, c.shape, c.routing, c.seed, c.options, c.rounds);
    auto comm = Communicator::create(bootstrap, cfg, Backend::kCuda, device);
    for (int round = 0; round < c.rounds; ++round) {
      const testing::RankOutputs got = testing::run_round(*comm, *bootstrap, memory, c.shape,
                                                          c.routing, c.seed + round, c.options);
      const std::string at =
          name + " seed " + std::to_string(c.seed) + " round " + std::to_string(round) + ": ";
      const std::string diff = testing::first_difference(want[round][rank], got);
      checks.expect(diff.empty(), at + diff);
      if (expert_major(c)) {
        const std::string err = testing::check_expert_major_rank(c.shape, c.routing, c.seed + round,
                                                                 rank, got, c.options, cfg);
        checks.expect(err.empty(), at + "independent check: " + err);
      }
    }
    bootstrap->barrier();  // no rank tears down while a peer still reads its pool
    return true;
  } catch (const std::exception& e) {
    checks.expect(false, name + " seed " + std::to_string(c.seed) + ": " + e.what());
    return false;
  }
}

}  // namespace
}  // namespace epcomm

// Usage: mpi_conformance_test [--first N]   (N: run only the first N cases)
int main(int argc, char** argv) {
  using namespace epcomm;
  return testing::run_case_program(argc, argv, "mpi_conformance_test", make_cases, run_case);
}
