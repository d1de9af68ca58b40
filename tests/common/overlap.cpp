// Overlap schedule: every input uploaded and every output poisoned first, then all calls back
// to back, then every output downloaded.
#include "overlap.hpp"

#include <algorithm>
#include <cstring>
#include <functional>
#include <sstream>

#include "harness.hpp"

namespace epcomm::testing {
namespace {

constexpr unsigned char kPoison = 0xA5;
constexpr int kGuardRows = 2;  // poisoned rows past every combine's T rows of out

// What every rank does in one round (drawn from the seed alone, so all ranks agree).
struct RoundPlan {
  int num_topk = 1;
  Routing routing = Routing::kUniform;
  bool with_weights = true;
  int fresh_combines = 1;  // combines of the fresh dispatch (0 to 2)
  bool zero_copy = false;  // the first combine of each dispatch reads y from the pool
  bool cached = false;     // then a cached dispatch of it, and combines of that (1 or 2)
  int cached_combines = 0;
  int ll_pairs = 0;  // low-latency pairs after the high-throughput calls (0 to 2)
  int ll_topk = 1;
  bool ll_fp8 = false;
};

RoundPlan plan_round(const Config& c, const OverlapOptions& o, int round) {
  Rng rng(o.seed * 0x2545f4914f6cdd1dull + static_cast<uint64_t>(round) * 0x9e3779b9ull + 11);
  RoundPlan p;
  p.num_topk = 1 + rng.below(c.max_topk);
  constexpr Routing kRoutings[] = {Routing::kUniform, Routing::kSkewed, Routing::kAllToOne,
                                   Routing::kOneRankEmpty, Routing::kWithHoles};
  p.routing = kRoutings[rng.below(5)];
  p.with_weights = rng.below(4) != 0;
  p.cached = rng.below(3) == 0;
  p.fresh_combines = p.cached ? rng.below(3) : 1 + rng.below(2);
  p.cached_combines = p.cached ? 1 + rng.below(2) : 0;
  p.zero_copy = rng.below(3) == 0;
  if (o.low_latency && c.ll_max_tokens_per_rank > 0) {
    const int draw = rng.below(6);
    p.ll_pairs = draw < 3 ? 0 : (draw < 5 ? 1 : 2);
    p.ll_topk = 1 + rng.below(c.max_topk);
    p.ll_fp8 = rng.below(2) == 0;
  }
  return p;
}

// T of this rank in one round: often full, sometimes 0.
int draw_tokens(Rng& rng, int max_tokens) {
  const int kind = rng.below(8);
  if (kind == 0) return 0;
  if (kind == 1) return max_tokens;
  return rng.below(max_tokens + 1);
}

std::vector<unsigned char> bf16_bytes(Rng& rng, size_t count, bool wide) {
  std::vector<unsigned char> out(count * 2);
  for (size_t i = 0; i < count; ++i) {
    const uint16_t v = wide ? random_wide_bf16(rng) : random_bf16(rng);
    std::memcpy(out.data() + 2 * i, &v, 2);
  }
  return out;
}

std::vector<float> floats(Rng& rng, size_t count, double lo, double hi) {
  std::vector<float> out(count);
  for (auto& v : out) v = static_cast<float>(lo + (hi - lo) * rng.uniform());
  return out;
}

// Builds one rank's schedule: buffers first (uploads and poison wait on the host), calls as
// closures run afterwards back to back.
class Schedule {
 public:
  Schedule(Communicator& comm, Memory& memory, const OverlapOptions& options)
      : comm_(comm),
        memory_(memory),
        options_(options),
        config_(comm.config()),
        rank_(comm.rank()),
        num_ranks_(comm.num_ranks()),
        capacity_(comm.recv_capacity()) {}

