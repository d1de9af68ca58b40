// Measurement: every rank times its own calls; a call's time is the slowest rank's.
#include "bench_run.hpp"

#include <algorithm>
#include <mutex>
#include <stdexcept>

#include "device_support.hpp"
#include "independent_check.hpp"

namespace epcomm::bench {
namespace {

constexpr testing::Routing kRouting = testing::Routing::kUniform;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

}  // namespace

testing::Shape bench_shape(const BenchOptions& o) {
  testing::Shape s;
  s.num_ranks = o.ranks;
  s.num_tokens = o.tokens;
  s.hidden = o.hidden;
  s.num_experts = o.experts;
  s.num_topk = o.topk;
  s.dtype = o.dtype;
  s.index_type = IndexType::kInt64;
  s.with_weights = true;
  return s;
}

RoutingCounts routing_counts(const BenchOptions& o, RecvLayout layout) {
  const testing::Shape shape = bench_shape(o);
  const int R = o.ranks, Le = o.experts / R;
  const bool expert_major = layout == RecvLayout::kExpertMajor;
  RoutingCounts c;
  c.data_rows.assign(R, 0);
  c.peer_rows.assign(R, 0);
  std::vector<int> group(static_cast<size_t>(R) * Le, 0);  // [rank][local expert]: pairs
  for (int s = 0; s < R; ++s) {
    const testing::RankData d = testing::make_rank_routing(shape, kRouting, o.seed, s);
    std::vector<bool> reached(R);  // token-major: one row per (token, destination rank)
    for (int t = 0; t < d.num_tokens; ++t) {
      std::fill(reached.begin(), reached.end(), false);
      for (int k = 0; k < d.num_topk; ++k) {
        if (!d.first_slot(t, k)) continue;
        const int64_t e = d.expert(t, k);
        const int dest = static_cast<int>(e / Le);
        if (!expert_major && reached[dest]) continue;
        reached[dest] = true;
        ++c.data_rows[dest];
        if (dest != s) ++c.peer_rows[dest];
        if (expert_major) ++group[e];
      }
    }
  }
  c.rows = c.data_rows;
  if (expert_major) {  // each group padded up to a multiple of the alignment
    const int a = o.expert_alignment;
    for (int r = 0; r < R; ++r) {
      c.rows[r] = 0;
      for (int le = 0; le < Le; ++le) c.rows[r] += (group[r * Le + le] + a - 1) / a * a;
    }
  }
  return c;
}

Config bench_config(const BenchOptions& o, const Setup& setup) {
  Config c = testing::config_for(bench_shape(o));
  c.algorithm = setup.algorithm;
  c.dispatch_sms = setup.sms;
  c.combine_sms = setup.sms;
  c.ring_slots = o.ring_slots;
  c.ring_chunk = o.ring_chunk;
  c.transport = o.transport;
  c.ranks_per_domain = o.ranks_per_domain;
  if (setup.layout == RecvLayout::kExpertMajor) {
    // Pairs outnumber tokens: the pool holds the busiest rank's pairs and padding, as a caller
    // sizes it from its worst routing (the timed calls do not wait for counts).
    const std::vector<int> rows = routing_counts(o, setup.layout).rows;
    c.max_recv_rows = std::max(1, *std::max_element(rows.begin(), rows.end()));
  }
  return c;
}

namespace {

// The checked round: the timed calls' worst-case mode and layout, y = the received rows, and
// in the expert-major layout the pair weights applied (as a MoE layer combines).
testing::RoundOptions round_options(const BenchOptions& o, RecvLayout layout) {
  testing::RoundOptions round;
  round.y_is_recv_x = true;
  round.wait_num_recv = false;
  round.layout = layout;
  round.apply_weights = layout == RecvLayout::kExpertMajor;
  round.expert_alignment = o.expert_alignment;
  return round;
}

// One rank's outputs against the computation from the inputs alone.
std::string check_rank(const BenchOptions& o, const Setup& setup, const Config& cfg, int rank,
                       const testing::RankOutputs& got) {
  const testing::RoundOptions round = round_options(o, setup.layout);
  if (setup.layout == RecvLayout::kExpertMajor) {
    return testing::check_expert_major_rank(bench_shape(o), kRouting, o.seed, rank, got, round,
                                            cfg);
  }
  return testing::check_rank_independently(bench_shape(o), kRouting, o.seed, rank, got, true,
                                           o.ranks_per_domain);
}

}  // namespace

std::vector<testing::RankOutputs> reference_outputs(const BenchOptions& o, RecvLayout layout) {
  const Setup host{Algorithm::kFlat, layout, 1};
  return testing::run_cluster(Backend::kHost, bench_config(o, host), bench_shape(o), kRouting,
                              o.seed, round_options(o, layout))[0];
}

std::string check_configuration(const BenchOptions& o, const Setup& setup,
                                const std::vector<testing::RankOutputs>& reference) {
  const testing::RoundOptions round = round_options(o, setup.layout);
  const Config cfg = bench_config(o, setup);
  if (o.world) {  // one rank per process: each checks its own outputs, then all agree
    auto memory = testing::make_memory(o.backend, o.device);
    auto comm = Communicator::create(o.world, cfg, o.backend, o.device);
    const testing::RankOutputs got =
        testing::run_round(*comm, *o.world, *memory, bench_shape(o), kRouting, o.seed, round);
    const std::string mine = check_rank(o, setup, cfg, o.world->rank(), got);
    const int bad = mine.empty() ? 0 : 1;
    std::vector<int> all(o.world->size());
    o.world->allGather(&bad, all.data(), sizeof(int));
    for (int r = 0; r < o.world->size(); ++r) {
      if (all[r]) return r == o.world->rank() ? mine : "rank " + std::to_string(r) + " differs";
    }
    return "";
  }
  const auto got = testing::run_cluster(o.backend, cfg, bench_shape(o), kRouting, o.seed, round)[0];
  for (int r = 0; r < o.ranks; ++r) {
    const std::string diff = o.backend == Backend::kHost
                                 ? check_rank(o, setup, cfg, r, got[r])
                                 : testing::first_difference(reference[r], got[r]);
    if (!diff.empty()) return "rank " + std::to_string(r) + ": " + diff;
  }
  return "";
}

namespace {

// One rank's times (ms) per timed iteration, and its received rows.
struct RankTimes {
  std::vector<double> fresh, combine, cached;
  int num_recv = 0;
};

RankTimes time_rank(const BenchOptions& o, const Setup& setup, std::shared_ptr<Bootstrap> bs,
                    int device) {
  const testing::Shape shape = bench_shape(o);
  const Config cfg = bench_config(o, setup);
  const int r = bs->rank(), total = o.warmup + o.iters;
  RankTimes times;
  auto memory = testing::make_memory(o.backend, device);
  auto comm = Communicator::create(bs, cfg, o.backend, device);
  auto timeline = o.backend == Backend::kCuda
                      ? make_cuda_timeline(comm->stream(), device, 3 * total + 1)
                      : make_host_timeline(3 * total + 1);
  const testing::RankData data = testing::make_rank_data(shape, kRouting, o.seed, r);
  testing::Buffer x(*memory, std::max<size_t>(data.x.size(), 16));
  testing::Buffer scales(*memory, std::max<size_t>(data.scales.size() * 4, 16));
  testing::Buffer topk(*memory, std::max<size_t>(data.topk_idx.size(), 16));
  testing::Buffer weights(*memory, std::max<size_t>(data.topk_weights.size() * 4, 16));
  testing::Buffer out(*memory, std::max<size_t>(static_cast<size_t>(o.tokens) * o.hidden * 2, 16));
  if (!data.x.empty()) memory->upload(x.get(), data.x.data(), data.x.size());
  if (!data.scales.empty())
    memory->upload(scales.get(), data.scales.data(), data.scales.size() * 4);
  if (!data.topk_idx.empty())
    memory->upload(topk.get(), data.topk_idx.data(), data.topk_idx.size());
  memory->upload(weights.get(), data.topk_weights.data(), data.topk_weights.size() * 4);
  DispatchInputs in;
  in.x = x.get();
  in.x_scales = cfg.num_scales() ? scales.as<float>() : nullptr;
  in.topk_idx = topk.get();
  in.topk_weights = weights.as<float>();
  in.num_tokens = o.tokens;
  in.num_topk = o.topk;
  DispatchOptions worst_case;
  worst_case.wait_num_recv = false;  // no host turnaround inside the timed region
  worst_case.layout = setup.layout;
  worst_case.expert_alignment = o.expert_alignment;
  CombineOptions combine_options;  // expert-major: the layer's weighting happens in combine
  combine_options.apply_weights = setup.layout == RecvLayout::kExpertMajor;

  // Calls are issued back to back, without host barriers: the ranks pace each other on the
  // device through the count exchange and the combine's ready signal, so thread wake-up skew
  // stays out of the times. Marks: before dispatch, combine, cached dispatch, and after it.
  bs->barrier();
  timeline->mark();
  DispatchResult last;  // keeps the last dispatch's routing (and its num_recv) alive
  for (int it = 0; it < total; ++it) {
    const DispatchResult res = comm->dispatch(in, worst_case);
    timeline->mark();
    // Identity expert, in place.
    comm->combine(comm->combine_input(), res.handle, out.get(), combine_options);
    timeline->mark();
    comm->dispatch_cached(res.handle, x.get(), in.x_scales, worst_case);
    timeline->mark();
    if (it + 1 == total) last = res;
  }
  timeline->finish();
  for (int it = o.warmup; it < total; ++it) {
    times.fresh.push_back(timeline->ms_between(3 * it, 3 * it + 1));
    times.combine.push_back(timeline->ms_between(3 * it + 1, 3 * it + 2));
    times.cached.push_back(timeline->ms_between(3 * it + 2, 3 * it + 3));
  }
  comm->synchronize();
  // Only now: the copy is not ordered after the communicator's stream (it raced the last
  // dispatch before, and reported rows from whichever value it found).
  memory->download(&times.num_recv, last.num_recv_device, sizeof(int));
  bs->barrier();
  return times;
}

// Every rank's times, on every rank of an mpirun job.
std::vector<RankTimes> gather_times(Bootstrap& bs, const RankTimes& mine, int iters) {
  const size_t n = 3 * static_cast<size_t>(iters) + 1;
  std::vector<double> packed(mine.fresh);
  packed.insert(packed.end(), mine.combine.begin(), mine.combine.end());
  packed.insert(packed.end(), mine.cached.begin(), mine.cached.end());
  packed.push_back(mine.num_recv);
  std::vector<double> all(n * bs.size());
  bs.allGather(packed.data(), all.data(), n * sizeof(double));
  std::vector<RankTimes> out(bs.size());
  for (int r = 0; r < bs.size(); ++r) {
    const double* p = all.data() + n * r;
    out[r].fresh.assign(p, p + iters);
    out[r].combine.assign(p + iters, p + 2 * iters);
    out[r].cached.assign(p + 2 * iters, p + 3 * iters);
    out[r].num_recv = static_cast<int>(p[3 * iters]);
  }
  return out;
}

}  // namespace

Measurement measure(const BenchOptions& o, const Setup& setup) {
  const int R = o.ranks;
  std::vector<RankTimes> times(R);
  if (o.world) {
    times = gather_times(*o.world, time_rank(o, setup, o.world, o.device), o.iters);
  } else {
    const auto bs = testing::shared_bootstraps(R, 600000);
    const int devices = o.backend == Backend::kCuda ? testing::cuda_device_count() : 1;
    testing::run_on_ranks(R, [&](int r) {
      times[r] = time_rank(o, setup, bs[r], o.backend == Backend::kCuda ? r % devices : 0);
    });
  }
  // The byte counts come from the routing; the last timed dispatch must agree with it.
  const RoutingCounts counts = routing_counts(o, setup.layout);
  for (int r = 0; r < R; ++r) {
    if (times[r].num_recv != counts.rows[r]) {
      throw std::runtime_error(
          "rank " + std::to_string(r) + " received " + std::to_string(times[r].num_recv) +
          " rows in the last timed dispatch; the routing gives " + std::to_string(counts.rows[r]));
    }
  }
  auto slowest = [&](std::vector<double> RankTimes::*series) {
    std::vector<double> it_max(o.iters, 0.0);
    for (int r = 0; r < R; ++r) {
      for (int i = 0; i < o.iters; ++i) it_max[i] = std::max(it_max[i], (times[r].*series)[i]);
    }
    return median(it_max);
  };
  Measurement m;
  m.setup = setup;
  m.dispatch_ms = slowest(&RankTimes::fresh);
  m.cached_ms = slowest(&RankTimes::cached);
  m.combine_ms = slowest(&RankTimes::combine);
  const Config cfg = bench_config(o, setup);
  const double row = static_cast<double>(cfg.row_bytes()), scale_bytes = 4.0 * cfg.num_scales();
  // Per row: the source and the scales, with token-major ids and weights or expert-major slot
  // and weight. Padding rows are written (zero) by dispatch and not read by combine.
  const double meta = setup.layout == RecvLayout::kExpertMajor ? 8.0 + 4.0 + 4.0 + scale_bytes
                                                               : 8.0 + 8.0 * o.topk + scale_bytes;
  for (int r = 0; r < R; ++r) {
    m.recv_rows_per_rank += counts.rows[r] / static_cast<double>(R);
    m.peer_rows_per_rank += counts.peer_rows[r] / static_cast<double>(R);
    m.dispatch_min_bytes += o.tokens * row + counts.rows[r] * (row + meta);
    m.cached_min_bytes += o.tokens * row + counts.rows[r] * (row + scale_bytes);
    m.combine_min_bytes += (counts.data_rows[r] + o.tokens) * 2.0 * o.hidden;
  }
  return m;
}

}  // namespace epcomm::bench
