// Test harness: rounds on threads of one process, outputs downloaded for comparison.
#include "harness.hpp"

#include <cstring>
#include <exception>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace epcomm::testing {
namespace {

constexpr unsigned char kPoison = 0xA5;

std::vector<unsigned char> download(Memory& memory, const void* src, size_t bytes) {
  std::vector<unsigned char> out(bytes);
  if (bytes) memory.download(out.data(), src, bytes);
  return out;
}

// Caller-owned output buffers, poisoned, sized for the whole receive capacity.
struct CallerOutputs {
  Buffer recv_x, recv_scales, recv_topk_idx, recv_topk_weights, recv_src, per_expert;
};

void check_tail_poisoned(Memory& memory, const Buffer& buf, size_t used_bytes, const char* name) {
  if (!buf.get() || used_bytes >= buf.bytes()) return;
  std::vector<unsigned char> tail =
      download(memory, buf.as<unsigned char>() + used_bytes, buf.bytes() - used_bytes);
  for (size_t i = 0; i < tail.size(); ++i) {
    if (tail[i] != kPoison) {
      std::ostringstream os;
      os << name << ": byte " << used_bytes + i << " past the received rows was written";
      throw std::runtime_error(os.str());
    }
  }
}

// y for combine: the received rows themselves, or fresh random bf16 rows.
std::vector<unsigned char> make_y(const Shape& shape, const RankOutputs& out, uint64_t seed,
                                  int rank, bool from_recv_x) {
  if (from_recv_x) return out.recv_x;
  // Spread over 40 binades and both signs: any order of the sum but the contract's changes bits.
  Rng rng(seed * 31 + rank * 131 + 7);
  std::vector<unsigned char> y(static_cast<size_t>(out.num_recv) * shape.hidden * 2);
  for (size_t i = 0; i < y.size(); i += 2) {
    const uint16_t v = random_wide_bf16(rng);
    std::memcpy(y.data() + i, &v, 2);
  }
  return y;
}

std::vector<unsigned char> run_combine(Communicator& comm, Memory& memory, const Shape& shape,
                                       const DispatchHandle& handle,
                                       const std::vector<unsigned char>& y, bool stage_y,
                                       int bias_bits, uint64_t bias_seed) {
  const size_t out_bytes = static_cast<size_t>(shape.num_tokens) * shape.hidden * 2;
  Buffer out(memory, out_bytes);
  // Biases of the same wide spread as y, so that adding them elsewhere than after the rows,
  // in another order, or after a rounding changes bits.
  Buffer biases[2];
  CombineOptions options;
  for (int b = 0; b < 2; ++b) {
    if (!((bias_bits >> b) & 1) || out_bytes == 0) continue;
    Rng rng(bias_seed * 97 + b * 13 + 3);
    std::vector<uint16_t> values(out_bytes / 2);
    for (auto& v : values) v = random_wide_bf16(rng);
    biases[b] = Buffer(memory, out_bytes);
    memory.upload(biases[b].get(), values.data(), out_bytes);
    (b == 0 ? options.bias : options.bias2) = biases[b].get();
  }
  if (out_bytes) memory.fill(out.get(), kPoison, out_bytes);
  Buffer staged;
  void* y_ptr = comm.combine_input();
  if (stage_y) {
    staged = Buffer(memory, std::max<size_t>(y.size(), 16));
    y_ptr = staged.get();
  }
  if (!y.empty()) memory.upload(y_ptr, y.data(), y.size());
  comm.combine(y_ptr, handle, out.get(), options);
  comm.synchronize();
  return download(memory, out.get(), out_bytes);
}

}  // namespace

std::vector<std::shared_ptr<Bootstrap>> shared_bootstraps(int num_ranks, int timeout_ms) {
  std::vector<std::shared_ptr<Bootstrap>> out;
  for (auto& b : make_in_process_bootstraps(num_ranks, timeout_ms)) out.push_back(std::move(b));
  return out;
}

