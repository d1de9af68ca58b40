// Every rejected low-latency call gives an epcomm::Error naming the argument and its value, on
// the host backend; bad expert ids fail every rank and nothing hangs.
#include <gtest/gtest.h>

#include <atomic>
#include <vector>

#include "epcomm/epcomm.hpp"
#include "expect_error.hpp"
#include "harness.hpp"

namespace epcomm {
namespace {

using testing::expect_error;

constexpr int kHidden = 128, kMaxTokens = 4, kTopk = 2;

Config ll_config(int max_tokens = kMaxTokens) {
  Config c;
  c.num_experts = 4;
  c.hidden = kHidden;
  c.max_tokens_per_rank = 1;
  c.max_topk = kTopk;
  c.ll_max_tokens_per_rank = max_tokens;
  return c;
}

// One rank's host inputs: T tokens, each to experts {t % E, -1}.
struct Inputs {
  explicit Inputs(int num_tokens, int num_experts = 4)
      : x(static_cast<size_t>(std::max(num_tokens, 1)) * kHidden, 0x3f80),
        topk(static_cast<size_t>(std::max(num_tokens, 1)) * kTopk, -1),
        weights(topk.size(), 1.0f),
        y(static_cast<size_t>(num_experts) * kMaxTokens * kHidden * 8, 0),
        out(x.size(), 0) {
    for (int t = 0; t < num_tokens; ++t) topk[t * kTopk] = t % num_experts;
    in.x = x.data();
    in.topk_idx = topk.data();
    in.num_tokens = num_tokens;
    in.num_topk = kTopk;
  }
  void combine(Communicator& comm, const LowLatencyHandle& handle, bool send_only = false) {
    comm.low_latency_combine(y.data(), topk.data(), weights.data(), handle, out.data(), send_only);
  }
  std::vector<uint16_t> x;
  std::vector<int64_t> topk;
  std::vector<float> weights;
  std::vector<uint16_t> y, out;
  LowLatencyDispatchInputs in;
};

std::unique_ptr<Communicator> one_rank(const Config& cfg) {
  return Communicator::create(testing::shared_bootstraps(1, 5000)[0], cfg, Backend::kHost);
}

TEST(LowLatencyErrors, ModeOff) {
  auto comm = one_rank(ll_config(0));
  Inputs data(2);
  expect_error(ErrorCode::kInvalidArgument, "ll_max_tokens_per_rank is 0",
               [&] { comm->low_latency_dispatch(data.in); });
}

TEST(LowLatencyErrors, DispatchArguments) {
  auto comm = one_rank(ll_config());
  Inputs data(kMaxTokens + 1);
  std::string what = expect_error(ErrorCode::kInvalidArgument, "num_tokens = 5",
                                  [&] { comm->low_latency_dispatch(data.in); });
  EXPECT_NE(what.find("ll_max_tokens_per_rank = 4"), std::string::npos) << what;
  data.in.num_tokens = -1;
  expect_error(ErrorCode::kInvalidArgument, "num_tokens = -1",
               [&] { comm->low_latency_dispatch(data.in); });
  data.in.num_tokens = 2;
  data.in.num_topk = kTopk + 1;
  what = expect_error(ErrorCode::kInvalidArgument, "num_topk = 3",
                      [&] { comm->low_latency_dispatch(data.in); });
  EXPECT_NE(what.find("max_topk = 2"), std::string::npos) << what;
  data.in.num_topk = 0;
  expect_error(ErrorCode::kInvalidArgument, "num_topk = 0",
               [&] { comm->low_latency_dispatch(data.in); });
  data.in.num_topk = kTopk;
  data.in.x = nullptr;
  expect_error(ErrorCode::kInvalidArgument, "x is null",
               [&] { comm->low_latency_dispatch(data.in); });
  data.in.x = data.x.data();
  data.in.topk_idx = nullptr;
  expect_error(ErrorCode::kInvalidArgument, "topk_idx is null",
               [&] { comm->low_latency_dispatch(data.in); });
  // None of the rejected calls took a buffer: two dispatches still fit.
  data.in.topk_idx = data.topk.data();
  const LowLatencyDispatchResult first = comm->low_latency_dispatch(data.in);
  const LowLatencyDispatchResult second = comm->low_latency_dispatch(data.in);
  EXPECT_EQ(first.handle.call(), 1u);
  EXPECT_EQ(second.handle.buffer(), 1);
}

TEST(LowLatencyErrors, CombineArgumentsLeaveTheDispatchCombinable) {
  auto comm = one_rank(ll_config());
  Inputs data(3);
  const LowLatencyDispatchResult res = comm->low_latency_dispatch(data.in);
  const LowLatencyHandle& h = res.handle;
  expect_error(ErrorCode::kInvalidArgument, "y is null", [&] {
    comm->low_latency_combine(nullptr, data.topk.data(), data.weights.data(), h, data.out.data());
  });
  expect_error(ErrorCode::kInvalidArgument, "topk_idx is null", [&] {
    comm->low_latency_combine(data.y.data(), nullptr, data.weights.data(), h, data.out.data());
  });
  expect_error(ErrorCode::kInvalidArgument, "topk_weights is null", [&] {
    comm->low_latency_combine(data.y.data(), data.topk.data(), nullptr, h, data.out.data());
  });
  expect_error(ErrorCode::kInvalidArgument, "out is null", [&] {
    comm->low_latency_combine(data.y.data(), data.topk.data(), data.weights.data(), h, nullptr);
  });
  expect_error(ErrorCode::kInvalidArgument, "handle is empty",
               [&] { data.combine(*comm, LowLatencyHandle()); });
  data.combine(*comm, h);
}

TEST(LowLatencyErrors, ThirdOverlappingDispatch) {
  for (bool send_only : {false, true}) {
    auto comm = one_rank(ll_config());
    Inputs data(2);
    const LowLatencyDispatchResult first = comm->low_latency_dispatch(data.in, send_only);
    const LowLatencyDispatchResult second = comm->low_latency_dispatch(data.in, send_only);
    const std::string what = expect_error(ErrorCode::kInvalidArgument, "call #3 needs buffer 0",
                                          [&] { comm->low_latency_dispatch(data.in); });
    EXPECT_NE(what.find("dispatch #1"), std::string::npos) << what;
    // Finishing the first pair frees buffer 0 and only it.
    if (send_only) comm->low_latency_receive(first.handle);
    data.combine(*comm, first.handle, send_only);
    if (send_only) {
      expect_error(ErrorCode::kInvalidArgument, "call #3",
                   [&] { comm->low_latency_dispatch(data.in); });  // combine not received yet
      comm->low_latency_receive(first.handle);
    }
    const LowLatencyDispatchResult third = comm->low_latency_dispatch(data.in);
    EXPECT_EQ(third.handle.call(), 3u);
    EXPECT_EQ(third.handle.buffer(), 0);
    expect_error(ErrorCode::kInvalidArgument, "call #4 needs buffer 1",
                 [&] { comm->low_latency_dispatch(data.in); });
  }
}

TEST(LowLatencyErrors, StaleAndUnreceivedHandles) {
  auto comm = one_rank(ll_config());
  Inputs data(2);
  const LowLatencyDispatchResult first = comm->low_latency_dispatch(data.in);
  data.combine(*comm, first.handle);
  expect_error(ErrorCode::kStaleHandle, "dispatch #1 is finished",
               [&] { data.combine(*comm, first.handle); });
  const LowLatencyDispatchResult second = comm->low_latency_dispatch(data.in);
  data.combine(*comm, second.handle);
  const LowLatencyDispatchResult third = comm->low_latency_dispatch(data.in);  // buffer 0 again
  const std::string what = expect_error(ErrorCode::kStaleHandle, "dispatch #1",
                                        [&] { data.combine(*comm, first.handle); });
  EXPECT_NE(what.find("now holds dispatch #3"), std::string::npos) << what;

  // With the hook, combine before the receive is refused, and so is a second receive.
  data.combine(*comm, third.handle);
  const LowLatencyDispatchResult fourth = comm->low_latency_dispatch(data.in, true);
  expect_error(ErrorCode::kStaleHandle, "dispatch #4 is sent, waiting for its receive",
               [&] { data.combine(*comm, fourth.handle); });
  comm->low_latency_receive(fourth.handle);
  expect_error(ErrorCode::kStaleHandle, "dispatch #4 is dispatched, waiting for its combine",
               [&] { comm->low_latency_receive(fourth.handle); });
  data.combine(*comm, fourth.handle, true);
  expect_error(ErrorCode::kStaleHandle, "dispatch #4 is combine sent",
               [&] { data.combine(*comm, fourth.handle); });
  comm->low_latency_receive(fourth.handle);
  expect_error(ErrorCode::kStaleHandle, "dispatch #4 is finished",
               [&] { comm->low_latency_receive(fourth.handle); });
  expect_error(ErrorCode::kInvalidArgument, "handle is empty",
               [&] { comm->low_latency_receive(LowLatencyHandle()); });
}

TEST(LowLatencyErrors, HandleOfAnotherCommunicator) {
  auto a = one_rank(ll_config());
  auto b = one_rank(ll_config());
  Inputs data(1);
  const LowLatencyDispatchResult res = a->low_latency_dispatch(data.in);
  b->low_latency_dispatch(data.in);
  expect_error(ErrorCode::kStaleHandle, "another communicator",
               [&] { data.combine(*b, res.handle); });
  expect_error(ErrorCode::kStaleHandle, "another communicator",
               [&] { b->low_latency_receive(res.handle); });
}

// An id outside [-1, E) on rank 1 fails the dispatch on both ranks, without hanging, whether it
// is found in the call itself or in the hook's receive.
TEST(LowLatencyErrors, ExpertOutOfRangeFailsEveryRank) {
  for (bool send_only : {false, true}) {
    for (int64_t bad : {int64_t{4}, int64_t{-2}}) {
      const auto bs = testing::shared_bootstraps(2, 5000);
      std::atomic<int> failed{0};
      testing::run_on_ranks(2, [&](int r) {
        auto comm = Communicator::create(bs[r], ll_config(), Backend::kHost);
        Inputs data(3);
        if (r == 1) data.topk[2 * kTopk + 1] = bad;
        const std::string want = r == 1 ? "topk_idx[2][1] = " + std::to_string(bad) : "peer rank 1";
        const std::string what = expect_error(ErrorCode::kInvalidExpert, want, [&] {
          const LowLatencyDispatchResult res = comm->low_latency_dispatch(data.in, send_only);
          if (send_only) comm->low_latency_receive(res.handle);
        });
        if (!what.empty()) failed.fetch_add(1);
        if (r == 1) EXPECT_NE(what.find("rank 1"), std::string::npos) << what;
        // The rejected call left both buffers usable: two more rounds go through.
        Inputs good(3);
        for (int round = 0; round < 2; ++round) {
          const LowLatencyDispatchResult res = comm->low_latency_dispatch(good.in, send_only);
          if (send_only) comm->low_latency_receive(res.handle);
          good.combine(*comm, res.handle);
        }
      });
      EXPECT_EQ(failed.load(), 2) << "send_only " << send_only << " id " << bad;
    }
  }
}

TEST(LowLatencyErrors, Fp8MustAgreeAcrossRanks) {
  const auto bs = testing::shared_bootstraps(2, 5000);
  testing::run_on_ranks(2, [&](int r) {
    auto comm = Communicator::create(bs[r], ll_config(), Backend::kHost);
    Inputs data(2);
    data.in.use_fp8 = r == 1;
    expect_error(ErrorCode::kInvalidArgument, "use_fp8 differs between rank 0 and rank 1",
                 [&] { comm->low_latency_dispatch(data.in); });
  });
}

TEST(LowLatencyErrors, RoundScaleMustAgreeAcrossRanks) {
  const auto bs = testing::shared_bootstraps(2, 5000);
  testing::run_on_ranks(2, [&](int r) {
    auto comm = Communicator::create(bs[r], ll_config(), Backend::kHost);
    Inputs data(2);
    data.in.use_fp8 = true;
    data.in.round_scale = r == 0;
    expect_error(ErrorCode::kInvalidArgument, "round_scale differs between rank 0 and rank 1",
                 [&] { comm->low_latency_dispatch(data.in); });
  });
}

TEST(LowLatencyErrors, ScaleOptionsNeedWhatTheyShape) {
  auto comm = one_rank(ll_config());
  Inputs data(2);
  data.in.round_scale = true;
  expect_error(ErrorCode::kInvalidArgument, "round_scale = true needs use_fp8 = true",
               [&] { comm->low_latency_dispatch(data.in); });
  data.in.use_fp8 = true;
  data.in.round_scale = false;
  data.in.use_ue8m0 = true;
  expect_error(ErrorCode::kInvalidArgument, "use_ue8m0 = true needs round_scale = true",
               [&] { comm->low_latency_dispatch(data.in); });
  data.in.round_scale = true;
  LowLatencyDispatchResult res;
  ASSERT_NO_THROW(res = comm->low_latency_dispatch(data.in));  // the buffer stayed free
  EXPECT_EQ(res.recv_scales, nullptr);
  EXPECT_NE(res.recv_scale_codes, nullptr);
}

TEST(LowLatencyErrors, MaskArguments) {
  auto off = one_rank(ll_config(0));
  int32_t mask[2] = {7, 7};
  expect_error(ErrorCode::kInvalidArgument, "low_latency_update_mask: Config.ll_max_tokens",
               [&] { off->low_latency_update_mask(0, true); });
  expect_error(ErrorCode::kInvalidArgument, "low_latency_query_mask: Config.ll_max_tokens",
               [&] { off->low_latency_query_mask(mask); });
  expect_error(ErrorCode::kInvalidArgument, "low_latency_clean_mask: Config.ll_max_tokens",
               [&] { off->low_latency_clean_mask(); });
  const auto bs = testing::shared_bootstraps(2, 5000);
  testing::run_on_ranks(2, [&](int r) {
    auto comm = Communicator::create(bs[r], ll_config(), Backend::kHost);
    for (int bad : {-1, 2}) {
      expect_error(ErrorCode::kInvalidArgument, "rank = " + std::to_string(bad),
                   [&] { comm->low_latency_update_mask(bad, true); });
    }
    expect_error(ErrorCode::kInvalidArgument, "mask_out is null",
                 [&] { comm->low_latency_query_mask(nullptr); });
    int32_t got[2] = {7, 7};
    comm->low_latency_update_mask(1 - r, true);
    comm->low_latency_query_mask(got);
    EXPECT_EQ(got[r], 0);
    EXPECT_EQ(got[1 - r], 1);
    comm->low_latency_update_mask(1 - r, false);
    comm->low_latency_update_mask(r, true);
    comm->low_latency_clean_mask();
    comm->low_latency_query_mask(got);
    EXPECT_EQ(got[0] + got[1], 0);
  });
}

TEST(LowLatencyErrors, ConfigValidation) {
  for (int bad : {-1, 1025}) {
    Config c = ll_config(bad);
    const std::string what = expect_error(ErrorCode::kInvalidArgument,
                                          "Config.ll_max_tokens_per_rank = " + std::to_string(bad),
                                          [&] { c.validate(2); });
    EXPECT_NE(what.find("1024"), std::string::npos) << what;
  }
  EXPECT_NO_THROW(ll_config(1024).validate(2));
  Config c = ll_config();
  c.hidden = 64;
  expect_error(ErrorCode::kInvalidArgument, "Config.hidden = 64", [&] { c.validate(2); });
  c.ll_max_tokens_per_rank = 0;  // the multiple of 128 matters only with the mode on
  EXPECT_NO_THROW(c.validate(2));
  // Communicator::create runs the same checks.
  c.ll_max_tokens_per_rank = 2000;
  expect_error(ErrorCode::kInvalidArgument, "Config.ll_max_tokens_per_rank = 2000",
               [&] { one_rank(c); });
  Config shrink = ll_config(0);
  shrink.ll_enable_shrink = true;
  expect_error(ErrorCode::kInvalidArgument, "Config.ll_enable_shrink = 1",
               [&] { shrink.validate(2); });
  shrink.ll_max_tokens_per_rank = kMaxTokens;
  EXPECT_NO_THROW(shrink.validate(2));
}

}  // namespace
}  // namespace epcomm
