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

// y for combine: the received rows themselves, or combine_y's fresh random rows.
std::vector<unsigned char> make_y(const Shape& shape, const RankOutputs& out, uint64_t seed,
                                  int rank, bool from_recv_x) {
  if (from_recv_x) return out.recv_x;
  const std::vector<uint16_t> values = combine_y(shape, out.num_recv, seed, rank);
  std::vector<unsigned char> y(values.size() * 2);
  if (!y.empty()) std::memcpy(y.data(), values.data(), y.size());
  return y;
}

// Combines y (uploaded to combine_input() or, with options.stage_y, a buffer of its own) with
// the biases options.bias names (combine_bias of seed, rank) and options.apply_weights; returns
// out, poisoned before the call, [T][H] bf16.
std::vector<unsigned char> run_combine(Communicator& comm, Memory& memory, const Shape& shape,
                                       const DispatchHandle& handle,
                                       const std::vector<unsigned char>& y,
                                       const RoundOptions& round, uint64_t seed, int rank) {
  const size_t out_bytes = static_cast<size_t>(shape.num_tokens) * shape.hidden * 2;
  Buffer out(memory, out_bytes);
  Buffer biases[2];
  CombineOptions options;
  options.apply_weights = round.apply_weights;
  for (int b = 0; b < 2; ++b) {
    if (!((round.bias >> b) & 1) || out_bytes == 0) continue;
    const std::vector<uint16_t> values = combine_bias(shape, seed, rank, b);
    biases[b] = Buffer(memory, out_bytes);
    memory.upload(biases[b].get(), values.data(), out_bytes);
    (b == 0 ? options.bias : options.bias2) = biases[b].get();
  }
  if (out_bytes) memory.fill(out.get(), kPoison, out_bytes);
  Buffer staged;
  void* y_ptr = comm.combine_input();
  if (round.stage_y) {
    staged = Buffer(memory, std::max<size_t>(y.size(), 16));
    y_ptr = staged.get();
  }
  if (!y.empty()) memory.upload(y_ptr, y.data(), y.size());
  comm.combine(y_ptr, handle, out.get(), options);
  comm.synchronize();
  return download(memory, out.get(), out_bytes);
}

// The fresh dispatch's options: layout and alignment from `round`, and caller buffers (poisoned,
// recv_capacity() rows) where `round` asks for them. Expert-major leaves recv_topk_idx and
// recv_topk_weights null: the API refuses them for that layout.
DispatchOptions fresh_dispatch_options(Memory& memory, const Config& cfg, int cap, int K, int Le,
                                       const RoundOptions& round, CallerOutputs& caller) {
  DispatchOptions dopts;
  dopts.wait_num_recv = round.wait_num_recv;
  dopts.layout = round.layout;
  dopts.expert_alignment = round.expert_alignment;
  auto make_out = [&](Buffer& buf, size_t bytes) {
    buf = Buffer(memory, bytes);
    memory.fill(buf.get(), kPoison, bytes);
    return buf.get();
  };
  const size_t rows = static_cast<size_t>(cap), num_scales = cfg.num_scales();
  if (round.copy_recv_x) dopts.outputs.recv_x = make_out(caller.recv_x, rows * cfg.row_bytes());
  if (!round.caller_meta) return dopts;
  if (num_scales) {
    dopts.outputs.recv_scales =
        static_cast<float*>(make_out(caller.recv_scales, rows * num_scales * 4));
  }
  if (round.layout == RecvLayout::kTokenMajor) {
    dopts.outputs.recv_topk_idx =
        make_out(caller.recv_topk_idx, rows * K * index_bytes(cfg.index_type));
    dopts.outputs.recv_topk_weights =
        static_cast<float*>(make_out(caller.recv_topk_weights, rows * K * 4));
  }
  dopts.outputs.recv_src =
      static_cast<RecvSource*>(make_out(caller.recv_src, rows * sizeof(RecvSource)));
  dopts.outputs.num_recv_per_expert = static_cast<int*>(make_out(caller.per_expert, Le * 4));
  return dopts;
}

// Throws unless the result leaves the other layout's fields null and, from a fresh dispatch,
// sets its own layout's pair fields (a cached dispatch returns rows only).
void check_layout_fields(const DispatchResult& res, RecvLayout layout, bool fresh) {
  const bool expert_major = layout == RecvLayout::kExpertMajor;
  const bool token_fields = res.recv_topk_idx != nullptr || res.recv_topk_weights != nullptr;
  const bool pair_fields =
      res.recv_topk_slot != nullptr || res.recv_weight != nullptr || res.expert_offsets != nullptr;
  if (expert_major && token_fields) {
    throw std::runtime_error("expert-major dispatch returned recv_topk_idx or recv_topk_weights");
  }
  if (fresh && expert_major && (!res.recv_topk_slot || !res.recv_weight || !res.expert_offsets)) {
    throw std::runtime_error(
        "expert-major dispatch left recv_topk_slot, recv_weight or "
        "expert_offsets null");
  }
  if (!expert_major && pair_fields) {
    throw std::runtime_error("token-major dispatch returned expert-major fields");
  }
}

