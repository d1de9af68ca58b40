// Measurement: every rank times its own calls; a call's time is the slowest rank's.
#include "bench_run.hpp"

#include <algorithm>
#include <mutex>

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

Config bench_config(const BenchOptions& o, Algorithm algorithm, int sms) {
  Config c = testing::config_for(bench_shape(o));
  c.algorithm = algorithm;
  c.dispatch_sms = sms;
  c.combine_sms = sms;
  c.ring_slots = o.ring_slots;
  c.ring_chunk = o.ring_chunk;
  c.transport = o.transport;
  return c;
}

std::vector<testing::RankOutputs> reference_outputs(const BenchOptions& o) {
  testing::RoundOptions round;
  round.y_is_recv_x = true;
  return testing::run_cluster(Backend::kHost, bench_config(o, Algorithm::kFlat, 1), bench_shape(o),
                              kRouting, o.seed, round)[0];
}

std::string check_configuration(const BenchOptions& o, Algorithm algorithm, int sms,
                                const std::vector<testing::RankOutputs>& reference) {
  testing::RoundOptions round;
  round.y_is_recv_x = true;
  if (o.world) {  // one rank per process: each checks its own outputs, then all agree
    auto memory = testing::make_memory(o.backend, o.device);
    auto comm = Communicator::create(o.world, bench_config(o, algorithm, sms), o.backend, o.device);
    const testing::RankOutputs got =
        testing::run_round(*comm, *o.world, *memory, bench_shape(o), kRouting, o.seed, round);
    const std::string mine = testing::check_rank_independently(bench_shape(o), kRouting, o.seed,
                                                               o.world->rank(), got, true);
    const int bad = mine.empty() ? 0 : 1;
    std::vector<int> all(o.world->size());
    o.world->allGather(&bad, all.data(), sizeof(int));
    for (int r = 0; r < o.world->size(); ++r) {
      if (all[r]) return r == o.world->rank() ? mine : "rank " + std::to_string(r) + " differs";
    }
    return "";
  }
  const auto got = testing::run_cluster(o.backend, bench_config(o, algorithm, sms), bench_shape(o),
                                        kRouting, o.seed, round)[0];
  if (o.backend == Backend::kHost) {
    return testing::check_independently(bench_shape(o), kRouting, o.seed, got, true);
  }
  for (int r = 0; r < o.ranks; ++r) {
    const std::string diff = testing::first_difference(reference[r], got[r]);
    if (!diff.empty()) return "rank " + std::to_string(r) + ": " + diff;
  }
  return "";
}

