// A MoE layer on epcomm, ranks as threads of one process: gate -> top-k -> dispatch -> each
// local expert's two-layer MLP over the rows it received -> combine. Checks every rank's output
// against a dense computation of the same layer with the same weights and exits nonzero when any
// element is off by more than the bound below. --backend host runs anywhere; --backend cuda puts
// rank r on GPU r % (GPUs visible). --bench times the layer's phases. --layout picks the receive
// layout: token_major (one row per token; the example groups the rows by expert and weights the
// expert outputs itself), expert_major (RecvLayout::kExpertMajor: each local expert's rows are
// one contiguous block, and combine applies the weights) or both (each checked).
//
// Bound: token-major, each rank that hosts experts of a token returns its weighted expert sum
// rounded once to bf16 (8 significant bits: relative error <= 2^-8), and combine adds those
// partials in fp32 and rounds once more (<= 2^-8 of the result); expert-major, each expert output
// is rounded once to bf16 (<= 2^-8 of |w_k * mlp_k(x)| once weighted) and combine's fmaf sum is
// rounded once. Either way |out - dense| <= 2^-7 * sum over the token's k of |w_k * mlp_k(x)|
// (the fp32 reordering between the sums is below 2^-20 of that quantity).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "epcomm/epcomm.hpp"

#ifdef EPCOMM_EXAMPLE_CUDA
#include <cuda_runtime.h>
#endif