void run_on_ranks(int num_ranks, const std::function<void(int)>& fn) {
  std::mutex mutex;
  std::exception_ptr first;
  std::vector<std::thread> threads;
  for (int r = 0; r < num_ranks; ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(r);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex);
        if (!first) first = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  if (first) std::rethrow_exception(first);
}

void on_cuda_ranks(int num_ranks, const Config& config,
                   const std::function<void(int, Communicator&, Memory&, Bootstrap&)>& fn) {
  const auto bs = shared_bootstraps(num_ranks, 60000);
  run_on_ranks(num_ranks, [&](int r) {
    auto memory = make_memory(Backend::kCuda, gpu_of_rank(r));
    auto comm = Communicator::create(bs[r], config, Backend::kCuda, gpu_of_rank(r));
    fn(r, *comm, *memory, *bs[r]);
  });
}

std::string first_difference(const RankOutputs& want, const RankOutputs& got) {
  std::ostringstream os;
  auto bytes = [&](const char* name, const auto& a, const auto& b) {
    if (!os.str().empty()) return;
    if (a.size() != b.size()) {
      os << name << ": size " << b.size() << ", expected " << a.size();
      return;
    }
    using Elem = typename std::decay_t<decltype(a)>::value_type;
    if (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(Elem)) == 0) return;
    for (size_t i = 0; i < a.size(); ++i) {
      if (std::memcmp(&a[i], &b[i], sizeof(Elem)) != 0) {
        os << name << ": first difference at element " << i << " (got " << +b[i] << ", expected "
           << +a[i] << ")";
        return;
      }
    }
  };
  if (want.num_recv != got.num_recv) {
    os << "num_recv: got " << got.num_recv << ", expected " << want.num_recv;
  }
  bytes("tokens_per_rank", want.tokens_per_rank, got.tokens_per_rank);
  bytes("tokens_per_expert", want.tokens_per_expert, got.tokens_per_expert);
  bytes("is_token_in_rank", want.is_token_in_rank, got.is_token_in_rank);
  bytes("recv_x", want.recv_x, got.recv_x);
  bytes("recv_scales", want.recv_scales, got.recv_scales);
  bytes("recv_topk_idx", want.recv_topk_idx, got.recv_topk_idx);
  bytes("recv_topk_weights", want.recv_topk_weights, got.recv_topk_weights);
  bytes("recv_src", want.recv_src, got.recv_src);
  bytes("num_recv_per_expert", want.per_expert, got.per_expert);
  bytes("combined", want.combined, got.combined);
  bytes("cached_recv_x", want.cached_recv_x, got.cached_recv_x);
  bytes("cached_recv_scales", want.cached_recv_scales, got.cached_recv_scales);
  bytes("cached_combined", want.cached_combined, got.cached_combined);
  return os.str();
}