namespace {

// One rank's times (ms) per timed iteration, and its received rows.
struct RankTimes {
  std::vector<double> fresh, combine, cached;
  int num_recv = 0;
  int self_rows = 0;  // rows this rank sent to itself (they cross no link)
};

// Tokens of `data` with an expert on `rank` itself.
int count_self_rows(const testing::RankData& data, int rank, int experts_per_rank) {
  int n = 0;
  for (int t = 0; t < data.num_tokens; ++t) {
    bool self = false;
    for (int k = 0; k < data.num_topk && !self; ++k) {
      const int64_t e = data.expert(t, k);
      self = e >= 0 && e / experts_per_rank == rank;
    }
    n += self ? 1 : 0;
  }
  return n;
}

RankTimes time_rank(const BenchOptions& o, const Config& cfg, std::shared_ptr<Bootstrap> bs,
                    int device) {
  const testing::Shape shape = bench_shape(o);
  const int r = bs->rank(), total = o.warmup + o.iters;
  RankTimes times;
  auto memory = testing::make_memory(o.backend, device);
  auto comm = Communicator::create(bs, cfg, o.backend, device);
  auto timeline = o.backend == Backend::kCuda
                      ? make_cuda_timeline(comm->stream(), device, 3 * total + 1)
                      : make_host_timeline(3 * total + 1);
  const testing::RankData data = testing::make_rank_data(shape, kRouting, o.seed, r);
  times.self_rows = count_self_rows(data, r, o.experts / o.ranks);
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

  // Calls are issued back to back, without host barriers: the ranks pace each other on the
  // device through the count exchange and the combine's ready signal, so thread wake-up skew
  // stays out of the times. Marks: before dispatch, combine, cached dispatch, and after it.
  bs->barrier();
  timeline->mark();
  DispatchResult last;  // keeps the last dispatch's routing (and its num_recv) alive
  for (int it = 0; it < total; ++it) {
    const DispatchResult res = comm->dispatch(in, worst_case);
    timeline->mark();
    comm->combine(comm->combine_input(), res.handle, out.get());  // identity expert, in place
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
  const size_t n = 3 * static_cast<size_t>(iters) + 2;
  std::vector<double> packed(mine.fresh);
  packed.insert(packed.end(), mine.combine.begin(), mine.combine.end());
  packed.insert(packed.end(), mine.cached.begin(), mine.cached.end());
  packed.push_back(mine.num_recv);
  packed.push_back(mine.self_rows);
  std::vector<double> all(n * bs.size());
  bs.allGather(packed.data(), all.data(), n * sizeof(double));
  std::vector<RankTimes> out(bs.size());
  for (int r = 0; r < bs.size(); ++r) {
    const double* p = all.data() + n * r;
    out[r].fresh.assign(p, p + iters);
    out[r].combine.assign(p + iters, p + 2 * iters);
    out[r].cached.assign(p + 2 * iters, p + 3 * iters);
    out[r].num_recv = static_cast<int>(p[3 * iters]);
    out[r].self_rows = static_cast<int>(p[3 * iters + 1]);
  }
  return out;
}

}  // namespace

Measurement measure(const BenchOptions& o, Algorithm algorithm, int sms) {
  const Config cfg = bench_config(o, algorithm, sms);
  const int R = o.ranks;
  std::vector<RankTimes> times(R);
  if (o.world) {
    times = gather_times(*o.world, time_rank(o, cfg, o.world, o.device), o.iters);
  } else {
    const auto bs = testing::shared_bootstraps(R, 600000);
    const int devices = o.backend == Backend::kCuda ? testing::cuda_device_count() : 1;
    testing::run_on_ranks(R, [&](int r) {
      times[r] = time_rank(o, cfg, bs[r], o.backend == Backend::kCuda ? r % devices : 0);
    });
  }
  std::vector<std::vector<double>> fresh(R), cached(R), combine(R);
  std::vector<int> num_recv(R);
  double peer_rows = 0;
  for (int r = 0; r < R; ++r) {
    peer_rows += times[r].num_recv - times[r].self_rows;
    fresh[r] = times[r].fresh;
    cached[r] = times[r].cached;
    combine[r] = times[r].combine;
    num_recv[r] = times[r].num_recv;
  }
  auto slowest = [&](const std::vector<std::vector<double>>& per_rank) {
    std::vector<double> it_max(o.iters, 0.0);
    for (int r = 0; r < R; ++r) {
      for (int i = 0; i < o.iters; ++i) it_max[i] = std::max(it_max[i], per_rank[r][i]);
    }
    return median(it_max);
  };
  Measurement m;
  m.algorithm = algorithm;
  m.sms = sms;
  m.dispatch_ms = slowest(fresh);
  m.cached_ms = slowest(cached);
  m.combine_ms = slowest(combine);
  const double row = static_cast<double>(cfg.row_bytes());
  const double meta = 8.0 + 8.0 * o.topk + 4.0 * cfg.num_scales();  // source, ids, weights, scales
  double rows = 0;
  for (int r = 0; r < R; ++r) {
    rows += num_recv[r];
    m.dispatch_min_bytes += o.tokens * row + num_recv[r] * (row + meta);
    m.cached_min_bytes += o.tokens * row + num_recv[r] * (row + 4.0 * cfg.num_scales());
    m.combine_min_bytes += (num_recv[r] + o.tokens) * 2.0 * o.hidden;
  }
  m.recv_rows_per_rank = rows / R;
  m.peer_rows_per_rank = peer_rows / R;
  return m;
}

}  // namespace epcomm::bench
