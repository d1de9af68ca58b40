// Every rejected input gives a clear epcomm::Error on the host backend, and nothing hangs.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>

#include "epcomm/epcomm.hpp"
#include "expect_error.hpp"
#include "harness.hpp"

namespace epcomm {
namespace {

using testing::expect_error;

using testing::Routing;
using testing::Shape;

struct Ranks {
  explicit Ranks(const Config& cfg, int n)
      : config(cfg), bootstraps(testing::shared_bootstraps(n, 5000)) {}
  Config config;
  std::vector<std::shared_ptr<Bootstrap>> bootstraps;
};

Config small_config() {
  Config c;
  c.num_experts = 4;
  c.hidden = 16;
  c.max_tokens_per_rank = 4;
  c.max_topk = 2;
  return c;
}

TEST(Errors, LocalArgumentChecks) {
  Ranks ranks(small_config(), 1);
  auto comm = Communicator::create(ranks.bootstraps[0], ranks.config, Backend::kHost);
  std::vector<uint16_t> x(16 * 8, 0);
  std::vector<int64_t> topk(16, 0);
  DispatchInputs in;
  in.x = x.data();
  in.topk_idx = topk.data();
  in.num_tokens = 5;
  in.num_topk = 2;
  expect_error(ErrorCode::kInvalidArgument, "num_tokens = 5", [&] { comm->dispatch(in); });
  in.num_tokens = 2;
  in.num_topk = 3;
  expect_error(ErrorCode::kInvalidArgument, "num_topk = 3", [&] { comm->dispatch(in); });
  in.num_topk = 2;
  in.x = nullptr;
  expect_error(ErrorCode::kInvalidArgument, "x is null", [&] { comm->dispatch(in); });
  in.x = x.data();
  in.topk_idx = nullptr;
  expect_error(ErrorCode::kInvalidArgument, "topk_idx is null", [&] { comm->dispatch(in); });
  in.topk_idx = topk.data();
  float scales[4] = {};
  in.x_scales = scales;
  expect_error(ErrorCode::kInvalidArgument, "x_scales is given", [&] { comm->dispatch(in); });
  in.x_scales = nullptr;
  int per_rank[1], per_expert[4];
  bool in_rank[8];
  expect_error(ErrorCode::kInvalidArgument, "out.num_tokens_per_expert is null", [&] {
    comm->get_dispatch_layout(topk.data(), 2, 2, {per_rank, nullptr, in_rank});
  });
  topk[3] = 4;
  expect_error(ErrorCode::kInvalidExpert, "topk_idx[1][1] = 4", [&] {
    comm->get_dispatch_layout(topk.data(), 2, 2, {per_rank, per_expert, in_rank});
  });
  topk[3] = -2;
  expect_error(ErrorCode::kInvalidExpert, "topk_idx[1][1] = -2", [&] { comm->dispatch(in); });
}

TEST(Errors, Fp8ScalesShape) {
  Config cfg = small_config();
  cfg.dtype = DType::kFP8E4M3;
  cfg.hidden = 256;
  Ranks ranks(cfg, 1);
  auto comm = Communicator::create(ranks.bootstraps[0], cfg, Backend::kHost);
  std::vector<uint8_t> x(256 * 2, 0);
  std::vector<int64_t> topk(4, 0);
  std::vector<float> scales(4, 1.f);
  DispatchInputs in;
  in.x = x.data();
  in.topk_idx = topk.data();
  in.num_tokens = 2;
  in.num_topk = 2;
  expect_error(ErrorCode::kInvalidArgument, "x_scales is null", [&] { comm->dispatch(in); });
  in.x_scales = scales.data();
  in.scales_per_token = 3;
  expect_error(ErrorCode::kInvalidArgument, "scales_per_token = 3", [&] { comm->dispatch(in); });
  in.scales_per_token = 2;
  EXPECT_NO_THROW(comm->dispatch(in));
}

TEST(Errors, BadExpertOnOneRankFailsEveryRank) {
  Ranks ranks(small_config(), 2);
  std::atomic<int> errors{0};
  testing::run_on_ranks(2, [&](int r) {
    auto comm = Communicator::create(ranks.bootstraps[r], ranks.config, Backend::kHost);
    std::vector<uint16_t> x(16 * 2, 0);
    std::vector<int32_t> topk32 = {0, 1, 2, 3};
    std::vector<int64_t> topk = {0, 1, 2, r == 1 ? 7 : 3};
    DispatchInputs in;
    in.x = x.data();
    in.topk_idx = topk.data();
    in.num_tokens = 2;
    in.num_topk = 2;
    try {
      comm->dispatch(in);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidExpert);
      const std::string want = r == 1 ? "topk_idx[1][1] = 7" : "peer rank 1";
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
      errors.fetch_add(1);
    }
    // The communicator stays usable after a rejected input.
    topk[3] = 3;
    EXPECT_EQ(comm->dispatch(in).num_recv, 2 + (r == 0 ? 0 : 0));
  });
  EXPECT_EQ(errors.load(), 2);
}

TEST(Errors, CapacityExceededOnEveryRank) {
  Config cfg = small_config();
  cfg.max_recv_rows = 3;
  Ranks ranks(cfg, 2);
  std::atomic<int> errors{0};
  testing::run_on_ranks(2, [&](int r) {
    auto comm = Communicator::create(ranks.bootstraps[r], cfg, Backend::kHost);
    std::vector<uint16_t> x(16 * 4, 0);
    std::vector<int64_t> topk = {0, -1, 1, -1, 0, 1, 1, 0};  // all 4 tokens to rank 0
    DispatchInputs in;
    in.x = x.data();
    in.topk_idx = topk.data();
    in.num_tokens = 4;
    in.num_topk = 2;
    expect_error(ErrorCode::kCapacityExceeded, "rank 0 would receive 8 rows", [&] {
      comm->dispatch(in);
    });
    errors.fetch_add(1);
  });
  EXPECT_EQ(errors.load(), 2);
}

TEST(Errors, StaleAndForeignHandles) {
  Ranks a(small_config(), 1), b(small_config(), 1);
  auto comm = Communicator::create(a.bootstraps[0], a.config, Backend::kHost);
  auto other = Communicator::create(b.bootstraps[0], b.config, Backend::kHost);
  std::vector<uint16_t> x(16 * 2, 0), out(16 * 2, 0);
  std::vector<int64_t> topk = {0, 1, 2, 3};
  DispatchInputs in;
  in.x = x.data();
  in.topk_idx = topk.data();
  in.num_tokens = 2;
  in.num_topk = 2;
  DispatchResult first = comm->dispatch(in);
  DispatchResult foreign = other->dispatch(in);
  expect_error(ErrorCode::kStaleHandle, "another communicator",
               [&] { comm->combine(comm->combine_input(), foreign.handle, out.data()); });
  DispatchResult second = comm->dispatch(in);
  expect_error(ErrorCode::kStaleHandle, "dispatch #1",
               [&] { comm->combine(comm->combine_input(), first.handle, out.data()); });
  EXPECT_NO_THROW(comm->combine(comm->combine_input(), second.handle, out.data()));
  expect_error(ErrorCode::kInvalidArgument, "handle is empty",
               [&] { comm->combine(comm->combine_input(), DispatchHandle(), out.data()); });
  // A cached dispatch may reuse an old handle; the combine must then use the new one.
  DispatchResult cached = comm->dispatch_cached(first.handle, x.data(), nullptr);
  EXPECT_EQ(cached.num_recv, first.num_recv);
  EXPECT_NO_THROW(comm->combine(comm->combine_input(), cached.handle, out.data()));
}

TEST(Errors, MissingRankTimesOutWithItsName) {
  Config cfg = small_config();
  auto made = make_in_process_bootstraps(2, 300);
  std::shared_ptr<Bootstrap> b0 = std::move(made[0]);
  // Rank 1 never creates its communicator: rank 0 must give up and name it.
  expect_error(ErrorCode::kTimeout, "rank(s) 1",
               [&] { Communicator::create(b0, cfg, Backend::kHost); });
}

class FakeRemoteBootstrap final : public Bootstrap {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void allGather(const void* s, void* r, size_t n) override { std::memcpy(r, s, n); }
  void barrier() override {}
  bool in_process() const override { return false; }
};

TEST(Errors, HostBackendNeedsInProcessRanks) {
  expect_error(ErrorCode::kUnsupported, "threads of one process", [&] {
    Communicator::create(std::make_shared<FakeRemoteBootstrap>(), small_config(), Backend::kHost);
  });
  expect_error(ErrorCode::kInvalidArgument, "bootstrap is null",
               [&] { Communicator::create(nullptr, small_config(), Backend::kHost); });
}

}  // namespace
}  // namespace epcomm
