// Low-latency dispatch -> stand-in expert step -> combine captured once in a CUDA graph per
// rank, then replayed on fresh inputs copied into the captured buffers; every replay is
// compared with the host reference byte for byte. With two pairs in flight the graph holds
// both buffers and the hook split.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <sstream>
#include <stdexcept>

#include "epcomm/epcomm.hpp"
#include "harness.hpp"
#include "ll_harness.hpp"

namespace epcomm {
namespace {

using testing::Buffer;
using testing::LowLatencyRankData;
using testing::LowLatencyRoundOptions;
using testing::LowLatencyShape;
using testing::Routing;

void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

struct GraphCase {
  bool use_fp8 = false;
  LowLatencyRoundOptions options;
  std::string name;
};

void PrintTo(const GraphCase& c, std::ostream* os) { *os << c.name; }

// One pair's captured buffers: the graph reads x, topk_idx, topk_weights and y_source and
// writes y and out; the host refreshes the inputs between replays.
struct PairBuffers {
  PairBuffers(testing::Memory& m, const LowLatencyShape& s, int num_tokens)
      : x(m, static_cast<size_t>(std::max(num_tokens, 1)) * s.hidden * 2),
        topk_idx(m, static_cast<size_t>(std::max(num_tokens, 1)) * s.num_topk *
                        index_bytes(s.index_type)),
        topk_weights(m, static_cast<size_t>(std::max(num_tokens, 1)) * s.num_topk * 4),
        y_source(m, y_bytes(s)),
        y(m, y_bytes(s)),
        out(m, static_cast<size_t>(num_tokens + 1) * s.hidden * 2) {}  // one guard row
  static size_t y_bytes(const LowLatencyShape& s) {
    return static_cast<size_t>(s.num_experts) * s.max_tokens * s.hidden * 2;  // Le * R * M rows
  }
  void refresh(testing::Memory& m, const LowLatencyRankData& d,
               const std::vector<uint16_t>& expert_rows) {
    if (d.num_tokens > 0) {
      m.upload(x.get(), d.x.data(), d.x.size() * 2);
      m.upload(topk_idx.get(), d.topk_idx.data(), d.topk_idx.size());
      m.upload(topk_weights.get(), d.topk_weights.data(), d.topk_weights.size() * 4);
    }
    m.upload(y_source.get(), expert_rows.data(), expert_rows.size() * 2);
    m.fill(y.get(), testing::kLlPoison, y.bytes());  // the graph's copy must refill it
    m.fill(out.get(), testing::kLlPoison, out.bytes());
  }
  Buffer x, topk_idx, topk_weights, y_source, y, out;
};

// Captures the pairs on `stream`; a failure ends the capture so the stream stays usable.
cudaGraphExec_t capture(Communicator& comm, cudaStream_t stream, const LowLatencyShape& shape,
                        const LowLatencyRoundOptions& options, std::vector<PairBuffers>& pairs,
                        int num_tokens, std::vector<LowLatencyDispatchResult>& results) {
  cudaGraph_t graph = nullptr;
  cuda_check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "begin capture");
  try {
    for (PairBuffers& p : pairs) {
      LowLatencyDispatchInputs in;
      in.x = p.x.get();
      in.topk_idx = p.topk_idx.get();
      in.num_tokens = num_tokens;
      in.num_topk = shape.num_topk;
      in.use_fp8 = shape.use_fp8;
      results.push_back(comm.low_latency_dispatch(in, options.hook));
    }
    if (options.hook) {
      for (const auto& r : results) comm.low_latency_receive(r.handle);
    }
    for (size_t i = 0; i < pairs.size(); ++i) {
      PairBuffers& p = pairs[i];
      // The stand-in expert step: this replay's expert rows into the combine input.
      cuda_check(cudaMemcpyAsync(p.y.get(), p.y_source.get(), p.y.bytes(), cudaMemcpyDeviceToDevice,
                                 stream),
                 "expert copy");
      comm.low_latency_combine(p.y.get(), p.topk_idx.get(), p.topk_weights.as<float>(),
                               results[i].handle, p.out.get(), options.hook);
    }
    if (options.hook) {
      for (const auto& r : results) comm.low_latency_receive(r.handle);
    }
  } catch (...) {
    cudaStreamEndCapture(stream, &graph);
    if (graph) cudaGraphDestroy(graph);
    throw;
  }
  cuda_check(cudaStreamEndCapture(stream, &graph), "end capture");
  cudaGraphExec_t exec = nullptr;
  const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  cuda_check(err, "instantiate");
  return exec;
}

class CudaLowLatencyGraph : public ::testing::TestWithParam<GraphCase> {
 protected:
  void SetUp() override {
    if (testing::cuda_device_count() == 0) GTEST_SKIP() << "no GPU present: CUDA case skipped";
  }
};

TEST_P(CudaLowLatencyGraph, CapturedRoundReplaysOnFreshInputs) {
  const GraphCase& c = GetParam();
  LowLatencyShape shape;
  shape.num_ranks = 4;
  shape.max_tokens = 16;
  shape.num_tokens = 16;
  shape.hidden = 256;
  shape.num_experts = 16;
  shape.num_topk = 4;
  shape.use_fp8 = c.use_fp8;
  const Routing routing = Routing::kWithHoles;
  const int replays = 100;
  const uint64_t seed = 15000 + c.options.in_flight;
  // Replay k of pair p uses the inputs of seed + 2k + p, as round k of run_ll_cluster does.
  const auto want =
      testing::run_ll_cluster(Backend::kHost, shape, routing, seed, c.options, replays);

  const int R = shape.num_ranks, devices = testing::cuda_device_count();
  const auto bs = testing::shared_bootstraps(R, 60000);
  testing::run_on_ranks(R, [&](int r) {
    const int device = r % devices;
    auto memory = testing::make_memory(Backend::kCuda, device);
    auto comm = Communicator::create(bs[r], testing::ll_config_for(shape), Backend::kCuda, device);
    cudaStream_t stream = nullptr;
    cuda_check(cudaSetDevice(device), "cudaSetDevice");
    cuda_check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
    comm->set_stream(reinterpret_cast<Stream>(stream));
    const int T = testing::ll_num_tokens(shape, r);
    std::vector<PairBuffers> pairs;
    for (int p = 0; p < c.options.in_flight; ++p) pairs.emplace_back(*memory, shape, T);
    // Stop together: a rank that stopped alone would leave its peers waiting.
    std::string failure;
    auto agree = [&] {
      const int32_t mine = failure.empty() ? 0 : 1;
      std::vector<int32_t> all(R);
      bs[r]->allGather(&mine, all.data(), sizeof(mine));
      for (int s = 0; s < R && failure.empty(); ++s) {
        if (all[s]) failure = "stopped: rank " + std::to_string(s) + " failed";
      }
    };
    std::vector<LowLatencyDispatchResult> results;
    cudaGraphExec_t exec = nullptr;
    try {
      // Ranks capture concurrently: nothing in the capture may wait on a peer.
      exec = capture(*comm, stream, shape, c.options, pairs, T, results);
    } catch (const std::exception& e) {
      failure = "capture on rank " + std::to_string(r) + ": " + e.what();
    }
    agree();
    for (int k = 0; k < replays && failure.empty(); ++k) {
      bs[r]->barrier();  // peers are done with this rank's buffers from the last replay
      for (int p = 0; p < c.options.in_flight; ++p) {
        const uint64_t s = seed + 2 * k + p;
        pairs[p].refresh(*memory, testing::make_ll_rank_data(shape, routing, s, r),
                         testing::make_ll_expert_output(shape, s, r));
        testing::poison_ll_outputs(*memory, shape, results[p]);
      }
      bs[r]->barrier();  // every rank poisoned before any graph sends
      try {
        cuda_check(cudaGraphLaunch(exec, stream), "graph launch");
        comm->synchronize();
        for (int p = 0; p < c.options.in_flight; ++p) {
          const auto got = testing::collect_ll_outputs(
              *memory, shape, results[p], pairs[p].out.get(), pairs[p].out.bytes(), T, r);
          const std::string diff = testing::first_difference(want[k][p][r], got);
          if (!diff.empty()) {
            std::ostringstream os;
            os << "replay " << k << " pair " << p << " rank " << r << ": " << diff;
            failure = os.str();
            break;
          }
        }
      } catch (const std::exception& e) {
        failure = "replay " + std::to_string(k) + " rank " + std::to_string(r) + ": " + e.what();
      }
      agree();
    }
    EXPECT_EQ(failure, "");
    if (exec) cudaGraphExecDestroy(exec);
    comm->set_stream(nullptr);
    comm->synchronize();
    cudaStreamDestroy(stream);
    bs[r]->barrier();
  });
}

std::vector<GraphCase> graph_cases() {
  GraphCase one;
  one.name = "OnePairBf16";
  GraphCase two;
  two.use_fp8 = true;
  two.options.hook = true;
  two.options.in_flight = 2;
  two.name = "TwoPairsFp8Hook";
  return {one, two};
}

INSTANTIATE_TEST_SUITE_P(Replays, CudaLowLatencyGraph, ::testing::ValuesIn(graph_cases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace epcomm