// Downloads the fresh dispatch's n rows and per-row data into `out` and checks that caller
// buffers hold the poison past them.
void download_dispatch(Memory& memory, const Config& cfg, int K, int Le, const DispatchResult& res,
                       const CallerOutputs& caller, const RoundOptions& round, RankOutputs& out) {
  const size_t n = static_cast<size_t>(out.num_recv), row_bytes = cfg.row_bytes();
  const size_t num_scales = cfg.num_scales(), idx_bytes = index_bytes(cfg.index_type);
  out.recv_x = download(memory, res.recv_x, n * row_bytes);
  if (num_scales) out.recv_scales = download(memory, res.recv_scales, n * num_scales * 4);
  if (round.layout == RecvLayout::kTokenMajor) {
    out.recv_topk_idx = download(memory, res.recv_topk_idx, n * K * idx_bytes);
    out.recv_topk_weights = download(memory, res.recv_topk_weights, n * K * 4);
  } else {
    out.recv_topk_slot = download(memory, res.recv_topk_slot, n * 4);
    out.recv_weight = download(memory, res.recv_weight, n * 4);
    out.expert_offsets.resize(Le + 1);
    memory.download(out.expert_offsets.data(), res.expert_offsets, (Le + 1) * 4);
  }
  out.recv_src = download(memory, res.recv_src, n * sizeof(RecvSource));
  out.per_expert.resize(Le);
  memory.download(out.per_expert.data(), res.num_recv_per_expert, Le * 4);
  check_tail_poisoned(memory, caller.recv_x, n * row_bytes, "recv_x");
  check_tail_poisoned(memory, caller.recv_scales, n * num_scales * 4, "recv_scales");
  check_tail_poisoned(memory, caller.recv_topk_idx, n * K * idx_bytes, "recv_topk_idx");
  check_tail_poisoned(memory, caller.recv_topk_weights, n * K * 4, "recv_topk_weights");
  check_tail_poisoned(memory, caller.recv_src, n * sizeof(RecvSource), "recv_src");
}

}  // namespace

std::vector<uint16_t> combine_y(const Shape& shape, int num_recv, uint64_t seed, int rank) {
  // Spread over 40 binades and both signs: any order of the sum but the contract's changes bits.
  Rng rng(seed * 31 + rank * 131 + 7);
  std::vector<uint16_t> y(static_cast<size_t>(num_recv) * shape.hidden);
  for (auto& v : y) v = random_wide_bf16(rng);
  return y;
}

std::vector<uint16_t> combine_y_row(const Shape& shape, uint64_t seed, int rank, int row) {
  Rng rng(seed * 31 + rank * 131 + 7);  // as combine_y, one draw per element
  rng.skip(static_cast<uint64_t>(row) * shape.hidden);
  std::vector<uint16_t> y(shape.hidden);
  for (auto& v : y) v = random_wide_bf16(rng);
  return y;
}

std::vector<uint16_t> combine_bias(const Shape& shape, uint64_t seed, int rank, int which) {
  // The same wide spread as y, so that adding a bias elsewhere than after the rows, in another
  // order, or after a rounding changes bits.
  const uint64_t bias_seed = seed * 7 + rank;
  Rng rng(bias_seed * 97 + which * 13 + 3);
  std::vector<uint16_t> values(static_cast<size_t>(shape.num_tokens) * shape.hidden);
  for (auto& v : values) v = random_wide_bf16(rng);
  return values;
}

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
  bytes("recv_topk_slot", want.recv_topk_slot, got.recv_topk_slot);
  bytes("recv_weight", want.recv_weight, got.recv_weight);
  bytes("expert_offsets", want.expert_offsets, got.expert_offsets);
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
  const DispatchOptions dopts = fresh_dispatch_options(memory, cfg, cap, K, Le, options, caller);

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
  check_layout_fields(res, options.layout, /*fresh=*/true);
  int num_recv = res.num_recv;
  if (!options.wait_num_recv) {
    if (num_recv != -1) throw std::runtime_error("worst-case dispatch returned num_recv on host");
    memory.download(&num_recv, res.num_recv_device, sizeof(int));
  }
  out.num_recv = num_recv;
  const size_t n = static_cast<size_t>(num_recv);
  download_dispatch(memory, cfg, K, Le, res, caller, options, out);

  const bool y_from_x = options.y_is_recv_x && cfg.dtype == DType::kBF16;
  out.combined = run_combine(comm, memory, shape, res.handle,
                             make_y(shape, out, seed, rank, y_from_x), options, seed, rank);
  if (!options.cached) return out;

  // Cached dispatch: same routing, fresh rows.
  const uint64_t cached_seed = seed + kCachedSeedOffset;
  const RankData fresh = make_rank_data(shape, routing, cached_seed, rank);
  if (!fresh.x.empty()) memory.upload(x.get(), fresh.x.data(), fresh.x.size());
  if (!fresh.scales.empty())
    memory.upload(scales.get(), fresh.scales.data(), fresh.scales.size() * 4);
  bootstrap.barrier();
  memory.fill(comm.combine_input(), kPoison, static_cast<size_t>(cap) * cfg.hidden * 2);
  DispatchOptions copts;
  copts.wait_num_recv = options.wait_num_recv;
  copts.layout = options.layout;  // a cached dispatch keeps its handle's layout
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
  check_layout_fields(cres, options.layout, /*fresh=*/false);
  out.cached_recv_x = download(memory, cres.recv_x, n * row_bytes);
  if (num_scales) out.cached_recv_scales = download(memory, cres.recv_scales, n * num_scales * 4);
  check_tail_poisoned(memory, caller.recv_x, n * row_bytes, "cached recv_x");
  RankOutputs cached_view;
  cached_view.num_recv = num_recv;
  cached_view.recv_x = out.cached_recv_x;
  out.cached_combined = run_combine(comm, memory, shape, cres.handle,
                                    make_y(shape, cached_view, cached_seed, rank, y_from_x),
                                    options, cached_seed, rank);
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
