// A dispatch -> (identity expert) -> combine sequence captured once in a CUDA graph per rank,
// then replayed on fresh inputs copied into the captured buffers; every replay is compared
// with the host reference byte for byte.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstring>

#include "epcomm/epcomm.hpp"
#include "expect_error.hpp"
#include "harness.hpp"

namespace epcomm {
namespace {

using testing::Buffer;
using testing::RankData;
using testing::Routing;
using testing::Shape;

void cuda_ok(cudaError_t err, const char* what) {
  ASSERT_EQ(err, cudaSuccess) << what << ": " << cudaGetErrorString(err);
}

TEST(CudaGraph, CapturedFlatDispatchCombineReplaysOnFreshInputs) {
  if (testing::cuda_device_count() == 0) GTEST_SKIP() << "no GPU present: CUDA case skipped";
  Shape shape;
  shape.num_ranks = 4;
  shape.num_tokens = 48;
  shape.hidden = 512;
  shape.num_experts = 16;
  shape.num_topk = 4;
  const Config cfg = testing::config_for(shape);
  const int replays = 20;
  const uint64_t seed = 4242;
  testing::RoundOptions ref_options;
  ref_options.y_is_recv_x = true;
  ref_options.cached = false;

  std::vector<std::vector<testing::RankOutputs>> want;
  for (int k = 0; k < replays; ++k) {
    want.push_back(testing::run_cluster(Backend::kHost, cfg, shape, Routing::kUniform, seed + k,
                                        ref_options)[0]);
  }

  const auto bs = testing::shared_bootstraps(shape.num_ranks, 60000);
  testing::run_on_ranks(shape.num_ranks, [&](int r) {
    auto memory = testing::make_memory(Backend::kCuda, testing::gpu_of_rank(r));
    auto comm = Communicator::create(bs[r], cfg, Backend::kCuda, testing::gpu_of_rank(r));
    cudaStream_t stream;
    cuda_ok(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
    comm->set_stream(reinterpret_cast<Stream>(stream));
    const RankData first = testing::make_rank_data(shape, Routing::kUniform, seed, r);
    Buffer x(*memory, first.x.size()), topk(*memory, first.topk_idx.size());
    Buffer weights(*memory, first.topk_weights.size() * 4);
    Buffer out(*memory, static_cast<size_t>(shape.num_tokens) * shape.hidden * 2);

    DispatchInputs in;
    in.x = x.get();
    in.topk_idx = topk.get();
    in.topk_weights = weights.as<float>();
    in.num_tokens = shape.num_tokens;
    in.num_topk = shape.num_topk;
    DispatchOptions options;
    options.wait_num_recv = false;

    cudaGraph_t graph;
    cuda_ok(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "begin capture");
    const DispatchResult res = comm->dispatch(in, options);
    comm->combine(comm->combine_input(), res.handle, out.get());  // y = recv_x in place
    cuda_ok(cudaStreamEndCapture(stream, &graph), "end capture");
    cudaGraphExec_t exec;
    cuda_ok(cudaGraphInstantiate(&exec, graph, 0), "instantiate");

    for (int k = 0; k < replays; ++k) {
      const RankData d = testing::make_rank_data(shape, Routing::kUniform, seed + k, r);
      memory->upload(x.get(), d.x.data(), d.x.size());
      memory->upload(topk.get(), d.topk_idx.data(), d.topk_idx.size());
      memory->upload(weights.get(), d.topk_weights.data(), d.topk_weights.size() * 4);
      bs[r]->barrier();  // peers are done reading this rank's pool from the last replay
      memory->fill(comm->combine_input(), 0xA5,
                   static_cast<size_t>(comm->recv_capacity()) * shape.hidden * 2);
      memory->fill(out.get(), 0xA5, out.bytes());
      cuda_ok(cudaGraphLaunch(exec, stream), "graph launch");
      comm->synchronize();

      testing::RankOutputs got;
      memory->download(&got.num_recv, res.num_recv_device, sizeof(int));
      const size_t n = static_cast<size_t>(got.num_recv);
      got.recv_x.resize(n * cfg.row_bytes());
      if (n) memory->download(got.recv_x.data(), res.recv_x, got.recv_x.size());
      got.recv_src.resize(n * sizeof(RecvSource));
      if (n) memory->download(got.recv_src.data(), res.recv_src, got.recv_src.size());
      got.combined.resize(out.bytes());
      memory->download(got.combined.data(), out.get(), out.bytes());

      const testing::RankOutputs& ref = want[k][r];
      ASSERT_EQ(got.num_recv, ref.num_recv) << "replay " << k << " rank " << r;
      ASSERT_EQ(got.recv_x, ref.recv_x) << "replay " << k << " rank " << r;
      ASSERT_EQ(got.recv_src, ref.recv_src) << "replay " << k << " rank " << r;
      ASSERT_EQ(got.combined, ref.combined) << "replay " << k << " rank " << r;
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    comm->set_stream(nullptr);
    comm->synchronize();
    cudaStreamDestroy(stream);
    bs[r]->barrier();
  });
}

// An exact-mode dispatch refused during capture (it would block the host) issues nothing, so
// the latest dispatch stays the latest and its combine still runs (DESIGN section 13).
TEST(CudaGraph, RefusedDispatchInCaptureLeavesTheLatestHandleUsable) {
  if (testing::cuda_device_count() == 0) GTEST_SKIP() << "no GPU present: CUDA case skipped";
  Shape shape;
  shape.num_ranks = 1;
  shape.num_tokens = 8;
  shape.hidden = 128;
  shape.num_experts = 4;
  shape.num_topk = 2;
  const Config cfg = testing::config_for(shape);
  auto memory = testing::make_memory(Backend::kCuda, 0);
  auto comm = Communicator::create(testing::shared_bootstraps(1, 5000)[0], cfg, Backend::kCuda, 0);
  const RankData d = testing::make_rank_data(shape, Routing::kUniform, 31, 0);
  Buffer x(*memory, d.x.size()), topk(*memory, d.topk_idx.size());
  Buffer out(*memory, static_cast<size_t>(shape.num_tokens) * shape.hidden * 2);
  memory->upload(x.get(), d.x.data(), d.x.size());
  memory->upload(topk.get(), d.topk_idx.data(), d.topk_idx.size());
  DispatchInputs in;
  in.x = x.get();
  in.topk_idx = topk.get();
  in.num_tokens = shape.num_tokens;
  in.num_topk = shape.num_topk;
  const DispatchResult res = comm->dispatch(in);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(comm->stream());
  cudaGraph_t graph;
  cuda_ok(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "begin capture");
  testing::expect_error(ErrorCode::kInvalidArgument, "wait_num_recv = true",
                        [&] { comm->dispatch(in); });
  cuda_ok(cudaStreamEndCapture(stream, &graph), "end capture");
  cudaGraphDestroy(graph);
  EXPECT_NO_THROW(comm->combine(comm->combine_input(), res.handle, out.get()));
  comm->synchronize();
  std::vector<uint16_t> got(static_cast<size_t>(shape.num_tokens) * shape.hidden);
  memory->download(got.data(), out.get(), got.size() * 2);
  // One rank: every token reaches it once, so combine of y = recv_x returns x.
  std::vector<uint16_t> x_bits(got.size());
  std::memcpy(x_bits.data(), d.x.data(), d.x.size());
  EXPECT_EQ(got, x_bits);
}

}  // namespace
}  // namespace epcomm