  void add_round(int round) {
    const RoundPlan plan = plan_round(config_, options_, round);
    Rng rng(options_.seed * 1000003ull + static_cast<uint64_t>(round) * 7919ull +
            static_cast<uint64_t>(rank_) * 104729ull + 5);
    const std::string prefix = "round " + std::to_string(round) + ": ";
    const int T = draw_tokens(rng, config_.max_tokens_per_rank);
    add_dispatch(rng, plan, T, prefix);
    for (int i = 0; i < plan.fresh_combines; ++i) {
      add_combine(rng, T, plan.zero_copy && i == 0, prefix + "combine " + std::to_string(i));
    }
    if (plan.cached) {
      add_cached(rng, T, prefix);
      for (int i = 0; i < plan.cached_combines; ++i) {
        add_combine(rng, T, plan.zero_copy && i == 0,
                    prefix + "combine " + std::to_string(i) + " of the cached dispatch");
      }
    }
    if (plan.ll_pairs > 0) add_low_latency(rng, plan, prefix);
  }

  // Runs every call; the host waits for nothing until the last one is issued.
  void issue() {
    for (auto& call : calls_) call();
  }

  OverlapOutputs download() {
    OverlapOutputs out;
    for (Output& o : outputs_) {
      out.names.push_back(o.name);
      std::vector<unsigned char> bytes(o.bytes);
      if (o.bytes) memory_.download(bytes.data(), o.buffer.get(), o.bytes);
      out.bytes.push_back(std::move(bytes));
    }
    out.calls = static_cast<int>(calls_.size());
    return out;
  }

 private:
  struct Output {
    std::string name;
    Buffer buffer;
    size_t bytes;
  };

  void* input(const void* data, size_t bytes) {
    inputs_.emplace_back(memory_, std::max<size_t>(bytes, 16));
    if (bytes) memory_.upload(inputs_.back().get(), data, bytes);
    return inputs_.back().get();
  }
  template <typename T>
  void* input(const std::vector<T>& v) {
    return input(v.data(), v.size() * sizeof(T));
  }
  void* output(const std::string& name, size_t bytes) {
    outputs_.push_back(Output{name, Buffer(memory_, std::max<size_t>(bytes, 16)), bytes});
    memory_.fill(outputs_.back().buffer.get(), kPoison, outputs_.back().buffer.bytes());
    return outputs_.back().buffer.get();
  }

  // x (and fp8 scales) of T tokens.
  std::pair<void*, float*> rows(Rng& rng, int T) {
    const size_t H = config_.hidden;
    if (config_.dtype == DType::kBF16) return {input(bf16_bytes(rng, T * H, false)), nullptr};
    std::vector<unsigned char> x(T * H);
    for (auto& b : x) b = random_fp8(rng);
    const auto scales = floats(rng, static_cast<size_t>(T) * config_.num_scales(), 0.001, 1.0);
    return {input(x), static_cast<float*>(input(scales))};
  }

  void add_dispatch(Rng& rng, const RoundPlan& plan, int T, const std::string& prefix) {
    const size_t cap = capacity_, K = plan.num_topk;
    DispatchInputs in;
    std::tie(in.x, in.x_scales) = rows(rng, T);
    in.scales_per_token = config_.num_scales();
    in.topk_idx = input(draw_topk_idx(rng, plan.routing, config_.num_experts, num_ranks_, T,
                                      plan.num_topk, config_.index_type, false));
    in.topk_weights =
        plan.with_weights ? static_cast<float*>(input(floats(rng, T * K, 0.0, 1.0))) : nullptr;
    in.num_tokens = T;
    in.num_topk = plan.num_topk;
    DispatchOptions opts;
    opts.wait_num_recv = false;
    DispatchOutputs& o = opts.outputs;
    const std::string name = prefix + "dispatch: ";
    o.recv_x = output(name + "recv_x", cap * config_.row_bytes());
    if (config_.num_scales()) {
      o.recv_scales = static_cast<float*>(
          output(name + "recv_scales", cap * config_.num_scales() * sizeof(float)));
    }
    o.recv_topk_idx = output(name + "recv_topk_idx", cap * K * index_bytes(config_.index_type));
    o.recv_topk_weights =
        static_cast<float*>(output(name + "recv_topk_weights", cap * K * sizeof(float)));
    o.recv_src = static_cast<RecvSource*>(output(name + "recv_src", cap * sizeof(RecvSource)));
    o.num_recv_per_expert = static_cast<int*>(
        output(name + "num_recv_per_expert", config_.experts_per_rank(num_ranks_) * sizeof(int)));
    calls_.push_back([this, in, opts] { handle_ = comm_.dispatch(in, opts).handle; });
  }

