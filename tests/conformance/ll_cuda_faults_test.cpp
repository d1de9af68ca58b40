// Low-latency faults on the CUDA backend: a peer that never joins ends in a bounded, named
// timeout at synchronize (nothing waits on the host before it), a bad expert id fails its own
// rank with a named error without leaving the peers waiting, and in-process ranks whose waiting
// grids would not fit on their GPU together are refused at creation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <functional>
#include <thread>

#include "epcomm/epcomm.hpp"
#include "expect_error.hpp"
#include "harness.hpp"

namespace epcomm {
namespace {

using testing::Buffer;
using testing::expect_error;

constexpr int kHidden = 128, kTopk = 2;

class CudaLowLatencyFaults : public ::testing::Test {
 protected:
  void SetUp() override {
    if (testing::cuda_device_count() == 0) GTEST_SKIP() << "no GPU present: CUDA case skipped";
  }
};

Config ll_config(int num_ranks, int timeout_ms) {
  Config c;
  c.num_experts = 2 * num_ranks;
  c.hidden = kHidden;
  c.max_tokens_per_rank = 1;
  c.max_topk = kTopk;
  c.ll_max_tokens_per_rank = 4;
  c.wait_timeout_ms = timeout_ms;
  return c;
}

// Device inputs of T = ids.size() / 2 tokens, with y and out sized for the config.
struct Inputs {
  Inputs(testing::Memory& m, const Config& cfg, const std::vector<int64_t>& ids)
      : num_tokens(static_cast<int>(ids.size() / kTopk)),
        x(m, ids.size() / kTopk * kHidden * 2),
        topk(m, ids.size() * 8),
        weights(m, ids.size() * 4),
        y(m, static_cast<size_t>(cfg.num_experts) * cfg.ll_max_tokens_per_rank * kHidden * 2),
        out(m, ids.size() / kTopk * kHidden * 2) {
    const std::vector<uint16_t> host_x(ids.size() / kTopk * kHidden, 0x3f80);  // 1.0
    const std::vector<float> host_w(ids.size(), 0.5f);
    m.upload(x.get(), host_x.data(), host_x.size() * 2);
    m.upload(topk.get(), ids.data(), ids.size() * 8);
    m.upload(weights.get(), host_w.data(), host_w.size() * 4);
    m.fill(y.get(), 0, y.bytes());
  }
  LowLatencyDispatchInputs get() const {
    LowLatencyDispatchInputs in;
    in.x = x.get();
    in.topk_idx = topk.get();
    in.num_tokens = num_tokens;
    in.num_topk = kTopk;
    return in;
  }
  void combine(Communicator& comm, const LowLatencyHandle& h, bool send_only) {
    comm.low_latency_combine(y.get(), topk.get(), weights.as<float>(), h, out.get(), send_only);
    if (send_only) comm.low_latency_receive(h);
  }
  int num_tokens;
  Buffer x, topk, weights, y, out;
};

// Two tokens of every rank reach the first and the last rank's experts.
std::vector<int64_t> ids_for(const Config& cfg) {
  const int64_t last = cfg.num_experts - 1;
  return {0, last, 1, last - 1};
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Runs fn(r, comm, memory, bootstrap) on R in-process ranks (harness.hpp).
constexpr auto& on_ranks = testing::on_cuda_ranks;

// The last rank never dispatches: every other rank's synchronize reports it, within about the
// configured wait, and the communicator then refuses work.
TEST_F(CudaLowLatencyFaults, MissingPeerInDispatchTimesOutNamingPhaseAndPeer) {
  for (int R : {2, 3}) {
    for (bool hook : {false, true}) {
      const Config cfg = ll_config(R, 300);
      const std::string peer = "peer rank " + std::to_string(R - 1);
      on_ranks(R, cfg, [&](int r, Communicator& comm, testing::Memory& memory, Bootstrap&) {
        if (r == R - 1) return;  // never dispatches (its teardown still meets the others')
        Inputs in(memory, cfg, ids_for(cfg));
        const auto start = std::chrono::steady_clock::now();
        LowLatencyDispatchResult res;
        ASSERT_NO_THROW(res = comm.low_latency_dispatch(in.get(), hook)) << "nothing may wait";
        if (hook) ASSERT_NO_THROW(comm.low_latency_receive(res.handle));
        const std::string what =
            expect_error(ErrorCode::kTimeout, peer, [&] { comm.synchronize(); });
        EXPECT_NE(lower(what).find("dispatch"), std::string::npos) << "names no phase: " << what;
        EXPECT_LT(seconds_since(start), 5.0) << "the timeout is 0.3 s";
        expect_error(ErrorCode::kBroken, "unusable", [&] { comm.low_latency_dispatch(in.get()); });
      });
    }
  }
}

// Without a synchronize (the Python calls make none): once the dispatch's receive has timed out,
// the rank's next low-latency call reports the timeout itself, and the one after that finds the
// communicator broken. Rank 1 never dispatches.
TEST_F(CudaLowLatencyFaults, TimeoutSurfacesAtTheNextCallWithoutSynchronize) {
  for (bool hook : {false, true}) {
    const Config cfg = ll_config(2, 300);
    on_ranks(2, cfg, [&](int r, Communicator& comm, testing::Memory& memory, Bootstrap&) {
      if (r == 1) return;  // never dispatches (its teardown still meets rank 0's)
      Inputs in(memory, cfg, ids_for(cfg));
      LowLatencyDispatchResult res;
      ASSERT_NO_THROW(res = comm.low_latency_dispatch(in.get(), hook)) << "nothing may wait";
      if (hook) ASSERT_NO_THROW(comm.low_latency_receive(res.handle)) << "nothing may wait";
      // The wait gives up after 0.3 s. Queries of the stream (never waiting) stand in for the
      // other CUDA calls of a real caller: in the first H100 run of this test, launches followed
      // by no CUDA call had not run 2 s later.
      const auto start = std::chrono::steady_clock::now();
      while (!testing::cuda_stream_idle(comm.stream()) && seconds_since(start) < 5.0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      EXPECT_LT(seconds_since(start), 5.0) << "the dispatch's kernels never finished";
      const std::string what = expect_error(ErrorCode::kTimeout, "peer rank 1",
                                            [&] { in.combine(comm, res.handle, hook); });
      EXPECT_NE(lower(what).find("dispatch"), std::string::npos) << "names no phase: " << what;
      expect_error(ErrorCode::kBroken, "unusable", [&] { comm.low_latency_dispatch(in.get()); });
    });
  }
}

// The last rank dispatches but never combines: the others' combine times out naming it.
TEST_F(CudaLowLatencyFaults, MissingPeerInCombineTimesOutNamingPhaseAndPeer) {
  for (bool hook : {false, true}) {
    const int R = 2;
    const Config cfg = ll_config(R, 300);
    on_ranks(R, cfg, [&](int r, Communicator& comm, testing::Memory& memory, Bootstrap& bs) {
      Inputs in(memory, cfg, ids_for(cfg));
      const LowLatencyDispatchResult res = comm.low_latency_dispatch(in.get());
      comm.synchronize();
      if (r == R - 1) {
        bs.barrier();  // stay alive until the others have failed
        return;
      }
      const auto start = std::chrono::steady_clock::now();
      ASSERT_NO_THROW(in.combine(comm, res.handle, hook)) << "nothing may wait on the host";
      const std::string what =
          expect_error(ErrorCode::kTimeout, "peer rank 1", [&] { comm.synchronize(); });
      EXPECT_NE(lower(what).find("combine"), std::string::npos) << "names no phase: " << what;
      EXPECT_LT(seconds_since(start), 5.0) << "the timeout is 0.3 s";
      bs.barrier();
    });
  }
}

// Rank 1 names expert 999: its synchronize reports the token, slot and value; rank 0 finishes
// (cleanly or with kInvalidExpert) well before its wait would time out.
TEST_F(CudaLowLatencyFaults, BadExpertIdFailsItsRankWithoutHangingPeers) {
  for (bool hook : {false, true}) {
    const Config cfg = ll_config(2, 3000);
    on_ranks(2, cfg, [&](int r, Communicator& comm, testing::Memory& memory, Bootstrap& bs) {
      std::vector<int64_t> ids = ids_for(cfg);
      if (r == 1) ids[3] = 999;  // token 1, slot 1
      Inputs in(memory, cfg, ids);
      bs.barrier();
      const auto start = std::chrono::steady_clock::now();
      LowLatencyDispatchResult res;
      ASSERT_NO_THROW(res = comm.low_latency_dispatch(in.get(), hook)) << "nothing may wait";
      if (hook) ASSERT_NO_THROW(comm.low_latency_receive(res.handle));
      if (r == 1) {
        expect_error(ErrorCode::kInvalidExpert, "topk_idx[1][1] = 999",
                     [&] { comm.synchronize(); });
      } else {
        try {
          comm.synchronize();
        } catch (const Error& e) {
          EXPECT_EQ(e.code(), ErrorCode::kInvalidExpert) << e.what();
        }
      }
      EXPECT_LT(seconds_since(start), 2.0) << "rank " << r << " waited for the faulty rank";
      bs.barrier();
    });
  }
}

// 8 in-process ranks on GPU 0: an LL kernel takes a whole SM per block, and all 8 ranks' grids
// must fit on the GPU at once (docs/design.md section 20). With S SMs, S / 8 SMs per rank fit;
// one more is refused naming the numbers, on every rank.
TEST_F(CudaLowLatencyFaults, WaitingGridsThatDoNotFitTogetherAreRefused) {
  const int R = 8, device_sms = testing::cuda_sm_count(0);
  ASSERT_GT(device_sms, 0);
  for (int sms : {device_sms / R, device_sms / R + 1}) {
    Config cfg = ll_config(R, 3000);
    cfg.dispatch_sms = sms;
    cfg.combine_sms = 1;
    const auto bs = testing::shared_bootstraps(R, 60000);
    testing::run_on_ranks(R, [&](int r) {
      if (sms == device_sms / R) {
        // Every rank on GPU 0: the rule counts the ranks sharing one GPU.
        EXPECT_NO_THROW(Communicator::create(bs[r], cfg, Backend::kCuda, 0)) << "fits: " << sms;
        return;
      }
      const std::string needed = std::to_string(R * sms) + " resident blocks";
      expect_error(ErrorCode::kUnsupported, needed,
                   [&] { Communicator::create(bs[r], cfg, Backend::kCuda, 0); });
    });
  }
}

}  // namespace
}  // namespace epcomm