RankOutputs run_round(Communicator& comm, Bootstrap& bootstrap, Memory& memory, const Shape& shape,
                      Routing routing, uint64_t seed, const RoundOptions& options) {
  const int rank = comm.rank(), R = comm.num_ranks(), T = shape.num_tokens, K = shape.num_topk;
  const int E = shape.num_experts, Le = E / R, cap = comm.recv_capacity();
  const Config& cfg = comm.config();
  const size_t row_bytes = cfg.row_bytes(), num_scales = cfg.num_scales();
  const size_t idx_bytes = index_bytes(cfg.index_type);
  const RankData data = make_rank_data(shape, routing, seed, rank);

  // Inputs.
  Buffer x(memory, std::max<size_t>(data.x.size(), 16));
  Buffer scales(memory, std::max<size_t>(data.scales.size() * 4, 16));
  Buffer topk(memory, std::max<size_t>(data.topk_idx.size(), 16));
  Buffer weights(memory, std::max<size_t>(data.topk_weights.size() * 4, 16));
  if (!data.x.empty()) memory.upload(x.get(), data.x.data(), data.x.size());
  if (!data.scales.empty()) memory.upload(scales.get(), data.scales.data(), data.scales.size() * 4);
  if (!data.topk_idx.empty()) memory.upload(topk.get(), data.topk_idx.data(), data.topk_idx.size());
  if (!data.topk_weights.empty()) {
    memory.upload(weights.get(), data.topk_weights.data(), data.topk_weights.size() * 4);
  }

  RankOutputs out;
  // Layout.
  Buffer per_rank(memory, R * 4), per_expert_layout(memory, E * 4);
  Buffer in_rank(memory, std::max<size_t>(static_cast<size_t>(T) * R, 16));
  memory.fill(per_rank.get(), kPoison, per_rank.bytes());
  memory.fill(per_expert_layout.get(), kPoison, per_expert_layout.bytes());
  memory.fill(in_rank.get(), kPoison, in_rank.bytes());
  comm.get_dispatch_layout(topk.get(), T, K,
                           {per_rank.as<int>(), per_expert_layout.as<int>(), in_rank.as<bool>()});
  out.tokens_per_rank.resize(R);
  out.tokens_per_expert.resize(E);
  memory.download(out.tokens_per_rank.data(), per_rank.get(), R * 4);
  memory.download(out.tokens_per_expert.data(), per_expert_layout.get(), E * 4);
  out.is_token_in_rank = download(memory, in_rank.get(), static_cast<size_t>(T) * R);

  // Peers finished reading this rank's pool in the last round; poison it and the outputs.
  bootstrap.barrier();
  memory.fill(comm.combine_input(), kPoison, static_cast<size_t>(cap) * cfg.hidden * 2);
  CallerOutputs caller;
  DispatchOptions dopts;
  dopts.wait_num_recv = options.wait_num_recv;
  auto make_out = [&](Buffer& buf, size_t bytes) {
    buf = Buffer(memory, bytes);
    memory.fill(buf.get(), kPoison, bytes);
    return buf.get();
  };
  if (options.copy_recv_x) dopts.outputs.recv_x = make_out(caller.recv_x, cap * row_bytes);
  if (options.caller_meta) {
    if (num_scales) {
      dopts.outputs.recv_scales =
          static_cast<float*>(make_out(caller.recv_scales, cap * num_scales * 4));
    }
    dopts.outputs.recv_topk_idx = make_out(caller.recv_topk_idx, cap * K * idx_bytes);
    dopts.outputs.recv_topk_weights =
        static_cast<float*>(make_out(caller.recv_topk_weights, cap * K * 4));
    dopts.outputs.recv_src =
        static_cast<RecvSource*>(make_out(caller.recv_src, cap * sizeof(RecvSource)));
    dopts.outputs.num_recv_per_expert = static_cast<int*>(make_out(caller.per_expert, Le * 4));
  }

  DispatchInputs in;
  in.x = x.get();
  in.x_scales = num_scales ? scales.as<float>() : nullptr;
  in.scales_per_token = static_cast<int>(num_scales);
  in.topk_idx = topk.get();
  in.topk_weights = data.topk_weights.empty() ? nullptr : weights.as<float>();
  in.num_tokens = T;
  in.num_topk = K;
  DispatchResult res = comm.dispatch(in, dopts);
  comm.synchronize();
  int num_recv = res.num_recv;
  if (!options.wait_num_recv) {
    if (num_recv != -1) throw std::runtime_error("worst-case dispatch returned num_recv on host");
    memory.download(&num_recv, res.num_recv_device, sizeof(int));
  }
  out.num_recv = num_recv;
  const size_t n = static_cast<size_t>(num_recv);
  out.recv_x = download(memory, res.recv_x, n * row_bytes);
  if (num_scales) out.recv_scales = download(memory, res.recv_scales, n * num_scales * 4);
  out.recv_topk_idx = download(memory, res.recv_topk_idx, n * K * idx_bytes);
  out.recv_topk_weights = download(memory, res.recv_topk_weights, n * K * 4);
  out.recv_src = download(memory, res.recv_src, n * sizeof(RecvSource));
  out.per_expert.resize(Le);
  memory.download(out.per_expert.data(), res.num_recv_per_expert, Le * 4);
  check_tail_poisoned(memory, caller.recv_x, n * row_bytes, "recv_x");
  check_tail_poisoned(memory, caller.recv_scales, n * num_scales * 4, "recv_scales");
  check_tail_poisoned(memory, caller.recv_topk_idx, n * K * idx_bytes, "recv_topk_idx");
  check_tail_poisoned(memory, caller.recv_topk_weights, n * K * 4, "recv_topk_weights");
  check_tail_poisoned(memory, caller.recv_src, n * sizeof(RecvSource), "recv_src");

  const bool y_from_x = options.y_is_recv_x && cfg.dtype == DType::kBF16;
  out.combined = run_combine(comm, memory, shape, res.handle,
                             make_y(shape, out, seed, rank, y_from_x), options.stage_y,
                             options.bias, seed * 7 + rank);
  if (!options.cached) return out;

  // Cached dispatch: same routing, fresh rows.
  const RankData fresh = make_rank_data(shape, routing, seed + 0x5eed, rank);
  if (!fresh.x.empty()) memory.upload(x.get(), fresh.x.data(), fresh.x.size());
  if (!fresh.scales.empty())
    memory.upload(scales.get(), fresh.scales.data(), fresh.scales.size() * 4);
  bootstrap.barrier();
  memory.fill(comm.combine_input(), kPoison, static_cast<size_t>(cap) * cfg.hidden * 2);
  DispatchOptions copts;
  copts.wait_num_recv = options.wait_num_recv;
  if (options.copy_recv_x) {
    memory.fill(caller.recv_x.get(), kPoison, caller.recv_x.bytes());
    copts.outputs.recv_x = caller.recv_x.get();
  }
  if (num_scales && options.caller_meta) {
    memory.fill(caller.recv_scales.get(), kPoison, caller.recv_scales.bytes());
    copts.outputs.recv_scales = caller.recv_scales.as<float>();
  }
  DispatchResult cres =
      comm.dispatch_cached(res.handle, x.get(), num_scales ? scales.as<float>() : nullptr, copts);
  comm.synchronize();
  out.cached_recv_x = download(memory, cres.recv_x, n * row_bytes);
  if (num_scales) out.cached_recv_scales = download(memory, cres.recv_scales, n * num_scales * 4);
  check_tail_poisoned(memory, caller.recv_x, n * row_bytes, "cached recv_x");
  RankOutputs cached_view;
  cached_view.num_recv = num_recv;
  cached_view.recv_x = out.cached_recv_x;
  out.cached_combined =
      run_combine(comm, memory, shape, cres.handle,
                  make_y(shape, cached_view, seed + 0x5eed, rank, y_from_x), options.stage_y,
                  options.bias, (seed + 0x5eed) * 7 + rank);
  return out;
}

std::vector<std::vector<RankOutputs>> run_cluster(Backend backend, const Config& config,
                                                  const Shape& shape, Routing routing,
                                                  uint64_t seed, const RoundOptions& options,
                                                  int rounds) {
  const int R = shape.num_ranks;
  const auto shared = shared_bootstraps(R, 120000);
  std::vector<std::vector<RankOutputs>> outputs(rounds, std::vector<RankOutputs>(R));
  const int devices = backend == Backend::kCuda ? cuda_device_count() : 1;
  run_on_ranks(R, [&](int rank) {
    const int device = backend == Backend::kCuda ? rank % devices : 0;
    auto memory = make_memory(backend, device);
    auto comm = Communicator::create(shared[rank], config, backend, device);
    for (int round = 0; round < rounds; ++round) {
      outputs[round][rank] =
          run_round(*comm, *shared[rank], *memory, shape, routing, seed + round, options);
    }
    shared[rank]->barrier();  // no rank tears down while a peer still reads its pool
  });
  return outputs;
}

}  // namespace epcomm::testing
