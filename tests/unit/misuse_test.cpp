// Misuse that must be refused with a named error on every backend (DESIGN section 13), here on
// the host reference: Configs that differ between ranks, misaligned pointers, buffers inside
// the memory peers use, a zero-copy repeated combine; and what must keep working: repeated
// combines, counters across 2^32, a low-latency combine given other ids than its dispatch.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "epcomm/epcomm.hpp"
#include "expect_error.hpp"
#include "harness.hpp"
#include "misuse_scenarios.hpp"
#include "overlap.hpp"

namespace epcomm {
namespace {

using testing::expect_error;

Config small_config() {
  Config c;
  c.num_experts = 4;
  c.hidden = 128;
  c.max_tokens_per_rank = 4;
  c.max_topk = 2;
  c.ll_max_tokens_per_rank = 4;
  return c;
}

// Host memory aligned to 256 bytes, so that an offset makes exactly the misalignment wanted.
struct Aligned {
  explicit Aligned(size_t bytes) : p(static_cast<char*>(std::aligned_alloc(256, bytes))) {
    std::memset(p, 0, bytes);
  }
  ~Aligned() { std::free(p); }
  char* p;
};

std::unique_ptr<Communicator> one_rank(const Config& cfg) {
  return Communicator::create(testing::shared_bootstraps(1, 5000)[0], cfg, Backend::kHost);
}

TEST(Misuse, ConfigsThatDifferFailEveryRankNamingTheField) {
  const auto bs = testing::shared_bootstraps(2, 5000);
  std::atomic<int> refused{0};
  testing::run_on_ranks(2, [&](int r) {
    Config cfg = small_config();
    cfg.hidden = r == 0 ? 128 : 1024;
    expect_error(ErrorCode::kInvalidArgument,
                 "Config.hidden differs between ranks: rank 0 has 128, rank 1 has 1024",
                 [&] { Communicator::create(bs[r], cfg, Backend::kHost); });
    ++refused;
  });
  EXPECT_EQ(refused.load(), 2);
  // A difference that makes one rank's Config invalid is still named as a difference.
  const auto bs2 = testing::shared_bootstraps(2, 5000);
  testing::run_on_ranks(2, [&](int r) {
    Config cfg = small_config();
    cfg.num_experts = r == 0 ? 4 : 3;
    expect_error(ErrorCode::kInvalidArgument, "Config.num_experts differs",
                 [&] { Communicator::create(bs2[r], cfg, Backend::kHost); });
  });
}

TEST(Misuse, MisalignedPointersAreNamed) {
  Config cfg = small_config();
  auto comm = one_rank(cfg);
  Aligned mem(1 << 20);
  char* base = mem.p;
  DispatchInputs in;
  in.x = base;
  in.topk_idx = base + 4096;
  in.topk_weights = reinterpret_cast<float*>(base + 8192);
  in.num_tokens = 2;
  in.num_topk = 2;
  auto refuses = [&](const char* what, const auto& call) {
    expect_error(ErrorCode::kInvalidArgument, what, call);
  };
  DispatchInputs bad = in;
  bad.x = base + 2;
  refuses("x = ", [&] { comm->dispatch(bad); });
  refuses("is not 16-byte aligned", [&] { comm->dispatch(bad); });
  bad = in;
  bad.topk_idx = base + 4096 + 4;
  refuses("topk_idx = ", [&] { comm->dispatch(bad); });
  refuses("is not 8-byte aligned", [&] { comm->dispatch(bad); });
  bad = in;
  bad.topk_weights = reinterpret_cast<float*>(base + 8192 + 2);
  refuses("topk_weights = ", [&] { comm->dispatch(bad); });
  for (auto [name, offset] : {std::pair<const char*, int>{"outputs.recv_x", 8},
                              {"outputs.recv_topk_idx", 4},
                              {"outputs.recv_topk_weights", 2},
                              {"outputs.recv_src", 2},
                              {"outputs.num_recv_per_expert", 2}}) {
    DispatchOptions o;
    char* p = base + 65536 + offset;
    const std::string n = name;
    if (n == "outputs.recv_x") o.outputs.recv_x = p;
    if (n == "outputs.recv_topk_idx") o.outputs.recv_topk_idx = p;
    if (n == "outputs.recv_topk_weights") o.outputs.recv_topk_weights = reinterpret_cast<float*>(p);
    if (n == "outputs.recv_src") o.outputs.recv_src = reinterpret_cast<RecvSource*>(p);
    if (n == "outputs.num_recv_per_expert")
      o.outputs.num_recv_per_expert = reinterpret_cast<int*>(p);
    refuses(name, [&] { comm->dispatch(in, o); });
  }
  // int32 ids need 4 bytes, not 8.
  Config cfg32 = small_config();
  cfg32.index_type = IndexType::kInt32;
  auto comm32 = one_rank(cfg32);
  bad = in;
  bad.topk_idx = base + 4096 + 4;
  EXPECT_NO_THROW(comm32->dispatch(bad));
  bad.topk_idx = base + 4096 + 2;
  refuses("is not 4-byte aligned", [&] { comm32->dispatch(bad); });
  // get_dispatch_layout, combine, and the low-latency calls.
  int* counts = reinterpret_cast<int*>(base + 16384);
  refuses("topk_idx = ", [&] {
    comm->get_dispatch_layout(base + 4100, 2, 2,
                              {counts, counts + 16, reinterpret_cast<bool*>(counts + 32)});
  });
  refuses("out.num_tokens_per_rank = ", [&] {
    comm->get_dispatch_layout(
        base + 4096, 2, 2,
        {reinterpret_cast<int*>(base + 16386), counts + 16, reinterpret_cast<bool*>(counts + 32)});
  });
  const DispatchResult res = comm->dispatch(in);
  refuses("y = ", [&] { comm->combine(base + 131072 + 8, res.handle, base + 262144); });
  refuses("out = ", [&] { comm->combine(base + 131072, res.handle, base + 262144 + 4); });
  LowLatencyDispatchInputs ll;
  ll.x = base + 2;
  ll.topk_idx = base + 4096;
  ll.num_tokens = 2;
  ll.num_topk = 2;
  refuses("x = ", [&] { comm->low_latency_dispatch(ll); });
  ll.x = base;
  const LowLatencyDispatchResult lres = comm->low_latency_dispatch(ll);
  refuses("topk_weights = ", [&] {
    comm->low_latency_combine(base + 131072, base + 4096, reinterpret_cast<float*>(base + 8194),
                              lres.handle, base + 262144);
  });
  refuses("y = ", [&] {
    comm->low_latency_combine(base + 131080, base + 4096, reinterpret_cast<float*>(base + 8192),
                              lres.handle, base + 262144);
  });
}

TEST(Misuse, BuffersInsideTheCommunicatorsMemoryAreRefused) {
  auto comm = one_rank(small_config());
  Aligned mem(1 << 16);
  char* pool = static_cast<char*>(comm->combine_input());
  DispatchInputs in;
  in.x = pool;
  in.topk_idx = mem.p;
  in.num_tokens = 2;
  in.num_topk = 2;
  expect_error(ErrorCode::kInvalidArgument, "x = ", [&] { comm->dispatch(in); });
  expect_error(ErrorCode::kInvalidArgument, "overlaps the communicator's memory",
               [&] { comm->dispatch(in); });
  in.x = mem.p + 8192;
  DispatchOptions opts;
  opts.outputs.recv_x = pool + 256;
  expect_error(ErrorCode::kInvalidArgument, "outputs.recv_x = ", [&] { comm->dispatch(in, opts); });
  const DispatchResult res = comm->dispatch(in);
  expect_error(ErrorCode::kInvalidArgument,
               "y = ", [&] { comm->combine(pool + 256, res.handle, mem.p + 16384); });
  expect_error(ErrorCode::kInvalidArgument,
               "out = ", [&] { comm->combine(mem.p + 32768, res.handle, pool + 512); });
  // y == combine_input() is the zero-copy combine, not an overlap.
  EXPECT_NO_THROW(comm->combine(pool, res.handle, mem.p + 16384));
}

// A repeated combine of one dispatch gives the same sums for the same y, takes new y, and
// refuses y in the pool (peers may still be reading the first combine's rows there).
TEST(Misuse, RepeatedCombinesOfOneDispatch) {
  const int R = 2;
  const Config cfg = small_config();
  const auto bs = testing::shared_bootstraps(R, 5000);
  testing::run_on_ranks(R, [&](int r) {
    auto comm = Communicator::create(bs[r], cfg, Backend::kHost);
    const int T = 4, H = cfg.hidden;
    std::vector<uint16_t> x(T * H, 0x3f80), y1(R * T * H), y2(R * T * H);
    testing::Rng rng(77 + r);
    for (auto& v : y1) v = testing::random_wide_bf16(rng);
    for (auto& v : y2) v = testing::random_wide_bf16(rng);
    std::vector<int64_t> topk = {0, 2, 1, 3, 2, -1, 3, 0};
    DispatchInputs in;
    in.x = x.data();
    in.topk_idx = topk.data();
    in.num_tokens = T;
    in.num_topk = 2;
    const DispatchResult res = comm->dispatch(in);
    std::vector<uint16_t> out1(T * H), out2(T * H), out3(T * H);
    comm->combine(y1.data(), res.handle, out1.data());
    expect_error(ErrorCode::kInvalidArgument, "a repeated combine takes y from a buffer of its own",
                 [&] { comm->combine(comm->combine_input(), res.handle, out2.data()); });
    comm->combine(y1.data(), res.handle, out2.data());
    comm->combine(y2.data(), res.handle, out3.data());
    EXPECT_EQ(out1, out2);
    EXPECT_NE(out1, out3);
  });
}

// Every counter starts just below 2^32 (Config::sequence_start) and crosses it: the outputs
// are those of a run that starts at 0.
TEST(Misuse, CountersAcrossTwoToThe32) {
  Config cfg;
  cfg.num_experts = 8;
  cfg.hidden = 128;
  cfg.max_tokens_per_rank = 8;
  cfg.max_topk = 3;
  cfg.ll_max_tokens_per_rank = 8;
  testing::OverlapOptions options;
  options.rounds = 12;
  options.seed = 5;
  const auto from_zero = testing::run_overlap_cluster(Backend::kHost, cfg, 2, options);
  cfg.sequence_start = (1ull << 32) - 3;
  const auto across = testing::run_overlap_cluster(Backend::kHost, cfg, 2, options);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(testing::first_difference(from_zero[r], across[r]), "") << "rank " << r;
  }
}

// The rows were routed by the dispatch's ids: a combine given others (with the same counts, so
// no count check notices) still reads the dispatch's, and synchronize names the difference.
TEST(Misuse, LowLatencyCombineGivenOtherIds) {
  const testing::OtherIdsResult r = testing::low_latency_combine_with_other_ids(Backend::kHost);
  EXPECT_EQ(r.with_other_ids, r.with_dispatch_ids);
  EXPECT_NE(r.error.find("topk_idx[0][0] = 2 but its dispatch had 0"), std::string::npos)
      << r.error;
}

}  // namespace
}  // namespace epcomm
