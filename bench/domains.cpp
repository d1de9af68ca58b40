// --mode domains: bytes across NVLink domains per rank, both receive layouts.
#include "domains.hpp"

#include <algorithm>
#include <cstdio>

#include "bench_run.hpp"
#include "domain_traffic.hpp"

namespace epcomm::bench {
namespace {

struct Column {
  double max = 0, sum = 0;
  void add(double v) {
    max = std::max(max, v);
    sum += v;
  }
};

}  // namespace

int run_domains(const BenchOptions& o) {
  try {
    const testing::Shape shape = bench_shape(o);
    const Config cfg = bench_config(o, Setup{});
    cfg.validate(o.ranks);
    const int R = o.ranks, L = o.ranks_per_domain;
    std::printf(
        "epcomm-bench --mode domains  ranks=%d ranks_per_domain=%d (%d domains) tokens/rank=%d "
        "hidden=%d topk=%d experts=%d dtype=%s seed=%llu\n",
        R, L, R / L, o.tokens, o.hidden, o.topk, o.experts, to_string(o.dtype),
        static_cast<unsigned long long>(o.seed));
    std::printf("%-12s %-9s %12s %12s %14s %14s %8s\n", "layout", "operation", "max MB/rank",
                "mean MB/rank", "direct max MB", "direct mean MB", "ratio");
    const double scales = 4.0 * cfg.num_scales();
    for (RecvLayout layout : o.layouts) {
      testing::TrafficShape ts;
      ts.num_ranks = R;
      ts.experts_per_rank = o.experts / R;
      ts.ranks_per_domain = L;
      ts.hidden = o.hidden;
      ts.layout = layout;
      ts.row_bytes = static_cast<double>(cfg.row_bytes());
      // The meta rows the flat path writes (bench_run.cpp counts the same).
      ts.meta_bytes = layout == RecvLayout::kExpertMajor ? 8.0 + 4.0 + 4.0 + scales
                                                         : 8.0 + 8.0 * o.topk + scales;
      Column dispatch, combine, direct_dispatch, direct_combine;
      for (int r = 0; r < R; ++r) {
        const testing::DomainTraffic t = testing::domain_traffic(
            testing::make_rank_routing(shape, testing::Routing::kUniform, o.seed, r), r, ts);
        dispatch.add(t.dispatch_bytes);
        combine.add(t.combine_bytes);
        direct_dispatch.add(t.direct_dispatch_bytes);
        direct_combine.add(t.direct_combine_bytes);
      }
      auto row = [&](const char* op, const Column& hier, const Column& direct) {
        std::printf("%-12s %-9s %12.2f %12.2f %14.2f %14.2f %8.3f\n", to_string(layout), op,
                    hier.max / 1e6, hier.sum / R / 1e6, direct.max / 1e6, direct.sum / R / 1e6,
                    direct.sum > 0 ? hier.sum / direct.sum : 0.0);
      };
      row("dispatch", dispatch, direct_dispatch);
      row("combine", combine, direct_combine);
    }
    std::printf(
        "dispatch: bytes a rank sends to other domains (a row and its meta once per remote domain\n"
        "a token reaches; expert-major, one meta row per pair); combine: bytes it receives (one\n"
        "bf16 partial per remote domain). direct: once per remote rank (expert-major: per pair).\n"
        "ratio: mean / direct mean. Counted from the routing: the paths across domains are not\n"
        "built yet, so nothing is timed.\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "epcomm-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}

}  // namespace epcomm::bench