  void add_cached(Rng& rng, int T, const std::string& prefix) {
    const auto [x, scales] = rows(rng, T);
    DispatchOptions opts;
    opts.wait_num_recv = false;
    const std::string name = prefix + "cached dispatch: ";
    opts.outputs.recv_x = output(name + "recv_x", capacity_ * config_.row_bytes());
    if (config_.num_scales()) {
      opts.outputs.recv_scales = static_cast<float*>(
          output(name + "recv_scales", capacity_ * config_.num_scales() * sizeof(float)));
    }
    calls_.push_back([this, x = x, scales = scales, opts] {
      handle_ = comm_.dispatch_cached(handle_, x, scales, opts).handle;
    });
  }

  // y is capacity rows (worst-case mode: the host does not know num_recv); zero-copy copies it
  // into the pool on the communicator's stream first.
  void add_combine(Rng& rng, int T, bool zero_copy, const std::string& name) {
    const size_t row_bytes = 2 * static_cast<size_t>(config_.hidden);
    void* y = input(bf16_bytes(rng, capacity_ * static_cast<size_t>(config_.hidden), true));
    const size_t out_bytes = static_cast<size_t>(T) * row_bytes;
    void* out = output(name + ": out", out_bytes + kGuardRows * row_bytes);
    calls_.push_back([this, y, out, zero_copy, row_bytes] {
      if (zero_copy) {
        memory_.copy_on_stream(comm_.combine_input(), y, capacity_ * row_bytes, comm_.stream());
        comm_.combine(comm_.combine_input(), handle_, out);
      } else {
        comm_.combine(y, handle_, out);
      }
    });
  }

  // One or two low-latency pairs (two: both dispatches before either combine).
  void add_low_latency(Rng& rng, const RoundPlan& plan, const std::string& prefix) {
    struct Pair {
      LowLatencyDispatchInputs in;
      void* y;
      const float* weights;
      void* out;
    };
    const int M = config_.ll_max_tokens_per_rank, H = config_.hidden, K = plan.ll_topk;
    const size_t y_rows = static_cast<size_t>(config_.num_experts) * M;  // [Le][R * M]
    auto pairs = std::make_shared<std::vector<Pair>>();
    for (int i = 0; i < plan.ll_pairs; ++i) {
      Pair p;
      const int T = draw_tokens(rng, M);
      p.in.x = input(bf16_bytes(rng, static_cast<size_t>(T) * H, false));
      p.in.topk_idx = input(draw_topk_idx(rng, plan.routing, config_.num_experts, num_ranks_, T, K,
                                          config_.index_type, true));
      p.in.num_tokens = T;
      p.in.num_topk = K;
      p.in.use_fp8 = plan.ll_fp8;
      p.weights = static_cast<float*>(input(floats(rng, static_cast<size_t>(T) * K, -0.5, 1.5)));
      p.y = input(bf16_bytes(rng, y_rows * H, true));
      const size_t out_bytes = (static_cast<size_t>(T) + kGuardRows) * H * 2;
      p.out = output(prefix + "low-latency pair " + std::to_string(i) + ": out", out_bytes);
      pairs->push_back(p);
    }
    calls_.push_back([this, pairs] {
      std::vector<LowLatencyHandle> handles;
      for (const Pair& p : *pairs) handles.push_back(comm_.low_latency_dispatch(p.in).handle);
      for (size_t i = 0; i < pairs->size(); ++i) {
        const Pair& p = (*pairs)[i];
        comm_.low_latency_combine(p.y, p.in.topk_idx, p.weights, handles[i], p.out);
      }
    });
  }

