// epcomm-bench --mode ll: one communicator per rank for the whole sweep (M = the largest T, so
// buffers are allocated once). For each dtype and T: one round checked against the host
// reference, then the eager, hook, graph and graph-loop timings (ll_timing.cpp), each followed by a
// check that the timed replays still produced the reference output.
#include "ll_bench.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <future>
#include <numeric>

#include "device_support.hpp"
#include "harness.hpp"
#include "ll_device.hpp"
#include "ll_harness.hpp"
#include "ll_timing.hpp"

namespace epcomm::bench {
namespace {

constexpr testing::Routing kRouting = testing::Routing::kUniform;
// Long enough for rank 0 to compute the host reference (M = 256, H = 7168) while its peers
// wait in a barrier; a rank that died holds the others no longer than this.
constexpr int kBootstrapTimeoutMs = 300000;
constexpr unsigned char kPoison = 0xA5;
// Samples of each mode, packed in this order for the gather (ll_timing.hpp gives the spans).
constexpr size_t kEagerSpans = 3, kHookSpans = 4, kGraphSpans = 3, kLoopSpans = 3;
constexpr size_t kAllSpans = kEagerSpans + kHookSpans + kGraphSpans + kLoopSpans;

int max_tokens(const BenchOptions& o) {
  return *std::max_element(o.ll_tokens.begin(), o.ll_tokens.end());
}

testing::LowLatencyShape ll_shape(const BenchOptions& o, int tokens, bool use_fp8) {
  testing::LowLatencyShape s;
  s.num_ranks = o.ranks;
  s.max_tokens = max_tokens(o);
  s.num_tokens = tokens;
  s.hidden = o.hidden;
  s.num_experts = o.experts;
  s.num_topk = o.topk;
  s.use_fp8 = use_fp8;
  s.index_type = IndexType::kInt64;
  return s;
}

// What the in-process ranks share: the gate, and the host reference rank 0 computed.
struct LlShared {
  std::shared_ptr<StartGate> gate;
  std::vector<testing::LowLatencyRankOutputs> reference;  // [rank], the current case's
};

// One rank's part of a case before the ranks are combined.
struct RankCase {
  std::string problem;  // agreed by all ranks
  Samples eager, hook, graph, loop;
  double messages = 0;         // received by this rank
  double remote_messages = 0;  // of those, from ranks outside its NVLink domain
  double tokens = 0;           // sent by this rank
};

// Under mpirun no process holds the others' outputs: they compare 64-bit digests per field.
using Digest = std::array<uint64_t, 6>;
const char* const kDigestFields[6] = {"recv_count",  "layout_range", "recv_x",
                                      "recv_scales", "recv_src",     "combined"};

template <typename V>
uint64_t fnv1a(const V& v) {
  const auto* p = reinterpret_cast<const unsigned char*>(v.data());
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < v.size() * sizeof(v[0]); ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

Digest digest_of(const testing::LowLatencyRankOutputs& o) {
  return {fnv1a(o.recv_count),  fnv1a(o.layout_range), fnv1a(o.recv_x),
          fnv1a(o.recv_scales), fnv1a(o.recv_src),     fnv1a(o.combined)};
}

LatencyStat latency_stat(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  const size_t n = ms.size();
  const size_t p99 = std::min(n - 1, static_cast<size_t>(std::ceil(0.99 * n)) - 1);
  return {true, ms[n / 2] * 1000.0, ms[p99] * 1000.0};
}

// The fewest bytes each operation moves, all ranks, on its data path (DESIGN section 10).
// Dispatch: the sender reads each token's x row once (2H; it sends the row to all the token's
// experts from registers) and, per (token, expert) message, writes the message row (2H bf16, or
// H fp8 + H/128 fp32 scales) into the expert rank's staging; the receive reads it back and
// writes it into the packed recv_x: 2H per token + 3 x message row per message.
// Combine, per message: the expert rank reads its y row (2H), writes it into the source's
// staging, and the reduction reads it (3 x 2H); plus each output row written once (2H).
void set_min_bytes(double tokens, int hidden, LlCase* c) {
  const double H = hidden;
  const double message_row = ll_message_row_bytes(hidden, c->use_fp8);
  c->dispatch_min_bytes = tokens * 2.0 * H + c->num_messages * 3.0 * message_row;
  c->combine_min_bytes = c->num_messages * 3.0 * 2.0 * H + tokens * 2.0 * H;
}

class LlRankSession {
 public:
  LlRankSession(const BenchOptions& o, std::shared_ptr<Bootstrap> bootstrap, int device,
                LlShared& shared, bool opens_gate);
  ~LlRankSession();
  // Every (dtype, T) in order; stops at the first error (the communicator may be mid-round).
  // Meaningful on rank 0 only.
  std::vector<LlCase> run();

 private:
  template <typename... Args>
  void say(const char* fmt, Args... args) const {
    if (rank_ != 0 || !o_.prints) return;
    std::printf(fmt, args...);
    std::fflush(stdout);
  }
  void run_case(const testing::LowLatencyShape& shape, LlCase* c);
  std::string check_case(const testing::LowLatencyShape& shape,
                         testing::LowLatencyRankOutputs* got);
  void compute_reference(const testing::LowLatencyShape& shape);
  std::string compare_with_reference(const testing::LowLatencyRankOutputs& got);
  RankCase time_case(const testing::LowLatencyShape& shape,
                     const testing::LowLatencyRankOutputs& got);
  LlRoundInputs upload_inputs(const testing::LowLatencyShape& shape);
  std::string out_differs(const std::vector<unsigned char>& want, const char* mode);
  void summarize(const RankCase& mine, LlCase* c);

  const BenchOptions& o_;
  std::shared_ptr<Bootstrap> bs_;
  const int rank_;
  LlShared& shared_;
  std::vector<Digest> reference_digests_;  // mpirun, rank 0: [rank]
  std::unique_ptr<testing::Memory> memory_;
  Stream stream_ = nullptr;
  std::unique_ptr<Communicator> comm_;
  testing::Buffer x_, topk_, weights_, y_, out_;
  std::unique_ptr<LlTimer> timer_;
};

LlRankSession::LlRankSession(const BenchOptions& o, std::shared_ptr<Bootstrap> bootstrap,
                             int device, LlShared& shared, bool opens_gate)
    : o_(o), bs_(std::move(bootstrap)), rank_(bs_->rank()), shared_(shared) {
  const testing::LowLatencyShape shape = ll_shape(o, max_tokens(o), false);
  Config cfg = testing::ll_config_for(shape);
  cfg.dispatch_sms = o.sms.front();
  cfg.combine_sms = o.sms.front();
  cfg.transport = o.transport;
  cfg.ranks_per_domain = o.ranks_per_domain;
  stream_ = create_bench_stream(o.backend, device);
  memory_ = testing::make_memory(o.backend, device, stream_);  // no stream of its own
  comm_ = Communicator::create(bs_, cfg, o.backend, device);
  comm_->set_stream(stream_);    // non-blocking and known, so that it can be captured
  shared.gate->prepare(device);  // no rank issues work before every constructor has ended
  const size_t M = shape.max_tokens, H = shape.hidden, K = shape.num_topk;
  x_ = testing::Buffer(*memory_, M * H * 2);
  topk_ = testing::Buffer(*memory_, M * K * 8);
  weights_ = testing::Buffer(*memory_, M * K * 4);
  out_ = testing::Buffer(*memory_, M * H * 2);
  // y depends on (R, M, H, E, seed, rank) only: the same for every case, uploaded once.
  const std::vector<uint16_t> y = testing::make_ll_expert_output(shape, o.seed, rank_);
  y_ = testing::Buffer(*memory_, y.size() * 2);
  memory_->upload(y_.get(), y.data(), y.size() * 2);
  LlTimerSetup setup;
  setup.comm = comm_.get();
  setup.bootstrap = bs_.get();
  setup.gate = shared.gate.get();
  setup.opens_gate = opens_gate;
  setup.backend = o.backend;
  setup.stream = stream_;
  setup.device = device;
  setup.warmup = o.warmup;
  setup.replays = o.replays;
  setup.loop_calls = o.loop_calls;
  timer_ = std::make_unique<LlTimer>(setup);
}

LlRankSession::~LlRankSession() {
  timer_.reset();
  x_ = testing::Buffer();
  topk_ = testing::Buffer();
  weights_ = testing::Buffer();
  y_ = testing::Buffer();
  out_ = testing::Buffer();
  comm_.reset();  // before its stream
  destroy_bench_stream(o_.backend, stream_);
}

std::vector<LlCase> LlRankSession::run() {
  std::vector<LlCase> cases;
  for (DType dtype : o_.ll_dtypes) {
    for (int T : o_.ll_tokens) {
      LlCase c;
      c.tokens = T;
      c.use_fp8 = dtype == DType::kFP8E4M3;
      try {
        run_case(ll_shape(o_, T, c.use_fp8), &c);
      } catch (const CollectiveFailure& e) {
        c.problem = std::string("error: ") + e.what();
        say("ERROR: %s\nstopping the sweep: the communicator may be left mid-round\n", e.what());
        cases.push_back(c);
        return cases;
      }
      cases.push_back(c);
    }
  }
  collective_step(*bs_, [] {});  // no rank tears down while a peer is still timing
  return cases;
}

void LlRankSession::run_case(const testing::LowLatencyShape& shape, LlCase* c) {
  const char* dtype = shape.use_fp8 ? "fp8" : "bf16";
  auto start = std::chrono::steady_clock::now();
  auto seconds = [&start] {  // since the last call, for the progress lines
    const auto now = std::chrono::steady_clock::now();
    const double s = std::chrono::duration<double>(now - start).count();
    start = now;
    return s;
  };
  say("[%s T=%d] checking against the host reference... ", dtype, shape.num_tokens);
  testing::LowLatencyRankOutputs got;
  const std::string diff = check_case(shape, &got);
  if (!diff.empty()) {
    say("MISMATCH: %s\n", diff.c_str());
    c->problem = "MISMATCH: " + diff;
    return;
  }
  say("identical (%.1f s)\n[%s T=%d] timing %d replays (eager, hook%s%s)... ", seconds(), dtype,
      shape.num_tokens, o_.replays, o_.backend == Backend::kCuda ? ", graph" : "",
      o_.loop_calls > 0 ? ", graph loop" : "");
  const RankCase mine = time_case(shape, got);
  if (!mine.problem.empty()) {
    say("MISMATCH after timing: %s\n", mine.problem.c_str());
    c->problem = "MISMATCH after timing: " + mine.problem;
    return;
  }
  summarize(mine, c);
  say("done (%.1f s)\n", seconds());
}

// One round on this rank's own communicator, compared with the host reference backend run on
// the same inputs. Returns the first difference, the same text on every rank ("" if none).
std::string LlRankSession::check_case(const testing::LowLatencyShape& shape,
                                      testing::LowLatencyRankOutputs* got) {
  // Rank 0 computes the host reference on its own threads while every rank runs the round
  // under test: both are mostly host work on M-sized buffers (M = 256: about 1 GB per rank).
  std::future<void> reference;
  if (rank_ == 0) {
    reference = std::async(std::launch::async, [this, &shape] { compute_reference(shape); });
  }
  std::string mine;
  collective_step(*bs_, [&] {
    try {
      *got = testing::run_ll_round(*comm_, *bs_, *memory_, shape, kRouting, o_.seed, {})[0];
    } catch (const Error&) {
      throw;  // the library failed: an error, not a difference
    } catch (const std::runtime_error& e) {
      mine = "rank " + std::to_string(rank_) + ": " + e.what();  // wrote where it must not
    }
  });
  collective_step(*bs_, [&] {
    if (reference.valid()) reference.get();
  });
  const std::string diff = compare_with_reference(*got);  // collective under mpirun
  if (mine.empty()) mine = diff;
  return first_failure(*bs_, mine);
}

void LlRankSession::compute_reference(const testing::LowLatencyShape& shape) {
  auto outputs = testing::run_ll_cluster(Backend::kHost, shape, kRouting, o_.seed, {}, 1);
  std::vector<testing::LowLatencyRankOutputs>& per_rank = outputs[0][0];
  if (o_.world) {
    reference_digests_.clear();
    for (const auto& r : per_rank) reference_digests_.push_back(digest_of(r));
  } else {
    shared_.reference = std::move(per_rank);
  }
}

std::string LlRankSession::compare_with_reference(const testing::LowLatencyRankOutputs& got) {
  const std::string me = "rank " + std::to_string(rank_) + ": ";
  if (!o_.world) {
    const std::string diff = testing::first_difference(shared_.reference[rank_], got);
    return diff.empty() ? "" : me + diff;
  }
  const Digest mine = digest_of(got);
  std::vector<Digest> all(bs_->size());
  bs_->allGather(mine.data(), all.data(), sizeof(Digest));
  if (rank_ != 0) return "";
  for (size_t r = 0; r < all.size(); ++r) {
    for (size_t f = 0; f < mine.size(); ++f) {
      if (all[r][f] != reference_digests_[r][f]) {
        return "rank " + std::to_string(r) + ": " + kDigestFields[f] +
               " differs from the host reference (digests; run in-process for the element)";
      }
    }
  }
  return "";
}

LlRoundInputs LlRankSession::upload_inputs(const testing::LowLatencyShape& shape) {
  // The checked round's inputs (pair 0 of run_ll_round uses this seed), so that its combined
  // output is what every timed replay must produce too.
  const testing::LowLatencyRankData d = testing::make_ll_rank_data(shape, kRouting, o_.seed, rank_);
  if (!d.x.empty()) memory_->upload(x_.get(), d.x.data(), d.x.size() * 2);
  if (!d.topk_idx.empty()) memory_->upload(topk_.get(), d.topk_idx.data(), d.topk_idx.size());
  if (!d.topk_weights.empty()) {
    memory_->upload(weights_.get(), d.topk_weights.data(), d.topk_weights.size() * 4);
  }
  LlRoundInputs in;
  in.dispatch.x = x_.get();
  in.dispatch.topk_idx = topk_.get();
  in.dispatch.num_tokens = d.num_tokens;
  in.dispatch.num_topk = shape.num_topk;
  in.dispatch.use_fp8 = shape.use_fp8;
  in.y = y_.get();
  in.topk_weights = weights_.as<float>();
  in.out = out_.get();
  return in;
}

std::string LlRankSession::out_differs(const std::vector<unsigned char>& want, const char* mode) {
  std::vector<unsigned char> got(want.size());
  if (!got.empty()) memory_->download(got.data(), out_.get(), got.size());
  const auto diff = std::mismatch(want.begin(), want.end(), got.begin());
  if (diff.first == want.end()) return "";
  return "rank " + std::to_string(rank_) + ": " + mode + " replays: out byte " +
         std::to_string(diff.first - want.begin()) + " differs from the checked round";
}

RankCase LlRankSession::time_case(const testing::LowLatencyShape& shape,
                                  const testing::LowLatencyRankOutputs& got) {
  RankCase rc;
  rc.messages = std::accumulate(got.recv_count.begin(), got.recv_count.end(), 0.0);
  const int R = bs_->size(), L = o_.ranks_per_domain > 0 ? o_.ranks_per_domain : R;
  for (size_t i = 0; i < got.layout_range.size() / 2; ++i) {  // [Le][R][2]: (first row, rows)
    const int s = static_cast<int>(i % R);
    if (s / L != rank_ / L) rc.remote_messages += got.layout_range[2 * i + 1];
  }
  LlRoundInputs in;
  collective_step(*bs_, [&] { in = upload_inputs(shape); });
  rc.tokens = in.dispatch.num_tokens;
  // Each mode starts from a poisoned `out`: a mode that never wrote it cannot pass.
  auto timed = [&](const char* mode, Samples (LlTimer::*time_mode)(const LlRoundInputs&)) {
    collective_step(*bs_, [&] { memory_->fill(out_.get(), kPoison, out_.bytes()); });
    Samples s = (timer_.get()->*time_mode)(in);
    std::string mine;
    collective_step(*bs_, [&] { mine = out_differs(got.combined, mode); });
    const std::string failure = first_failure(*bs_, mine);
    if (rc.problem.empty()) rc.problem = failure;
    return s;
  };
  rc.eager = timed("eager", &LlTimer::time_eager);
  rc.hook = timed("hook", &LlTimer::time_hook);
  if (o_.backend == Backend::kCuda) rc.graph = timed("graph", &LlTimer::time_graph);
  if (o_.loop_calls > 0) rc.loop = timed("graph loop", &LlTimer::time_graph_loop);
  return rc;
}

// Collective: every rank's samples to every rank; rank 0 fills `c`.
void LlRankSession::summarize(const RankCase& mine, LlCase* c) {
  const size_t n = o_.replays, per_rank = kAllSpans * n + 3;
  std::vector<double> packed(per_rank, 0.0);
  auto put = [&](const Samples& s, size_t first_span) {
    for (size_t k = 0; k < s.size(); ++k) {
      std::copy(s[k].begin(), s[k].end(), packed.begin() + (first_span + k) * n);
    }
  };
  put(mine.eager, 0);
  put(mine.hook, kEagerSpans);
  put(mine.graph, kEagerSpans + kHookSpans);
  put(mine.loop, kEagerSpans + kHookSpans + kGraphSpans);
  packed[kAllSpans * n] = mine.messages;
  packed[kAllSpans * n + 1] = mine.tokens;
  packed[kAllSpans * n + 2] = mine.remote_messages;
  std::vector<double> all(per_rank * bs_->size());
  bs_->allGather(packed.data(), all.data(), per_rank * sizeof(double));
  if (rank_ != 0) return;
  auto stat = [&](size_t span) {
    std::vector<double> slowest(n, 0.0);
    for (int r = 0; r < bs_->size(); ++r) {
      const double* times = all.data() + r * per_rank + span * n;
      for (size_t i = 0; i < n; ++i) slowest[i] = std::max(slowest[i], times[i]);
    }
    return latency_stat(slowest);
  };
  c->dispatch = stat(0);
  c->combine = stat(1);
  c->dispatch_combine = stat(2);
  c->dispatch_send = stat(3);
  c->dispatch_recv = stat(4);
  c->combine_send = stat(5);
  c->combine_recv = stat(6);
  if (!mine.graph.empty()) {
    c->graph_dispatch = stat(7);
    c->graph_combine = stat(8);
    c->graph_dispatch_combine = stat(9);
  }
  if (!mine.loop.empty()) {
    c->loop_dispatch = stat(10);
    c->loop_combine = stat(11);
    c->loop_dispatch_combine = stat(12);
  }
  double tokens = 0;
  for (int r = 0; r < bs_->size(); ++r) {
    c->num_messages += all[r * per_rank + kAllSpans * n];
    tokens += all[r * per_rank + kAllSpans * n + 1];
    c->num_remote_messages += all[r * per_rank + kAllSpans * n + 2];
  }
  set_min_bytes(tokens, o_.hidden, c);
}

std::vector<LlCase> run_ranks(const BenchOptions& o, const std::shared_ptr<StartGate>& gate) {
  LlShared shared;
  shared.gate = gate;
  if (o.world) return LlRankSession(o, o.world, o.device, shared, true).run();
  std::vector<LlCase> cases;
  const auto bs = testing::shared_bootstraps(o.ranks, kBootstrapTimeoutMs);
  const int devices = o.backend == Backend::kCuda ? testing::cuda_device_count() : 1;
  testing::run_on_ranks(o.ranks, [&](int r) {
    const int device = o.backend == Backend::kCuda ? r % devices : 0;
    std::vector<LlCase> mine = LlRankSession(o, bs[r], device, shared, r == 0).run();
    if (r == 0) cases = std::move(mine);
  });
  return cases;
}

}  // namespace

int run_ll_bench(const BenchOptions& o) {
  try {
    LlReport rep;
    rep.options = o;
    rep.device = o.backend == Backend::kCuda ? device_description() : "host (threads)";
    if (o.world) rep.device += ", " + std::to_string(o.ranks) + " processes (mpirun)";
    rep.max_tokens = max_tokens(o);
    if (o.backend == Backend::kCuda && o.prints) {
      rep.copy_gbps = measure_copy_gbps(o.device);
      rep.gpus = gpus_used(o.ranks);
    }
    if (o.prints) {
      std::printf(
          "low-latency mode: %d ranks, M = %d, H = %d, K = %d, E = %d; %d warm-up + %d "
          "timed replays per figure\n",
          o.ranks, rep.max_tokens, o.hidden, o.topk, o.experts, o.warmup, o.replays);
      std::fflush(stdout);
    }
    rep.cases = run_ranks(o, make_start_gate(o.backend, o.device));
    if (!o.prints) return 0;
    print_ll_tables(rep);
    if (!o.json_path.empty()) write_ll_json(rep, o.json_path);
    for (const LlCase& c : rep.cases) {
      if (!c.problem.empty()) return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "epcomm-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}

}  // namespace epcomm::bench
