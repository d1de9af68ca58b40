// The elastic low-latency mode on the CUDA backend: with Config::ll_enable_shrink a rank that
// stops taking part is masked by the others' timed-out waits, and they go on with outputs equal
// to the host reference with that rank cut off; the wait-cost stats name the rank that was late.
// (Masks set by hand are part of the conformance suite: LowLatencyShape::masked_ranks.)
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "epcomm/epcomm.hpp"
#include "harness.hpp"
#include "ll_harness.hpp"

namespace epcomm {
namespace {

using testing::Buffer;
using testing::LowLatencyShape;
using testing::Routing;

class CudaLowLatencyElastic : public ::testing::Test {
 protected:
  void SetUp() override {
    if (testing::cuda_device_count() == 0) GTEST_SKIP() << "no GPU present: CUDA case skipped";
  }
};

// One pair on this rank without collective barriers (a peer is gone): inputs of `seed`,
// dispatch, combine, synchronize. Returns the dispatch's views (for poisoning the buffer).
LowLatencyDispatchResult run_pair(Communicator& comm, testing::Memory& memory,
                                  const LowLatencyShape& shape, uint64_t seed, int rank, bool empty,
                                  testing::LowLatencyRankOutputs* outputs) {
  const testing::LowLatencyRankData data =
      testing::make_ll_rank_data(shape, Routing::kUniform, seed, rank);
  const std::vector<uint16_t> y = testing::make_ll_expert_output(shape, seed, rank);
  const int T = empty ? 0 : data.num_tokens, H = shape.hidden;
  Buffer x(memory, std::max<size_t>(data.x.size() * 2, 16));
  Buffer topk(memory, std::max<size_t>(data.topk_idx.size(), 16));
  Buffer weights(memory, std::max<size_t>(data.topk_weights.size() * 4, 16));
  Buffer y_buf(memory, y.size() * 2);
  const size_t out_bytes = static_cast<size_t>(T + 2) * H * 2;  // 2 guard rows
  Buffer out(memory, out_bytes);
  if (T > 0) {
    memory.upload(x.get(), data.x.data(), data.x.size() * 2);
    memory.upload(topk.get(), data.topk_idx.data(), data.topk_idx.size());
    memory.upload(weights.get(), data.topk_weights.data(), data.topk_weights.size() * 4);
  }
  memory.upload(y_buf.get(), y.data(), y.size() * 2);
  memory.fill(out.get(), testing::kLlPoison, out_bytes);
  LowLatencyDispatchInputs in;
  in.x = x.get();
  in.topk_idx = topk.get();
  in.num_tokens = T;
  in.num_topk = shape.num_topk;
  in.use_fp8 = shape.use_fp8;
  const LowLatencyDispatchResult res = comm.low_latency_dispatch(in);
  comm.low_latency_combine(y_buf.get(), topk.get(), weights.as<float>(), res.handle, out.get());
  comm.synchronize();
  if (outputs != nullptr) {
    *outputs = testing::collect_ll_outputs(memory, shape, res, out.get(), out_bytes, T, rank);
  }
  return res;
}

// Rank 3 of 4 takes part in one round and then stops. The others' next dispatch times out on it
// and masks it (no error), the mask shows in low_latency_query_mask, and a round on fresh data
// then matches the host reference with rank 3 cut off, byte for byte, with outputs poisoned.
TEST_F(CudaLowLatencyElastic, ShrinkMasksAStoppedRankAndTheOthersMatchTheReference) {
  for (bool fp8 : {false, true}) {
    SCOPED_TRACE(fp8 ? "fp8" : "bf16");
    constexpr int R = 4, kGone = 3;
    LowLatencyShape shape;
    shape.num_ranks = R;
    shape.max_tokens = 8;
    shape.num_tokens = 8;
    shape.hidden = 256;
    shape.num_experts = 8;
    shape.num_topk = 3;
    shape.use_fp8 = fp8;
    Config cfg = testing::ll_config_for(shape);
    cfg.ll_enable_shrink = true;
    cfg.wait_timeout_ms = 400;
    const uint64_t seed1 = 900 + fp8, seed2 = 950 + fp8;
    LowLatencyShape cut = shape;
    cut.masked_ranks = 1u << kGone;
    const auto want1 =
        testing::run_ll_cluster(Backend::kHost, cfg, shape, Routing::kUniform, seed1, {}, 1);
    const auto want2 =
        testing::run_ll_cluster(Backend::kHost, cfg, cut, Routing::kUniform, seed2, {}, 1);
    const auto survivors = testing::shared_bootstraps(R - 1, 60000);
    testing::on_cuda_ranks(
        R, cfg, [&](int r, Communicator& comm, testing::Memory& memory, Bootstrap& bootstrap) {
          const auto got1 =
              testing::run_ll_round(comm, bootstrap, memory, shape, Routing::kUniform, seed1, {});
          ASSERT_EQ(testing::first_difference(want1[0][0][r], got1[0]), "") << "rank " << r;
          if (r == kGone) return;  // stops taking part (its teardown meets the others')
          Bootstrap& mine = *survivors[r];
          // The first pair waits for rank 3, times out and masks it; the second does not wait.
          LowLatencyDispatchResult views[2];
          for (int i = 0; i < 2; ++i) {
            const LowLatencyDispatchResult res =
                run_pair(comm, memory, shape, seed2, r, true, nullptr);
            views[res.handle.buffer()] = res;
          }
          Buffer mask(memory, R * sizeof(int32_t));
          comm.low_latency_query_mask(mask.as<int32_t>());
          comm.synchronize();
          std::vector<int32_t> host_mask(R);
          memory.download(host_mask.data(), mask.get(), R * sizeof(int32_t));
          EXPECT_EQ(host_mask, (std::vector<int32_t>{0, 0, 0, 1})) << "rank " << r;
          mine.barrier();  // every survivor is done with both buffers before any is poisoned
          for (const LowLatencyDispatchResult& v : views) {
            testing::poison_ll_outputs(memory, shape, v);
          }
          mine.barrier();  // no survivor sends into a buffer before its owner poisoned it
          testing::LowLatencyRankOutputs got2;
          run_pair(comm, memory, shape, seed2, r, false, &got2);
          EXPECT_EQ(testing::first_difference(want2[0][0][r], got2), "") << "rank " << r;
          mine.barrier();  // no survivor tears down while another may still reach its memory
        });
  }
}

// Rank 2 of 3 starts its dispatch, then its combine, 300 ms after the others: their
// wait_cost_stats hold at least half of that for rank 2, and more than for any other rank.
TEST_F(CudaLowLatencyElastic, WaitCostStatsNameTheLateRank) {
  constexpr int R = 3, kLate = 2;
  constexpr int64_t kDelayNs = 300'000'000;
  LowLatencyShape shape;
  shape.num_ranks = R;
  shape.num_experts = 6;
  const Config cfg = testing::ll_config_for(shape);
  testing::on_cuda_ranks(
      R, cfg, [&](int r, Communicator& comm, testing::Memory& memory, Bootstrap& bootstrap) {
        const testing::LowLatencyRankData data =
            testing::make_ll_rank_data(shape, Routing::kUniform, 5, r);
        Buffer x(memory, data.x.size() * 2), topk(memory, data.topk_idx.size());
        Buffer weights(memory, data.topk_weights.size() * 4);
        Buffer y(memory, testing::make_ll_expert_output(shape, 5, r).size() * 2);
        Buffer out(memory, static_cast<size_t>(data.num_tokens) * shape.hidden * 2);
        Buffer stats(memory, 2 * R * sizeof(int64_t));
        memory.upload(x.get(), data.x.data(), data.x.size() * 2);
        memory.upload(topk.get(), data.topk_idx.data(), data.topk_idx.size());
        memory.upload(weights.get(), data.topk_weights.data(), data.topk_weights.size() * 4);
        memory.fill(y.get(), 0, y.bytes());
        memory.fill(stats.get(), 0, stats.bytes());
        LowLatencyDispatchInputs in;
        in.x = x.get();
        in.topk_idx = topk.get();
        in.num_tokens = data.num_tokens;
        in.num_topk = shape.num_topk;
        in.wait_cost_stats = stats.as<int64_t>();
        LowLatencyCombineOptions options;
        options.wait_cost_stats = stats.as<int64_t>() + R;
        bootstrap.barrier();
        auto late = [&] {
          if (r == kLate) std::this_thread::sleep_for(std::chrono::nanoseconds(kDelayNs));
        };
        late();
        const LowLatencyDispatchResult res = comm.low_latency_dispatch(in);
        comm.synchronize();
        late();
        comm.low_latency_combine(y.get(), topk.get(), weights.as<float>(), res.handle, out.get(),
                                 false, options);
        comm.synchronize();
        std::vector<int64_t> got(2 * R);
        memory.download(got.data(), stats.get(), got.size() * sizeof(int64_t));
        bootstrap.barrier();
        if (r == kLate) return;
        for (int phase = 0; phase < 2; ++phase) {
          const int64_t* row = got.data() + phase * R;
          const char* name = phase == 0 ? "dispatch" : "combine";
          EXPECT_GE(row[kLate], kDelayNs / 2) << "rank " << r << " " << name;
          for (int s = 0; s < R; ++s) {
            EXPECT_GE(row[s], 0) << "rank " << r << " " << name << " source " << s;
            if (s != kLate) EXPECT_GT(row[kLate], row[s]) << "rank " << r << " " << name;
          }
        }
      });
}

}  // namespace
}  // namespace epcomm