  Communicator& comm_;
  Memory& memory_;
  OverlapOptions options_;
  const Config& config_;
  int rank_, num_ranks_, capacity_;
  std::vector<Buffer> inputs_;
  std::vector<Output> outputs_;
  std::vector<std::function<void()>> calls_;
  DispatchHandle handle_;  // the latest dispatch's
};

}  // namespace

Config overlap_config(int num_ranks, Algorithm algorithm, DType dtype, IndexType index_type,
                      int hidden, uint64_t sequence_start) {
  Config cfg;
  cfg.num_experts = 4 * num_ranks;
  cfg.hidden = hidden;
  cfg.max_tokens_per_rank = 32;
  cfg.max_topk = 4;
  cfg.dtype = dtype;
  cfg.index_type = index_type;
  cfg.algorithm = algorithm;
  cfg.dispatch_sms = cfg.combine_sms = 6;
  cfg.ll_max_tokens_per_rank = 16;
  cfg.wait_timeout_ms = 20000;
  cfg.sequence_start = sequence_start;
  return cfg;
}

OverlapOutputs run_overlap(Communicator& comm, Bootstrap& bootstrap, Memory& memory,
                           const OverlapOptions& options) {
  Schedule schedule(comm, memory, options);
  for (int round = 0; round < options.rounds; ++round) schedule.add_round(round);
  // No rank issues a waiting call while a peer still allocates or poisons (an allocation that
  // grows the memory pool can wait for the kernels on the GPU).
  bootstrap.barrier();
  schedule.issue();
  comm.synchronize();
  bootstrap.barrier();  // every peer is done writing into this rank's buffers
  OverlapOutputs out = schedule.download();
  out.rounds = options.rounds;
  return out;
}

std::vector<OverlapOutputs> run_overlap_cluster(Backend backend, const Config& config,
                                                int num_ranks, const OverlapOptions& options) {
  const auto shared = shared_bootstraps(num_ranks, 120000);
  std::vector<OverlapOutputs> outputs(num_ranks);
  const int devices = backend == Backend::kCuda ? cuda_device_count() : 1;
  if (devices == 0) throw std::runtime_error("run_overlap_cluster: no GPU present");
  run_on_ranks(num_ranks, [&](int rank) {
    const int device = backend == Backend::kCuda ? rank % devices : 0;
    auto memory = make_memory(backend, device);
    auto comm = Communicator::create(shared[rank], config, backend, device);
    outputs[rank] = run_overlap(*comm, *shared[rank], *memory, options);
    shared[rank]->barrier();  // no rank tears down while a peer may still reach its memory
  });
  return outputs;
}

std::string first_difference(const OverlapOutputs& want, const OverlapOutputs& got) {
  std::ostringstream os;
  if (want.names != got.names) {
    os << "the schedules differ (" << got.names.size() << " outputs, expected " << want.names.size()
       << ")";
    return os.str();
  }
  for (size_t i = 0; i < want.bytes.size(); ++i) {
    const auto& a = want.bytes[i];
    const auto& b = got.bytes[i];
    if (a == b) continue;
    size_t j = 0;
    while (j < a.size() && j < b.size() && a[j] == b[j]) ++j;
    os << want.names[i] << ": first difference at byte " << j << " of " << a.size() << " (got "
       << (j < b.size() ? +b[j] : -1) << ", expected " << (j < a.size() ? +a[j] : -1) << ")";
    return os.str();
  }
  return {};
}

}  // namespace epcomm::testing
