// --mode domains: bytes across NVLink domains per rank, both receive layouts.
#include "domains.hpp"

#include <algorithm>
#include <cstdio>

#include "bench_run.hpp"
#include "cuda/domain_layout.hpp"
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

struct DomainBytes {
  Column dispatch, combine, direct_dispatch, direct_combine;
};

// Every rank's bytes across domains of o.ranks_per_domain ranks in `layout`, a dispatched row
// of row_bytes carrying meta_bytes beside it.
DomainBytes domain_bytes(const BenchOptions& o, RecvLayout layout, double row_bytes,
                         double meta_bytes) {
  const testing::Shape shape = bench_shape(o);
  testing::TrafficShape ts;
  ts.num_ranks = o.ranks;
  ts.experts_per_rank = o.experts / o.ranks;
  ts.ranks_per_domain = o.ranks_per_domain;
  ts.hidden = o.hidden;
  ts.layout = layout;
  ts.row_bytes = row_bytes;
  ts.meta_bytes = meta_bytes;
  DomainBytes b;
  for (int r = 0; r < o.ranks; ++r) {
    const testing::DomainTraffic t = testing::domain_traffic(
        testing::make_rank_routing(shape, testing::Routing::kUniform, o.seed, r), r, ts);
    b.dispatch.add(t.dispatch_bytes);
    b.combine.add(t.combine_bytes);
    b.direct_dispatch.add(t.direct_dispatch_bytes);
    b.direct_combine.add(t.direct_combine_bytes);
  }
  return b;
}

void print_row(const char* layout, const char* op, const Column& hier, const Column& direct,
               int R) {
  std::printf("%-12s %-9s %12.2f %12.2f %14.2f %14.2f %8.3f\n", layout, op, hier.max / 1e6,
              hier.sum / R / 1e6, direct.max / 1e6, direct.sum / R / 1e6,
              direct.sum > 0 ? hier.sum / direct.sum : 0.0);
}

void print_header() {
  std::printf("%-12s %-9s %12s %12s %14s %14s %8s\n", "layout", "operation", "max MB/rank",
              "mean MB/rank", "direct max MB", "direct mean MB", "ratio");
}

}  // namespace

int run_domains(const BenchOptions& o) {
  try {
    const testing::Shape shape = bench_shape(o);
    Config cfg = bench_config(o, Setup{});
    cfg.ranks_per_domain = 0;  // counted here, on no transport
    cfg.validate(o.ranks);
    const int R = o.ranks, L = o.ranks_per_domain;
    std::printf(
        "epcomm-bench --mode domains  ranks=%d ranks_per_domain=%d (%d domains) tokens/rank=%d "
        "hidden=%d topk=%d experts=%d dtype=%s seed=%llu\n",
        R, L, R / L, o.tokens, o.hidden, o.topk, o.experts, to_string(o.dtype),
        static_cast<unsigned long long>(o.seed));
    print_header();
    const double scales = 4.0 * cfg.num_scales();
    for (RecvLayout layout : o.layouts) {
      // The meta rows the flat path writes (bench_run.cpp counts the same).
      const double meta = layout == RecvLayout::kExpertMajor ? 8.0 + 4.0 + 4.0 + scales
                                                             : 8.0 + 8.0 * o.topk + scales;
      const DomainBytes b = domain_bytes(o, layout, static_cast<double>(cfg.row_bytes()), meta);
      print_row(to_string(layout), "dispatch", b.dispatch, b.direct_dispatch, R);
      print_row(to_string(layout), "combine", b.combine, b.direct_combine, R);
    }
    std::printf(
        "dispatch: bytes a rank sends to other domains (a row and its meta once per remote domain\n"
        "a token reaches; expert-major, one meta row per pair); combine: bytes it receives (one\n"
        "bf16 partial per remote domain). direct: once per remote rank (expert-major: per pair).\n"
        "ratio: mean / direct mean. Counted from the routing alone; the timed rows of\n"
        "--launcher mpi --transport nvshmem --ranks-per-domain N print the bytes as put.\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "epcomm-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}

void print_timed_domain_bytes(const BenchOptions& o) {
  const Config cfg = bench_config(o, Setup{});
  const size_t row = cfg.row_bytes();
  const size_t record =
      cuda::DomainLayout::record_bytes_of(o.ranks, cfg.max_topk, cfg.num_scales(), row);
  std::printf("bytes across domains of %d ranks (%d domains), as put, per rank:\n",
              o.ranks_per_domain, o.ranks / o.ranks_per_domain);
  print_header();
  const DomainBytes b = domain_bytes(o, RecvLayout::kTokenMajor, static_cast<double>(row),
                                     static_cast<double>(record - row));
  print_row("token_major", "dispatch", b.dispatch, b.direct_dispatch, o.ranks);
  print_row("token_major", "combine", b.combine, b.direct_combine, o.ranks);
  std::printf(
      "dispatch: records a rank puts to forwarders (row, fp8 scales, slots, ids and weights:\n"
      "%zu bytes) once per remote domain a token reaches; combine: bf16 partials it gets back,\n"
      "one per remote domain. direct: the same record once per remote rank. ratio: mean /\n"
      "direct mean.\n",
      record);
}

}  // namespace epcomm::bench