namespace {

struct Options {
  epcomm::Backend backend = epcomm::Backend::kHost;
  int ranks = 4, tokens = 64, hidden = 256, experts = 16, topk = 4, ffn = 128, iters = 5;
  bool bench = false;
  uint32_t seed = 1;
  std::vector<epcomm::RecvLayout> layouts = {epcomm::RecvLayout::kTokenMajor};
};

const char* name_of(epcomm::RecvLayout layout) {
  return layout == epcomm::RecvLayout::kExpertMajor ? "expert_major" : "token_major";
}

uint16_t to_bf16(float v) {  // round to nearest even
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}
float from_bf16(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// The layer's weights, the same on every rank: gate [H][E], expert e's W1 [H][F] and W2 [F][H].
struct Weights {
  std::vector<float> gate, w1, w2;
  explicit Weights(const Options& o) {
    std::mt19937 rng(o.seed);
    auto fill = [&](std::vector<float>& w, size_t n, float scale) {
      std::uniform_real_distribution<float> u(-scale, scale);
      w.resize(n);
      for (auto& v : w) v = u(rng);
    };
    fill(gate, size_t(o.hidden) * o.experts, 1.f / std::sqrt(float(o.hidden)));
    fill(w1, size_t(o.experts) * o.hidden * o.ffn, 1.f / std::sqrt(float(o.hidden)));
    fill(w2, size_t(o.experts) * o.ffn * o.hidden, 1.f / std::sqrt(float(o.ffn)));
  }
};

// out[h] = sum_f relu(x . W1[:, f]) * W2[f][h] for expert e, in fp32.
void expert_mlp(const Options& o, const Weights& w, int e, const float* x, float* out) {
  std::vector<float> mid(o.ffn, 0.f);
  const float* w1 = &w.w1[size_t(e) * o.hidden * o.ffn];
  const float* w2 = &w.w2[size_t(e) * o.ffn * o.hidden];
  for (int h = 0; h < o.hidden; ++h) {
    for (int f = 0; f < o.ffn; ++f) mid[f] += x[h] * w1[size_t(h) * o.ffn + f];
  }
  std::fill(out, out + o.hidden, 0.f);
  for (int f = 0; f < o.ffn; ++f) {
    const float m = std::max(mid[f], 0.f);
    for (int h = 0; h < o.hidden; ++h) out[h] += m * w2[size_t(f) * o.hidden + h];
  }
}

// A rank's tokens (bf16) and routing: the gate's top-k experts, weights softmaxed over them.
struct Tokens {
  std::vector<uint16_t> x;
  std::vector<int64_t> topk_idx;
  std::vector<float> topk_weights;
};

Tokens make_tokens(const Options& o, const Weights& w, int rank) {
  Tokens t;
  std::mt19937 rng(o.seed * 7919u + rank);
  std::normal_distribution<float> normal(0.f, 1.f);
  t.x.resize(size_t(o.tokens) * o.hidden);
  for (auto& v : t.x) v = to_bf16(normal(rng));
  t.topk_idx.resize(size_t(o.tokens) * o.topk);
  t.topk_weights.resize(size_t(o.tokens) * o.topk);
  std::vector<float> logits(o.experts);
  std::vector<int> order(o.experts);
  for (int i = 0; i < o.tokens; ++i) {
    std::fill(logits.begin(), logits.end(), 0.f);
    for (int h = 0; h < o.hidden; ++h) {
      const float xv = from_bf16(t.x[size_t(i) * o.hidden + h]);
      for (int e = 0; e < o.experts; ++e) logits[e] += xv * w.gate[size_t(h) * o.experts + e];
    }
    for (int e = 0; e < o.experts; ++e) order[e] = e;
    std::partial_sort(order.begin(), order.begin() + o.topk, order.end(),
                      [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
    float total = 0.f;
    for (int k = 0; k < o.topk; ++k) total += std::exp(logits[order[k]] - logits[order[0]]);
    for (int k = 0; k < o.topk; ++k) {
      t.topk_idx[size_t(i) * o.topk + k] = order[k];
      t.topk_weights[size_t(i) * o.topk + k] = std::exp(logits[order[k]] - logits[order[0]]) / total;
    }
  }
  return t;
}

// Memory of the backend: host vectors as they are, or copies on this rank's GPU.
class Memory {
 public:
  explicit Memory(epcomm::Backend backend) : cuda_(backend == epcomm::Backend::kCuda) {}
  ~Memory() {
#ifdef EPCOMM_EXAMPLE_CUDA
    for (void* p : owned_) cudaFree(p);
#endif
  }
  void* alloc(size_t bytes) {
    if (!cuda_) {
      host_.emplace_back(bytes);
      return host_.back().data();
    }
#ifdef EPCOMM_EXAMPLE_CUDA
    void* p = nullptr;
    if (cudaMalloc(&p, std::max<size_t>(bytes, 16)) != cudaSuccess) throw std::runtime_error("cudaMalloc");
    owned_.push_back(p);
    return p;
#else
    throw std::runtime_error("this example was built without CUDA");
#endif
  }
  void upload(void* dst, const void* src, size_t bytes) { copy(dst, src, bytes, true); }
  void download(void* dst, const void* src, size_t bytes) { copy(dst, src, bytes, false); }

 private:
  void copy(void* dst, const void* src, size_t bytes, bool up) {
    if (bytes == 0) return;
    if (!cuda_) {
      std::memcpy(dst, src, bytes);
      return;
    }
#ifdef EPCOMM_EXAMPLE_CUDA
    cudaMemcpy(dst, src, bytes, up ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost);
#else
    (void)up;
#endif
  }
  bool cuda_;
  std::vector<std::vector<unsigned char>> host_;
  std::vector<void*> owned_;
};

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

struct Timings {
  double dispatch = 0, experts = 0, combine = 0, layer = 0;
};

// Token-major expert compute: group the received (row, slot) pairs by local expert, run each
// expert's MLP on its group, and sum each row's weighted expert outputs in fp32 in slot order.
std::vector<uint16_t> token_major_y(const Options& o, const Weights& w, int rank,
                                    const epcomm::DispatchResult& res, Memory& memory) {
  const size_t H = o.hidden, K = o.topk;
  const int le = o.experts / o.ranks;
  const int n = res.num_recv;
  std::vector<uint16_t> rows(size_t(n) * H);
  std::vector<int64_t> local(size_t(n) * K);
  std::vector<float> local_w(size_t(n) * K);
  memory.download(rows.data(), res.recv_x, rows.size() * 2);
  memory.download(local.data(), res.recv_topk_idx, local.size() * 8);
  memory.download(local_w.data(), res.recv_topk_weights, local_w.size() * 4);
  std::vector<std::vector<std::pair<int, int>>> groups(le);  // (row, slot) per local expert
  for (int i = 0; i < n; ++i) {
    for (size_t k = 0; k < K; ++k) {
      if (local[i * K + k] >= 0) groups[local[i * K + k]].push_back({i, static_cast<int>(k)});
    }
  }
  std::vector<float> contrib(size_t(n) * K * H, 0.f), xin(H);
  for (int e = 0; e < le; ++e) {
    for (auto [i, k] : groups[e]) {
      for (size_t h = 0; h < H; ++h) xin[h] = from_bf16(rows[i * H + h]);
      expert_mlp(o, w, rank * le + e, xin.data(), &contrib[(size_t(i) * K + k) * H]);
    }
  }
  std::vector<uint16_t> y(size_t(n) * H);
  for (int i = 0; i < n; ++i) {
    for (size_t h = 0; h < H; ++h) {
      float acc = 0.f;
      for (size_t k = 0; k < K; ++k) {
        if (local[i * K + k] >= 0) acc += local_w[i * K + k] * contrib[(i * K + k) * H + h];
      }
      y[i * H + h] = to_bf16(acc);
    }
  }
  return y;
}

// Expert-major expert compute: expert e's rows are the block [offsets[e], offsets[e + 1]), one
// per (token, expert) pair; each row's output is the expert's MLP, unweighted (combine applies
// the pair's weight). Padding rows (source rank -1) are skipped and stay zero.
std::vector<uint16_t> expert_major_y(const Options& o, const Weights& w, int rank,
                                     const epcomm::DispatchResult& res, Memory& memory) {
  const size_t H = o.hidden;
  const int le = o.experts / o.ranks;
  const int n = res.num_recv;
  std::vector<uint16_t> rows(size_t(n) * H), y(size_t(n) * H, 0);
  std::vector<epcomm::RecvSource> src(n);
  std::vector<int> offsets(le + 1);
  memory.download(rows.data(), res.recv_x, rows.size() * 2);
  memory.download(src.data(), res.recv_src, src.size() * sizeof(epcomm::RecvSource));
  memory.download(offsets.data(), res.expert_offsets, offsets.size() * sizeof(int));
  std::vector<float> xin(H), mlp(H);
  for (int e = 0; e < le; ++e) {
    for (int i = offsets[e]; i < offsets[e + 1]; ++i) {
      if (src[i].rank < 0) continue;
      for (size_t h = 0; h < H; ++h) xin[h] = from_bf16(rows[i * H + h]);
      expert_mlp(o, w, rank * le + e, xin.data(), mlp.data());
      for (size_t h = 0; h < H; ++h) y[i * H + h] = to_bf16(mlp[h]);
    }
  }
  return y;
}

// One rank: runs the layer (o.bench ? o.iters + 1 : 1 times), returns its output and timings.
std::vector<uint16_t> run_rank(const Options& o, epcomm::RecvLayout layout, const Weights& w,
                               const Tokens& tokens, std::shared_ptr<epcomm::Bootstrap> bootstrap,
                               Timings* timings) {
  const int rank = bootstrap->rank();
#ifdef EPCOMM_EXAMPLE_CUDA
  if (o.backend == epcomm::Backend::kCuda) {
    int gpus = 0;
    cudaGetDeviceCount(&gpus);
    cudaSetDevice(rank % std::max(gpus, 1));
  }
#endif
  epcomm::Config config;
  config.num_experts = o.experts;
  config.hidden = o.hidden;
  config.max_tokens_per_rank = o.tokens;
  config.max_topk = o.topk;
  const int le = o.experts / o.ranks;
  if (layout == epcomm::RecvLayout::kExpertMajor) {
    // Pairs may outnumber tokens: a token sends one row per local expert it names.
    config.max_recv_rows = o.ranks * o.tokens * std::min(o.topk, le);
  }
  auto comm = epcomm::Communicator::create(bootstrap, config, o.backend);
  Memory memory(o.backend);
  const size_t H = o.hidden, row_bytes = H * 2;
  void* x = memory.alloc(tokens.x.size() * 2);
  void* idx = memory.alloc(tokens.topk_idx.size() * 8);
  auto* weights = static_cast<float*>(memory.alloc(tokens.topk_weights.size() * 4));
  void* out = memory.alloc(size_t(o.tokens) * row_bytes);
  memory.upload(x, tokens.x.data(), tokens.x.size() * 2);
  memory.upload(idx, tokens.topk_idx.data(), tokens.topk_idx.size() * 8);
  memory.upload(weights, tokens.topk_weights.data(), tokens.topk_weights.size() * 4);
  std::vector<uint16_t> result(size_t(o.tokens) * H);
  const int runs = o.bench ? o.iters + 1 : 1;  // the first run warms up
  for (int run = 0; run < runs; ++run) {
    const auto layer_start = Clock::now();
    epcomm::DispatchInputs in;
    in.x = x;
    in.topk_idx = idx;
    in.topk_weights = weights;
    in.num_tokens = o.tokens;
    in.num_topk = o.topk;
    epcomm::DispatchOptions options;
    options.layout = layout;
    epcomm::DispatchResult res = comm->dispatch(in, options);
    comm->synchronize();
    const double dispatch_ms = ms_since(layer_start);

    const auto experts_start = Clock::now();
    const std::vector<uint16_t> y = layout == epcomm::RecvLayout::kExpertMajor
                                        ? expert_major_y(o, w, rank, res, memory)
                                        : token_major_y(o, w, rank, res, memory);
    void* y_ptr = comm->combine_input();
    memory.upload(y_ptr, y.data(), y.size() * 2);
    const double experts_ms = ms_since(experts_start);

    const auto combine_start = Clock::now();
    epcomm::CombineOptions combine;
    combine.apply_weights = layout == epcomm::RecvLayout::kExpertMajor;
    comm->combine(y_ptr, res.handle, out, combine);
    comm->synchronize();
    const double combine_ms = ms_since(combine_start);
    if (run > 0 || !o.bench) {
      const double share = o.bench ? 1.0 / o.iters : 1.0;
      timings->dispatch += dispatch_ms * share;
      timings->experts += experts_ms * share;
      timings->combine += combine_ms * share;
      timings->layer += ms_since(layer_start) * share;
    }
  }
  memory.download(result.data(), out, result.size() * 2);
  return result;
}

// Every rank's output against the dense layer; returns the number of elements out of bound.
int check(const Options& o, const Weights& w, const std::vector<Tokens>& tokens,
          const std::vector<std::vector<uint16_t>>& outputs) {
  int bad = 0;
  double worst = 0;
  std::vector<float> xin(o.hidden), mlp(o.hidden), dense(o.hidden), scale(o.hidden);
  for (int r = 0; r < o.ranks; ++r) {
    for (int i = 0; i < o.tokens; ++i) {
      std::fill(dense.begin(), dense.end(), 0.f);
      std::fill(scale.begin(), scale.end(), 0.f);
      for (int h = 0; h < o.hidden; ++h) xin[h] = from_bf16(tokens[r].x[size_t(i) * o.hidden + h]);
      for (int k = 0; k < o.topk; ++k) {
        const size_t slot = size_t(i) * o.topk + k;
        expert_mlp(o, w, static_cast<int>(tokens[r].topk_idx[slot]), xin.data(), mlp.data());
        for (int h = 0; h < o.hidden; ++h) {
          const float term = tokens[r].topk_weights[slot] * mlp[h];
          dense[h] += term;
          scale[h] += std::fabs(term);
        }
      }
      for (int h = 0; h < o.hidden; ++h) {
        const float got = from_bf16(outputs[r][size_t(i) * o.hidden + h]);
        const double err = std::fabs(double(got) - dense[h]);
        const double bound = std::ldexp(double(scale[h]), -7) + 1e-30;
        worst = std::max(worst, err / bound);
        if (err > bound && bad++ < 5) {
          std::fprintf(stderr, "rank %d token %d h %d: %g, dense %g, bound %g\n", r, i, h, got,
                       dense[h], bound);
        }
      }
    }
  }
  std::printf("checked %d ranks x %d tokens x %d against the dense layer: %d out of bound, "
              "largest error %.3f of the bound\n", o.ranks, o.tokens, o.hidden, bad, worst);
  return bad;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> int {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return std::stoi(argv[++i]);
    };
    if (a == "--backend") {
      const std::string b = i + 1 < argc ? argv[++i] : "";
      if (b != "host" && b != "cuda") throw std::invalid_argument("--backend is host or cuda, not " + b);
      o.backend = b == "cuda" ? epcomm::Backend::kCuda : epcomm::Backend::kHost;
    } else if (a == "--ranks") { o.ranks = value();
    } else if (a == "--tokens") { o.tokens = value();
    } else if (a == "--hidden") { o.hidden = value();
    } else if (a == "--experts") { o.experts = value();
    } else if (a == "--topk") { o.topk = value();
    } else if (a == "--ffn") { o.ffn = value();
    } else if (a == "--iters") { o.iters = value();
    } else if (a == "--seed") { o.seed = static_cast<uint32_t>(value());
    } else if (a == "--bench") { o.bench = true;
    } else if (a == "--layout") {
      const std::string l = i + 1 < argc ? argv[++i] : "";
      if (l == "token_major") {
        o.layouts = {epcomm::RecvLayout::kTokenMajor};
      } else if (l == "expert_major") {
        o.layouts = {epcomm::RecvLayout::kExpertMajor};
      } else if (l == "both") {
        o.layouts = {epcomm::RecvLayout::kTokenMajor, epcomm::RecvLayout::kExpertMajor};
      } else {
        throw std::invalid_argument("--layout is token_major, expert_major or both, not " + l);
      }
    } else { throw std::invalid_argument("unknown argument " + a);
    }
  }
  if (o.ranks < 1 || o.experts % o.ranks != 0 || o.topk < 1 || o.topk > o.experts || o.iters < 1) {
    throw std::invalid_argument("need ranks >= 1, experts a multiple of ranks, 1 <= topk <= "
                                "experts, iters >= 1");
  }
  return o;
}

// The layer on every rank (threads) in one receive layout, timed and checked; returns 0 when
// every element is within the bound.
int run_layer(const Options& o, epcomm::RecvLayout layout, const Weights& w,
              const std::vector<Tokens>& tokens) {
  auto bootstraps = epcomm::make_in_process_bootstraps(o.ranks, 60000);
  std::vector<std::vector<uint16_t>> outputs(o.ranks);
  std::vector<Timings> timings(o.ranks);
  std::vector<std::string> failures(o.ranks);
  std::vector<std::thread> threads;
  for (int r = 0; r < o.ranks; ++r) {
    threads.emplace_back([&, r] {
      try {
        outputs[r] = run_rank(o, layout, w, tokens[r], std::move(bootstraps[r]), &timings[r]);
      } catch (const std::exception& e) {
        failures[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < o.ranks; ++r) {
    if (!failures[r].empty()) {
      std::fprintf(stderr, "rank %d: %s\n", r, failures[r].c_str());
      return 1;
    }
  }
  std::printf("moe_layer: %s backend, %s, %d ranks, T=%d H=%d E=%d top-%d F=%d\n",
              epcomm::to_string(o.backend), name_of(layout), o.ranks, o.tokens, o.hidden,
              o.experts, o.topk, o.ffn);
  if (o.bench) {
    Timings slowest;
    for (const auto& t : timings) {
      slowest.dispatch = std::max(slowest.dispatch, t.dispatch);
      slowest.experts = std::max(slowest.experts, t.experts);
      slowest.combine = std::max(slowest.combine, t.combine);
      slowest.layer = std::max(slowest.layer, t.layer);
    }
    std::printf("bench %s (mean of %d, slowest rank, ms): dispatch %.3f  experts (host) %.3f  "
                "combine %.3f  layer %.3f\n", name_of(layout), o.iters, slowest.dispatch,
                slowest.experts, slowest.combine, slowest.layer);
  }
  return check(o, w, tokens, outputs) == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", 0);  // ranks sharing a GPU: before any CUDA call
  Options o;
  try {
    o = parse(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_layer: %s\n", e.what());
    return 2;
  }
  const Weights w(o);
  std::vector<Tokens> tokens;
  for (int r = 0; r < o.ranks; ++r) tokens.push_back(make_tokens(o, w, r));
  int failed = 0;
  for (const epcomm::RecvLayout layout : o.layouts) failed += run_layer(o, layout, w, tokens);
  return failed == 0 ? 0 : 1;
}
