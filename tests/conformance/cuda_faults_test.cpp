// CUDA backend faults: a missing peer ends in a named timeout, bad ids and overflow fail every
// rank without writing, and the communicator says when it can no longer be used.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>

#include "epcomm/epcomm.hpp"
#include "expect_error.hpp"
#include "harness.hpp"
#include "misuse_scenarios.hpp"

namespace epcomm {
namespace {

using testing::Buffer;
using testing::expect_error;

class CudaFaults : public ::testing::Test {
 protected:
  void SetUp() override {
    if (testing::cuda_device_count() == 0) GTEST_SKIP() << "no GPU present: CUDA case skipped";
  }
};

Config small_config(int timeout_ms = 5000) {
  Config c;
  c.num_experts = 8;
  c.hidden = 64;
  c.max_tokens_per_rank = 8;
  c.max_topk = 2;
  c.dispatch_sms = 2;
  c.combine_sms = 2;
  c.wait_timeout_ms = timeout_ms;
  return c;
}

std::vector<std::shared_ptr<Bootstrap>> bootstraps(int n) {
  return testing::shared_bootstraps(n, 60000);
}

// Device inputs of T tokens with the given top-k ids (2 per token).
struct Inputs {
  Inputs(testing::Memory& m, const std::vector<int64_t>& ids, int hidden)
      : num_tokens(static_cast<int>(ids.size() / 2)),
        x(m, std::max<size_t>(ids.size() / 2 * hidden * 2, 16)),
        topk(m, std::max<size_t>(ids.size() * 8, 16)) {
    std::vector<uint16_t> host_x(ids.size() / 2 * hidden, 0x3f80);
    if (!host_x.empty()) m.upload(x.get(), host_x.data(), host_x.size() * 2);
    if (!ids.empty()) m.upload(topk.get(), ids.data(), ids.size() * 8);
  }
  DispatchInputs get() const {
    DispatchInputs in;
    in.x = x.get();
    in.topk_idx = topk.get();
    in.num_tokens = num_tokens;
    in.num_topk = 2;
    return in;
  }
  int num_tokens;
  Buffer x, topk;
};

TEST_F(CudaFaults, MissingPeerTimesOutNamingIt) {
  auto bs = bootstraps(2);
  const Config cfg = small_config(500);
  testing::run_on_ranks(2, [&](int r) {
    auto memory = testing::make_memory(Backend::kCuda, testing::gpu_of_rank(r));
    auto comm = Communicator::create(bs[r], cfg, Backend::kCuda, testing::gpu_of_rank(r));
    if (r == 1) return;  // rank 1 never dispatches (its teardown still meets rank 0's)
    Inputs in(*memory, {0, 4, 1, 5}, cfg.hidden);
    const auto start = std::chrono::steady_clock::now();
    const std::string what =
        expect_error(ErrorCode::kTimeout, "peer rank 1", [&] { comm->dispatch(in.get()); });
    EXPECT_NE(what.find("count exchange"), std::string::npos) << what;
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_LT(seconds, 5.0) << "the timeout is 0.5 s";
    // A timed-out communicator accepts no more work.
    expect_error(ErrorCode::kBroken, "unusable", [&] { comm->dispatch(in.get()); });
  });
}

TEST_F(CudaFaults, BadExpertIdFailsEveryRankAndIsRecoverable) {
  auto bs = bootstraps(2);
  const Config cfg = small_config();
  std::atomic<int> errors{0};
  testing::run_on_ranks(2, [&](int r) {
    auto memory = testing::make_memory(Backend::kCuda, testing::gpu_of_rank(r));
    auto comm = Communicator::create(bs[r], cfg, Backend::kCuda, testing::gpu_of_rank(r));
    Inputs bad(*memory, {0, 4, 1, r == 1 ? 999 : 5}, cfg.hidden);
    const std::string want = r == 1 ? "topk_idx[1][1] = 999" : "peer rank 1";
    if (!expect_error(ErrorCode::kInvalidExpert, want, [&] {
           comm->dispatch(bad.get());
         }).empty()) {
      errors.fetch_add(1);
    }
    Inputs good(*memory, {0, 4, 1, 5}, cfg.hidden);
    const DispatchResult res = comm->dispatch(good.get());
    EXPECT_EQ(res.num_recv, 4);  // both tokens of both ranks reach both ranks
    comm->synchronize();

    int per_rank[2], per_expert[8];
    Buffer d_rank(*memory, 8), d_expert(*memory, 32), d_in(*memory, 16);
    try {
      comm->get_dispatch_layout(bad.topk.get(), 2, 2,
                                {d_rank.as<int>(), d_expert.as<int>(), d_in.as<bool>()});
      EXPECT_EQ(r, 0) << "layout accepted id 999";
      memory->download(per_rank, d_rank.get(), 8);
      memory->download(per_expert, d_expert.get(), 32);
      EXPECT_EQ(per_rank[0], 2);
      EXPECT_EQ(per_rank[1], 2);
    } catch (const Error& e) {
      EXPECT_EQ(r, 1);
      EXPECT_EQ(e.code(), ErrorCode::kInvalidExpert);
      EXPECT_NE(std::string(e.what()).find("999"), std::string::npos) << e.what();
    }
  });
  EXPECT_EQ(errors.load(), 2);
}

TEST_F(CudaFaults, CapacityExceededFailsEveryRankWithoutWriting) {
  auto bs = bootstraps(2);
  Config cfg = small_config();
  cfg.max_recv_rows = 3;
  std::atomic<int> errors{0};
  testing::run_on_ranks(2, [&](int r) {
    auto memory = testing::make_memory(Backend::kCuda, testing::gpu_of_rank(r));
    auto comm = Communicator::create(bs[r], cfg, Backend::kCuda, testing::gpu_of_rank(r));
    memory->fill(comm->combine_input(), 0xA5, 3 * cfg.hidden * 2);
    Inputs in(*memory, {0, -1, 1, -1, 2, 3, 3, -1}, cfg.hidden);  // 4 tokens, all to rank 0
    if (!expect_error(ErrorCode::kCapacityExceeded, "rank 0 would receive 8 rows", [&] {
           comm->dispatch(in.get());
         }).empty()) {
      errors.fetch_add(1);
    }
    comm->synchronize();
    std::vector<unsigned char> pool(3 * cfg.hidden * 2);
    memory->download(pool.data(), comm->combine_input(), pool.size());
    for (unsigned char b : pool) ASSERT_EQ(b, 0xA5) << "rank " << r << " pool was written";
  });
  EXPECT_EQ(errors.load(), 2);
}

// Expert-major rows are pairs plus padding: the verdict counts both, every rank fails alike,
// nothing is written, and the next dispatch that fits goes through.
TEST_F(CudaFaults, ExpertMajorCapacityExceededFailsEveryRankWithoutWriting) {
  auto bs = bootstraps(2);
  Config cfg = small_config();
  cfg.max_recv_rows = 12;
  std::atomic<int> errors{0};
  testing::run_on_ranks(2, [&](int r) {
    auto memory = testing::make_memory(Backend::kCuda, testing::gpu_of_rank(r));
    auto comm = Communicator::create(bs[r], cfg, Backend::kCuda, testing::gpu_of_rank(r));
    memory->fill(comm->combine_input(), 0xA5, 12 * cfg.hidden * 2);
    Inputs in(*memory, {0, 1, 2, 3, 0, 2, 1, 3}, cfg.hidden);  // 8 pairs, all to rank 0
    DispatchOptions em;
    em.layout = RecvLayout::kExpertMajor;
    em.expert_alignment = 1;
    if (!expect_error(ErrorCode::kCapacityExceeded, "rank 0 would receive 16 rows", [&] {
           comm->dispatch(in.get(), em);
         }).empty()) {
      errors.fetch_add(1);
    }
    comm->synchronize();
    std::vector<unsigned char> pool(12 * cfg.hidden * 2);
    memory->download(pool.data(), comm->combine_input(), pool.size());
    for (unsigned char b : pool) ASSERT_EQ(b, 0xA5) << "rank " << r << " pool was written";
    em.expert_alignment = 3;  // each of rank 0's 4 groups: a pair from each rank, 1 padding row
    Inputs fits(*memory, {0, 1, 2, 3}, cfg.hidden);
    const DispatchResult res = comm->dispatch(fits.get(), em);
    EXPECT_EQ(res.num_recv, r == 0 ? 12 : 0);
    comm->synchronize();
  });
  EXPECT_EQ(errors.load(), 2);
}

TEST_F(CudaFaults, CachedDispatchOfDifferentHandlesFailsEveryRank) {
  auto bs = bootstraps(2);
  const Config cfg = small_config();
  std::atomic<int> errors{0};
  testing::run_on_ranks(2, [&](int r) {
    auto memory = testing::make_memory(Backend::kCuda, testing::gpu_of_rank(r));
    auto comm = Communicator::create(bs[r], cfg, Backend::kCuda, testing::gpu_of_rank(r));
    Inputs in(*memory, {0, 4, 1, 5}, cfg.hidden);
    const DispatchResult first = comm->dispatch(in.get());
    const DispatchResult second = comm->dispatch(in.get());
    // Rank 0 replays dispatch #1, rank 1 dispatch #2: every rank must refuse.
    const DispatchHandle& replay = r == 0 ? first.handle : second.handle;
    if (!expect_error(ErrorCode::kStaleHandle, "peer rank " + std::to_string(1 - r), [&] {
           comm->dispatch_cached(replay, in.x.get(), nullptr);
         }).empty()) {
      errors.fetch_add(1);
    }
  });
  EXPECT_EQ(errors.load(), 2);
}

TEST_F(CudaFaults, RingNeedsEqualSmKnobs) {
  auto bs = bootstraps(1);
  Config cfg = small_config();
  cfg.algorithm = Algorithm::kRing;
  cfg.combine_sms = cfg.dispatch_sms + 2;
  expect_error(ErrorCode::kInvalidArgument, "Config.combine_sms = 4",
               [&] { Communicator::create(bs[0], cfg, Backend::kCuda, testing::gpu_of_rank(0)); });
}

TEST_F(CudaFaults, SmCountsBeyondTheDeviceAreRejected) {
  auto bs = bootstraps(1);
  Config cfg = small_config();
  cfg.dispatch_sms = 100000;
  expect_error(ErrorCode::kInvalidArgument, "Config.dispatch_sms = 100000",
               [&] { Communicator::create(bs[0], cfg, Backend::kCuda, testing::gpu_of_rank(0)); });
}

// NVSHMEM has one PE per process: in-process ranks asking for it are refused by name, before
// NVSHMEM is loaded (so this holds with or without NVSHMEM in the build).
TEST_F(CudaFaults, NvshmemTransportNeedsOneRankPerProcess) {
  auto bs = bootstraps(1);
  Config cfg = small_config();
  cfg.transport = Transport::kNvshmem;
  expect_error(ErrorCode::kInvalidArgument, "Config.transport = nvshmem: the bootstrap's ranks",
               [&] { Communicator::create(bs[0], cfg, Backend::kCuda, testing::gpu_of_rank(0)); });
}

// The expert-major layout is built in the host reference only: the CUDA backend refuses it by
// name before anything is issued, and the communicator goes on working.
// The ring baseline delivers token-major rows only: expert-major is refused before anything is
// issued, and the communicator keeps working.
TEST_F(CudaFaults, ExpertMajorLayoutOnTheRingIsRefusedByName) {
  Config cfg = small_config();
  cfg.algorithm = Algorithm::kRing;
  testing::on_cuda_ranks(2, cfg, [&](int, Communicator& comm, testing::Memory& memory, Bootstrap&) {
    Inputs in(memory, {0, 4, 1, 5}, cfg.hidden);
    DispatchOptions em;
    em.layout = RecvLayout::kExpertMajor;
    expect_error(ErrorCode::kUnsupported,
                 "layout = expert_major is built for Config.algorithm = flat",
                 [&] { comm.dispatch(in.get(), em); });
    const DispatchResult res = comm.dispatch(in.get());
    EXPECT_EQ(res.num_recv, 4);  // both tokens of both ranks reach every rank
    comm.synchronize();
  });
}

// One rank expert-major, the other token-major: the count exchange names the peer's layout on
// both ranks (nobody waits for pair counts that are never posted), and both keep working.
TEST_F(CudaFaults, LayoutsThatDifferFailEveryRank) {
  const Config cfg = small_config();
  std::atomic<int> errors{0};
  testing::on_cuda_ranks(
      2, cfg, [&](int r, Communicator& comm, testing::Memory& memory, Bootstrap&) {
        Inputs in(memory, {0, 4, 1, 5}, cfg.hidden);
        DispatchOptions options;
        options.layout = r == 0 ? RecvLayout::kExpertMajor : RecvLayout::kTokenMajor;
        const std::string want =
            std::string("peer rank ") + (r == 0 ? "1 dispatched with layout token_major"
                                                : "0 dispatched with layout expert_major");
        if (!expect_error(ErrorCode::kInvalidArgument, want, [&] {
               comm.dispatch(in.get(), options);
             }).empty()) {
          errors.fetch_add(1);
        }
        DispatchOptions em;
        em.layout = RecvLayout::kExpertMajor;
        EXPECT_EQ(comm.dispatch(in.get(), em).num_recv, 4);  // 2 tokens x 2 experts of each rank
        comm.synchronize();
      });
  EXPECT_EQ(errors.load(), 2);
}

// DESIGN section 13: ranks agree on the Config before anything is allocated.
TEST_F(CudaFaults, ConfigsThatDifferFailEveryRank) {
  auto bs = bootstraps(2);
  std::atomic<int> errors{0};
  testing::run_on_ranks(2, [&](int r) {
    Config cfg = small_config();
    cfg.hidden = r == 0 ? 128 : 1024;
    if (!expect_error(ErrorCode::kInvalidArgument, "rank 0 has 128, rank 1 has 1024", [&] {
           Communicator::create(bs[r], cfg, Backend::kCuda, testing::gpu_of_rank(r));
         }).empty()) {
      errors.fetch_add(1);
    }
  });
  EXPECT_EQ(errors.load(), 2);
}

// A misaligned pointer never reaches a kernel (where it would kill the context of every rank
// in the process): refused on the host, and the communicator goes on working.
TEST_F(CudaFaults, MisalignedAndOverlappingPointersAreRefusedBeforeAnyLaunch) {
  const Config cfg = small_config();
  testing::on_cuda_ranks(
      2, cfg, [&](int r, Communicator& comm, testing::Memory& memory, Bootstrap&) {
        Inputs in(memory, {0, 4, 1, 5}, cfg.hidden);
        DispatchInputs bad = in.get();
        bad.x = static_cast<const char*>(bad.x) + 2;
        expect_error(ErrorCode::kInvalidArgument, "is not 16-byte aligned",
                     [&] { comm.dispatch(bad); });
        bad = in.get();
        bad.x = comm.combine_input();
        expect_error(ErrorCode::kInvalidArgument, "overlaps the communicator's memory",
                     [&] { comm.dispatch(bad); });
        const DispatchResult res = comm.dispatch(in.get());
        EXPECT_EQ(res.num_recv, 4);
        Buffer out(memory, 2 * cfg.hidden * 2);
        comm.combine(res.recv_x, res.handle, out.get());  // recv_x is the pool: zero-copy
        comm.synchronize();
        std::vector<uint16_t> host(2 * cfg.hidden);
        memory.download(host.data(), out.get(), host.size() * 2);
        for (uint16_t v : host) ASSERT_EQ(v, 0x4000) << "1.0 from each of 2 ranks";
      });
}

TEST_F(CudaFaults, ReplayOfARejectedDispatchIsRejectedWithoutWriting) {
  const Config cfg = small_config();
  std::atomic<int> errors{0};
  testing::on_cuda_ranks(
      2, cfg, [&](int r, Communicator& comm, testing::Memory& memory, Bootstrap&) {
        Inputs bad(memory, {0, 4, 1, r == 1 ? 999 : 5}, cfg.hidden);
        DispatchOptions worst_case;
        worst_case.wait_num_recv = false;  // hands out the handle of the rejected dispatch
        const DispatchResult res = comm.dispatch(bad.get(), worst_case);
        expect_error(ErrorCode::kInvalidExpert, "", [&] { comm.synchronize(); });
        const size_t pool_bytes = static_cast<size_t>(comm.recv_capacity()) * cfg.hidden * 2;
        Buffer recv_x(memory, pool_bytes);
        memory.fill(recv_x.get(), 0xA5, pool_bytes);
        DispatchOptions cached = worst_case;
        cached.outputs.recv_x = recv_x.get();
        comm.dispatch_cached(res.handle, bad.x.get(), nullptr, cached);
        if (!expect_error(ErrorCode::kStaleHandle, "was rejected", [&] {
               comm.synchronize();
             }).empty()) {
          errors.fetch_add(1);
        }
        std::vector<unsigned char> host(pool_bytes);
        memory.download(host.data(), recv_x.get(), pool_bytes);
        for (unsigned char b : host) ASSERT_EQ(b, 0xA5) << "rank " << r << ": a row was written";
        Inputs good(memory, {0, 4, 1, 5}, cfg.hidden);
        EXPECT_EQ(comm.dispatch(good.get()).num_recv, 4);
      });
  EXPECT_EQ(errors.load(), 2);
}

TEST_F(CudaFaults, TopkThatDiffersBetweenRanksFailsEveryRank) {
  const Config cfg = small_config();
  std::atomic<int> errors{0};
  testing::on_cuda_ranks(2, cfg,
                         [&](int r, Communicator& comm, testing::Memory& memory, Bootstrap&) {
                           Inputs in(memory, {0, 4, 1, 5}, cfg.hidden);
                           DispatchInputs di = in.get();
                           di.num_topk = r == 0 ? 2 : 1;
                           if (!expect_error(ErrorCode::kInvalidArgument, "num_topk", [&] {
                                  comm.dispatch(di);
                                }).empty()) {
                             errors.fetch_add(1);
                           }
                           EXPECT_EQ(comm.dispatch(in.get()).num_recv, 4);
                         });
  EXPECT_EQ(errors.load(), 2);
}

// The rows were routed by the dispatch's ids: a combine given others with equal counts reads
// the dispatch's (as the host reference does) and synchronize names the difference.
TEST_F(CudaFaults, LowLatencyCombineGivenOtherIdsUsesTheDispatchIds) {
  const testing::OtherIdsResult want = testing::low_latency_combine_with_other_ids(Backend::kHost);
  const testing::OtherIdsResult got = testing::low_latency_combine_with_other_ids(Backend::kCuda);
  EXPECT_EQ(got.with_dispatch_ids, want.with_dispatch_ids);
  EXPECT_EQ(got.with_other_ids, want.with_other_ids);
  EXPECT_NE(got.error.find("but its dispatch had"), std::string::npos) << got.error;
}

}  // namespace
}  // namespace epcomm
