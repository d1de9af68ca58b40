// Low-latency harness: deterministic inputs, poisoned communicator buffers, collected outputs.
#include "ll_harness.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <numeric>
#include <sstream>
#include <stdexcept>

#include "harness.hpp"

namespace epcomm::testing {
namespace {

constexpr unsigned char kPoison = kLlPoison;
// `out` gets this many poisoned rows past its T rows, to catch writes past the last token.
constexpr int kOutGuardRows = 2;

// A random finite bf16 with exponent in [2^lo, 2^hi] (biased exponents), random sign and mantissa.
uint16_t bf16_with_exponent(Rng& rng, int lo, int hi) {
  const uint64_t r = rng.next();
  const uint16_t sign = static_cast<uint16_t>((r & 1) << 15);
  const uint16_t exponent = static_cast<uint16_t>(lo + static_cast<int>((r >> 1) % (hi - lo + 1)));
  const uint16_t mantissa = static_cast<uint16_t>((r >> 8) & 0x7f);
  return static_cast<uint16_t>(sign | (exponent << 7) | mantissa);
}

// One 128-element block of x. Most blocks are ordinary values; the rest stress the fp8 cast:
// zero blocks (amax below the 1e-4 floor), tiny blocks with bf16 subnormals (also under the
// floor), huge magnitudes (a tiny 448 / a), and one spike over a wide spread (most quantized
// values land on e4m3 subnormals or zero).
void fill_block(Rng& rng, uint16_t* block) {
  const int kind = rng.below(16);
  for (int i = 0; i < kFp8ScaleBlock; ++i) {
    uint16_t v;
    if (kind < 10) {
      v = bf16_with_exponent(rng, 120, 128);  // about 2^-7 .. 4
    } else if (kind == 10) {
      v = static_cast<uint16_t>((rng.next() & 1) << 15);  // +0 or -0
    } else if (kind == 11) {
      v = bf16_with_exponent(rng, 0, 100);  // subnormals up to 2^-27
    } else if (kind == 12 || kind == 13) {
      v = bf16_with_exponent(rng, 180, 250);  // 2^53 .. 2^123
    } else {
      v = bf16_with_exponent(rng, 90, 130);  // 2^-37 .. 8
    }
    block[i] = v;
  }
  if (kind >= 14) block[rng.below(kFp8ScaleBlock)] = bf16_with_exponent(rng, 137, 137);  // 2^10
}

// The views of one low-latency buffer, as a dispatch on it returned them.
struct BufferViews {
  void* recv_x = nullptr;
  void* recv_scales = nullptr;  // recv_scales, or recv_scale_codes with use_ue8m0
  int* recv_count = nullptr;
  LowLatencySource* recv_src = nullptr;
  int* layout_range = nullptr;
  uint64_t call = 0;  // the dispatch that returned them
};

BufferViews views_of(const LowLatencyDispatchResult& res) {
  void* scales = res.recv_scale_codes != nullptr ? static_cast<void*>(res.recv_scale_codes)
                                                 : static_cast<void*>(res.recv_scales);
  return {res.recv_x, scales, res.recv_count, res.recv_src, res.layout_range, res.handle.call()};
}

// Sizes of one rank's low-latency outputs.
struct Sizes {
  explicit Sizes(const LowLatencyShape& s)
      : num_local_experts(s.num_experts / s.num_ranks),
        rows_per_expert(static_cast<size_t>(s.num_ranks) * s.max_tokens),
        row_bytes(static_cast<size_t>(s.hidden) * (s.use_fp8 ? 1 : 2)),
        scale_row_bytes(s.use_fp8 ? static_cast<size_t>(s.hidden / kFp8ScaleBlock) *
                                        (s.use_ue8m0() ? 1 : 4)
                                  : 0) {}
  int num_local_experts;
  size_t rows_per_expert, row_bytes, scale_row_bytes;
  size_t rows() const { return num_local_experts * rows_per_expert; }
};

void poison(Memory& memory, const BufferViews& v, const LowLatencyShape& shape) {
  const Sizes z(shape);
  memory.fill(v.recv_x, kPoison, z.rows() * z.row_bytes);
  if (shape.use_fp8) memory.fill(v.recv_scales, kPoison, z.rows() * z.scale_row_bytes);
  memory.fill(v.recv_count, kPoison, z.num_local_experts * sizeof(int));
  memory.fill(v.recv_src, kPoison, z.rows() * sizeof(LowLatencySource));
  memory.fill(v.layout_range, kPoison,
              static_cast<size_t>(z.num_local_experts) * shape.num_ranks * 2 * sizeof(int));
}

std::vector<unsigned char> download(Memory& memory, const void* src, size_t bytes) {
  std::vector<unsigned char> out(bytes);
  if (bytes) memory.download(out.data(), src, bytes);
  return out;
}

// Appends rows [0, count) of each expert of `all` ([Le][R * M][row_bytes]) to `used` and
// reports the first expert whose rows [count, R * M) do not all hold the poison.
void split_rows(const std::vector<unsigned char>& all, const std::vector<int>& count,
                size_t rows_per_expert, size_t row_bytes, const char* name, int rank,
                std::vector<unsigned char>& used, std::ostringstream& problems) {
  for (size_t le = 0; le < count.size(); ++le) {
    const unsigned char* expert = all.data() + le * rows_per_expert * row_bytes;
    const size_t n = static_cast<size_t>(count[le]);
    used.insert(used.end(), expert, expert + n * row_bytes);
    for (size_t i = n * row_bytes; i < rows_per_expert * row_bytes; ++i) {
      if (expert[i] != kPoison) {
        problems << "rank " << rank << ": " << name << " of local expert " << le << " row "
                 << i / row_bytes << " (byte " << i % row_bytes << ") was written, but only " << n
                 << " rows were received; ";
        break;
      }
    }
  }
}

// Downloads the outputs of one dispatch/combine pair and checks every poisoned byte it must
// not have written. Problems go to `problems` (thrown after the round's last collective).
LowLatencyRankOutputs collect(Memory& memory, const LowLatencyShape& shape, const BufferViews& v,
                              const void* out, size_t out_total_bytes, int num_tokens, int rank,
                              std::ostringstream& problems) {
  const Sizes z(shape);
  const int R = shape.num_ranks, Le = z.num_local_experts;
  LowLatencyRankOutputs o;
  o.recv_count.resize(Le);
  memory.download(o.recv_count.data(), v.recv_count, Le * sizeof(int));
  o.layout_range.resize(static_cast<size_t>(Le) * R * 2);
  memory.download(o.layout_range.data(), v.layout_range, o.layout_range.size() * sizeof(int));
  std::vector<int> count = o.recv_count;
  for (int le = 0; le < Le; ++le) {
    if (count[le] < 0 || static_cast<size_t>(count[le]) > z.rows_per_expert) {
      problems << "rank " << rank << ": recv_count[" << le << "] = " << count[le]
               << " is outside [0, R * M = " << z.rows_per_expert << "]; ";
      count[le] = 0;  // keep the downloads in bounds; the difference shows in recv_count
    }
  }
  split_rows(download(memory, v.recv_x, z.rows() * z.row_bytes), count, z.rows_per_expert,
             z.row_bytes, "recv_x", rank, o.recv_x, problems);
  if (shape.use_fp8) {
    split_rows(download(memory, v.recv_scales, z.rows() * z.scale_row_bytes), count,
               z.rows_per_expert, z.scale_row_bytes, "recv_scales", rank, o.recv_scales, problems);
  }
  split_rows(download(memory, v.recv_src, z.rows() * sizeof(LowLatencySource)), count,
             z.rows_per_expert, sizeof(LowLatencySource), "recv_src", rank, o.recv_src, problems);

  const size_t out_bytes = static_cast<size_t>(num_tokens) * shape.hidden * 2;
  std::vector<unsigned char> all_out = download(memory, out, out_total_bytes);
  o.combined.assign(all_out.begin(), all_out.begin() + out_bytes);
  for (size_t i = out_bytes; i < all_out.size(); ++i) {
    if (all_out[i] != kPoison) {
      problems << "rank " << rank << ": out was written past its " << num_tokens
               << " rows (guard byte " << i - out_bytes << "); ";
      break;
    }
  }
  return o;
}

// One pair's inputs in the backend's memory.
struct PairInputs {
  LowLatencyRankData data;
  Buffer x, topk_idx, topk_weights, y, out;
};

void upload(Memory& memory, Buffer& buf, const void* src, size_t bytes) {
  buf = Buffer(memory, std::max<size_t>(bytes, 16));  // never null, even for T = 0
  if (bytes) memory.upload(buf.get(), src, bytes);
}

// The stats after a round against their values before: masked peers' entries unchanged, no
// entry decreased, and every entry unchanged on the host reference (no device waits).
void check_wait_stats(Memory& memory, const Buffer& stats, const std::vector<int64_t>& before,
                      const LowLatencyShape& shape, int rank, bool host,
                      std::ostringstream& problems) {
  std::vector<int64_t> after(before.size());
  memory.download(after.data(), stats.get(), after.size() * sizeof(int64_t));
  for (size_t i = 0; i < after.size(); ++i) {
    const int peer = static_cast<int>(i % shape.num_ranks);
    const bool fixed = shape.masks(rank, peer) || host;
    if (after[i] < before[i] || (fixed && after[i] != before[i])) {
      problems << "rank " << rank << ": " << (i < before.size() / 2 ? "dispatch" : "combine")
               << " wait_cost_stats[" << peer << "] went from " << before[i] << " to " << after[i]
               << (fixed ? " (must not change)" : " (must not decrease)") << "; ";
    }
  }
}

bool same_views(const BufferViews& a, const BufferViews& b, bool fp8) {
  return a.recv_x == b.recv_x && a.recv_count == b.recv_count && a.recv_src == b.recv_src &&
         a.layout_range == b.layout_range && (!fp8 || a.recv_scales == b.recv_scales);
}

}  // namespace

std::string LowLatencyShape::name() const {
  std::ostringstream os;
  os << "R" << num_ranks << "_M" << max_tokens << "_T" << num_tokens << "_H" << hidden << "_E"
     << num_experts << "_K" << num_topk << (use_fp8 ? "_fp8" : "_bf16");
  if (use_ue8m0()) {
    os << "_ue8m0";
  } else if (round_scale()) {
    os << "_pow2";
  }
  os << "_" << epcomm::to_string(index_type);
  if (masked_ranks != 0) os << "_masked" << std::hex << masked_ranks;
  return os.str();
}

void apply_ll_masks(Communicator& comm, const LowLatencyShape& shape) {
  for (int peer = 0; peer < shape.num_ranks; ++peer) {
    comm.low_latency_update_mask(peer, shape.masks(comm.rank(), peer));
  }
}

int ll_num_tokens(const LowLatencyShape& shape, int rank) {
  return shape.num_ranks > 1 && rank == shape.num_ranks - 1 ? shape.num_tokens / 2
                                                            : shape.num_tokens;
}

Config ll_config_for(const LowLatencyShape& shape) {
  Config c;
  c.num_experts = shape.num_experts;
  c.hidden = shape.hidden;
  c.max_tokens_per_rank = 1;  // the high-throughput pool is not used here
  c.max_topk = std::max(shape.num_topk, 1);
  c.index_type = shape.index_type;
  c.ll_max_tokens_per_rank = shape.max_tokens;
  return c;
}

LowLatencyRankData make_ll_rank_data(const LowLatencyShape& shape, Routing routing, uint64_t seed,
                                     int rank) {
  Rng rng(seed * 1000033ull + static_cast<uint64_t>(rank) * 104729ull + 0x11);
  const int T = ll_num_tokens(shape, rank), K = shape.num_topk, H = shape.hidden;
  const int E = shape.num_experts, R = shape.num_ranks;
  LowLatencyRankData d;
  d.num_tokens = T;

  d.topk_idx = draw_topk_idx(rng, routing, E, R, T, K, shape.index_type, true);
  d.topk_weights.resize(static_cast<size_t>(T) * K);
  for (auto& w : d.topk_weights) w = static_cast<float>(rng.uniform() * 2.0 - 0.5);
  d.x.resize(static_cast<size_t>(T) * H);
  for (size_t b = 0; b < d.x.size(); b += kFp8ScaleBlock) fill_block(rng, d.x.data() + b);
  return d;
}

std::vector<uint16_t> make_ll_expert_output(const LowLatencyShape& shape, uint64_t seed, int rank) {
  Rng rng(seed * 7777793ull + static_cast<uint64_t>(rank) * 15485863ull + 0x22);
  const size_t rows =
      static_cast<size_t>(shape.num_experts / shape.num_ranks) * shape.num_ranks * shape.max_tokens;
  std::vector<uint16_t> y(rows * shape.hidden);
  for (auto& v : y) v = random_wide_bf16(rng);  // a wrong order of the fmaf chain changes bits
  return y;
}

std::string first_difference(const LowLatencyRankOutputs& want, const LowLatencyRankOutputs& got) {
  std::ostringstream os;
  // Names row i of the packed recv rows as (local expert, row), using want's counts.
  auto where = [&](size_t row) {
    std::ostringstream w;
    for (size_t le = 0; le < want.recv_count.size(); ++le) {
      if (row < static_cast<size_t>(want.recv_count[le])) {
        w << " (local expert " << le << ", row " << row << ")";
        return w.str();
      }
      row -= want.recv_count[le];
    }
    return std::string();
  };
  auto compare = [&](const char* name, const auto& a, const auto& b, size_t elems_per_row) {
    if (!os.str().empty()) return;
    if (a.size() != b.size()) {
      os << name << ": size " << b.size() << ", expected " << a.size();
      return;
    }
    for (size_t i = 0; i < a.size(); ++i) {
      if (a[i] != b[i]) {
        os << name << ": first difference at element " << i << " (got " << +b[i] << ", expected "
           << +a[i] << ")";
        if (elems_per_row) os << where(i / elems_per_row);
        return;
      }
    }
  };
  size_t total_rows = 0;
  for (int c : want.recv_count) total_rows += std::max(c, 0);
  auto per_row = [&](const std::vector<unsigned char>& v) {
    return total_rows ? v.size() / total_rows : 0;
  };
  compare("recv_count", want.recv_count, got.recv_count, 0);
  compare("layout_range", want.layout_range, got.layout_range, 0);
  compare("recv_src", want.recv_src, got.recv_src, sizeof(LowLatencySource));
  compare("recv_x", want.recv_x, got.recv_x, per_row(want.recv_x));
  compare("recv_scales", want.recv_scales, got.recv_scales, per_row(want.recv_scales));
  compare("combined", want.combined, got.combined, 0);
  return os.str();
}

void poison_ll_outputs(Memory& memory, const LowLatencyShape& shape,
                       const LowLatencyDispatchResult& res) {
  poison(memory, views_of(res), shape);
}

LowLatencyRankOutputs collect_ll_outputs(Memory& memory, const LowLatencyShape& shape,
                                         const LowLatencyDispatchResult& res, const void* out,
                                         size_t out_total_bytes, int num_tokens, int rank) {
  std::ostringstream problems;
  LowLatencyRankOutputs o =
      collect(memory, shape, views_of(res), out, out_total_bytes, num_tokens, rank, problems);
  if (!problems.str().empty()) throw std::runtime_error(problems.str());
  return o;
}

std::vector<LowLatencyRankOutputs> run_ll_round(Communicator& comm, Bootstrap& bootstrap,
                                                Memory& memory, const LowLatencyShape& shape,
                                                Routing routing, uint64_t seed,
                                                const LowLatencyRoundOptions& options) {
  const int rank = comm.rank(), K = shape.num_topk, H = shape.hidden;
  if (comm.num_ranks() != shape.num_ranks || options.in_flight < 1 || options.in_flight > 2) {
    throw std::invalid_argument("run_ll_round: shape " + shape.name() + " on " +
                                std::to_string(comm.num_ranks()) + " ranks with in_flight " +
                                std::to_string(options.in_flight));
  }
  const int pairs = options.in_flight;
  std::vector<PairInputs> in(pairs);
  for (int p = 0; p < pairs; ++p) {
    PairInputs& pi = in[p];
    pi.data = make_ll_rank_data(shape, routing, seed + p, rank);
    const std::vector<uint16_t> y = make_ll_expert_output(shape, seed + p, rank);
    upload(memory, pi.x, pi.data.x.data(), pi.data.x.size() * 2);
    upload(memory, pi.topk_idx, pi.data.topk_idx.data(), pi.data.topk_idx.size());
    upload(memory, pi.topk_weights, pi.data.topk_weights.data(), pi.data.topk_weights.size() * 4);
    upload(memory, pi.y, y.data(), y.size() * 2);
    pi.out = Buffer(memory, static_cast<size_t>(pi.data.num_tokens + kOutGuardRows) * H * 2);
  }
  // NOTE: no rank starts a call (whose kernels wait for peers) while a peer still allocates: an
  // allocation that grows the memory pool can wait for the kernels running on the GPU. One H100
  // run (c190c6b) timed out once in the first dispatch with the count of a peer that was, by
  // this account, still allocating.
  apply_ll_masks(comm, shape);
  bootstrap.barrier();

  // The outputs are the communicator's own buffers: an empty pair on each buffer shows their
  // views, so that both can be poisoned before the pairs under test.
  BufferViews views[2];
  for (int i = 0; i < 2; ++i) {
    LowLatencyDispatchInputs empty;
    empty.num_topk = K;
    empty.use_fp8 = shape.use_fp8;
    empty.round_scale = shape.round_scale();
    empty.use_ue8m0 = shape.use_ue8m0();
    const LowLatencyDispatchResult res = comm.low_latency_dispatch(empty);
    views[res.handle.buffer()] = views_of(res);
    comm.low_latency_combine(in[0].y.get(), nullptr, nullptr, res.handle, nullptr);
  }
  comm.synchronize();
  bootstrap.barrier();  // every rank is done with both buffers before any is poisoned
  for (const BufferViews& v : views) poison(memory, v, shape);
  // [dispatch R | combine R] int64, from earlier values that the calls may only increase.
  const size_t stats_count = 2 * static_cast<size_t>(shape.num_ranks);
  std::vector<int64_t> stats_before(stats_count);
  for (size_t i = 0; i < stats_count; ++i) stats_before[i] = static_cast<int64_t>(i * 1000 + rank);
  Buffer stats(memory, stats_count * sizeof(int64_t));
  memory.upload(stats.get(), stats_before.data(), stats_count * sizeof(int64_t));
  for (PairInputs& pi : in) memory.fill(pi.out.get(), kPoison, pi.out.bytes());
  bootstrap.barrier();  // no peer sends into a buffer before its owner poisoned it

  std::vector<LowLatencyDispatchResult> res(pairs);
  for (int p = 0; p < pairs; ++p) {
    LowLatencyDispatchInputs d;
    d.x = in[p].x.get();
    d.topk_idx = in[p].topk_idx.get();
    d.num_tokens = in[p].data.num_tokens;
    d.num_topk = K;
    d.use_fp8 = shape.use_fp8;
    d.round_scale = shape.round_scale();
    d.use_ue8m0 = shape.use_ue8m0();
    d.wait_cost_stats = options.wait_stats ? stats.as<int64_t>() : nullptr;
    res[p] = comm.low_latency_dispatch(d, options.hook);
  }
  if (options.hook) {
    for (const auto& r : res) comm.low_latency_receive(r.handle);
  }
  LowLatencyCombineOptions combine_options;
  combine_options.wait_cost_stats =
      options.wait_stats ? stats.as<int64_t>() + shape.num_ranks : nullptr;
  for (int p = 0; p < pairs; ++p) {
    comm.low_latency_combine(in[p].y.get(), in[p].topk_idx.get(), in[p].topk_weights.as<float>(),
                             res[p].handle, in[p].out.get(), options.hook, combine_options);
  }
  if (options.hook) {
    for (const auto& r : res) comm.low_latency_receive(r.handle);
  }
  comm.synchronize();
  std::ostringstream problems;
  if (options.wait_stats) {
    check_wait_stats(memory, stats, stats_before, shape, rank, comm.backend() == Backend::kHost,
                     problems);
  }

  std::vector<LowLatencyRankOutputs> outputs;
  for (int p = 0; p < pairs; ++p) {
    const BufferViews got = views_of(res[p]);
    const BufferViews& known = views[res[p].handle.buffer()];
    if (res[p].rows_per_expert != shape.num_ranks * shape.max_tokens) {
      problems << "rank " << rank << ": rows_per_expert = " << res[p].rows_per_expert
               << ", expected R * M = " << shape.num_ranks * shape.max_tokens << "; ";
    }
    if (!same_views(got, known, shape.use_fp8)) {
      problems << "rank " << rank << ": dispatch #" << got.call << " on buffer "
               << res[p].handle.buffer() << " returned other views than dispatch #" << known.call
               << " on the same buffer; ";
      continue;  // the poison went elsewhere; its check would mislead
    }
    outputs.push_back(collect(memory, shape, got, in[p].out.get(), in[p].out.bytes(),
                              in[p].data.num_tokens, rank, problems));
  }
  bootstrap.barrier();  // no peer starts another call while this rank reads its buffers
  if (!problems.str().empty()) throw std::runtime_error(problems.str());
  return outputs;
}

std::vector<std::vector<std::vector<LowLatencyRankOutputs>>> run_ll_cluster(
    Backend backend, const LowLatencyShape& shape, Routing routing, uint64_t seed,
    const LowLatencyRoundOptions& options, int rounds) {
  return run_ll_cluster(backend, ll_config_for(shape), shape, routing, seed, options, rounds);
}

std::vector<std::vector<std::vector<LowLatencyRankOutputs>>> run_ll_cluster(
    Backend backend, const Config& config, const LowLatencyShape& shape, Routing routing,
    uint64_t seed, const LowLatencyRoundOptions& options, int rounds) {
  const int R = shape.num_ranks;
  const auto shared = shared_bootstraps(R, 120000);
  std::vector<std::vector<std::vector<LowLatencyRankOutputs>>> outputs(
      rounds, std::vector<std::vector<LowLatencyRankOutputs>>(
                  options.in_flight, std::vector<LowLatencyRankOutputs>(R)));
  const int devices = backend == Backend::kCuda ? cuda_device_count() : 1;
  if (devices == 0) throw std::runtime_error("run_ll_cluster: no GPU present");
  run_on_ranks(R, [&](int rank) {
    const int device = backend == Backend::kCuda ? rank % devices : 0;
    auto memory = make_memory(backend, device);
    auto comm = Communicator::create(shared[rank], config, backend, device);
    for (int round = 0; round < rounds; ++round) {
      std::exception_ptr failure;
      try {
        auto outs = run_ll_round(*comm, *shared[rank], *memory, shape, routing,
                                 seed + 2 * static_cast<uint64_t>(round), options);
        for (size_t p = 0; p < outs.size(); ++p) outputs[round][p][rank] = std::move(outs[p]);
      } catch (const std::exception& e) {
        // run_on_ranks rethrows one rank's error; every failing rank's says who waited for whom.
        std::fprintf(stderr, "rank %d failed: %s\n", rank, e.what());
        failure = std::current_exception();
      } catch (...) {
        failure = std::current_exception();
      }
      // Stop together: a rank that failed alone would leave its peers waiting in the next
      // round. Only the failing ranks report, so run_on_ranks rethrows a real cause.
      const int32_t mine = failure ? 1 : 0;
      std::vector<int32_t> all(R);
      shared[rank]->allGather(&mine, all.data(), sizeof(mine));
      if (failure) std::rethrow_exception(failure);
      if (std::count(all.begin(), all.end(), 1) > 0) return;
    }
    shared[rank]->barrier();  // no rank tears down while a peer may still reach its memory
  });
  return outputs;
}

}  // namespace epcomm::testing
