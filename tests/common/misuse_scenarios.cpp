// Misuse scenarios shared by the host and CUDA tests.
#include "misuse_scenarios.hpp"

#include "harness.hpp"

namespace epcomm::testing {

OtherIdsResult low_latency_combine_with_other_ids(Backend backend) {
  Config cfg;
  cfg.num_experts = 4;
  cfg.hidden = 128;
  cfg.max_tokens_per_rank = 2;
  cfg.max_topk = 2;
  cfg.ll_max_tokens_per_rank = 2;
  cfg.dispatch_sms = cfg.combine_sms = 2;
  const int T = 2, K = 2, H = cfg.hidden, M = cfg.ll_max_tokens_per_rank;
  auto memory = make_memory(backend, 0);
  auto comm = Communicator::create(shared_bootstraps(1, 5000)[0], cfg, backend, 0);
  Rng rng(99);
  std::vector<uint16_t> x(T * H), y(static_cast<size_t>(cfg.num_experts) * M * H);
  for (auto& v : x) v = random_bf16(rng);
  for (auto& v : y) v = random_wide_bf16(rng);
  const std::vector<int64_t> dispatch_ids = {0, 1, 2, 3}, other_ids = {2, 3, 0, 1};
  const std::vector<float> weights = {0.5f, -1.25f, 2.0f, 0.75f};
  auto put = [&](const void* src, size_t bytes) {
    Buffer b(*memory, bytes);
    memory->upload(b.get(), src, bytes);
    return b;
  };
  Buffer d_x = put(x.data(), x.size() * 2), d_y = put(y.data(), y.size() * 2);
  Buffer d_ids = put(dispatch_ids.data(), 32), d_other = put(other_ids.data(), 32);
  Buffer d_w = put(weights.data(), 16), d_out(*memory, T * H * 2);
  OtherIdsResult result;
  for (const Buffer* ids : {&d_ids, &d_other}) {
    LowLatencyDispatchInputs in;
    in.x = d_x.get();
    in.topk_idx = d_ids.get();
    in.num_tokens = T;
    in.num_topk = K;
    const LowLatencyDispatchResult res = comm->low_latency_dispatch(in);
    memory->fill(d_out.get(), 0xA5, d_out.bytes());
    comm->low_latency_combine(d_y.get(), ids->get(), d_w.as<float>(), res.handle, d_out.get());
    try {
      comm->synchronize();
    } catch (const Error& e) {
      result.error = e.what();
    }
    std::vector<uint16_t>& out = ids == &d_ids ? result.with_dispatch_ids : result.with_other_ids;
    out.resize(T * H);
    memory->download(out.data(), d_out.get(), out.size() * 2);
  }
  return result;
}

}  // namespace epcomm::testing
