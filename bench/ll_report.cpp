// Tables and JSON of epcomm-bench --mode ll.
#include <cstdio>
#include <fstream>
#include <string>

#include "epcomm/error.hpp"
#include "ll_bench.hpp"

namespace epcomm::bench {
namespace {

const char* dtype_name(bool use_fp8) { return use_fp8 ? "fp8" : "bf16"; }

std::string med_p99(const LatencyStat& s) {
  if (!s.measured) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f/%.1f", s.median_us, s.p99_us);
  return buf;
}

std::string median_only(const LatencyStat& s) {
  if (!s.measured) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f", s.median_us);
  return buf;
}

// The roofline uses the loop time (calls back to back in a graph, as a decode step replays
// them), else the one-call graph time, else the eager one.
double roofline(const LlReport& rep, double min_bytes, const LatencyStat& loop,
                const LatencyStat& graph, const LatencyStat& eager) {
  const LatencyStat& t = loop.measured ? loop : graph.measured ? graph : eager;
  if (rep.copy_gbps <= 0 || !t.measured || t.median_us <= 0) return 0;
  return min_bytes / rep.gpus / (t.median_us * 1e-6) / 1e9 / rep.copy_gbps;
}

double dispatch_roofline(const LlReport& rep, const LlCase& c) {
  return roofline(rep, c.dispatch_min_bytes, c.loop_dispatch, c.graph_dispatch, c.dispatch);
}

double combine_roofline(const LlReport& rep, const LlCase& c) {
  return roofline(rep, c.combine_min_bytes, c.loop_combine, c.graph_combine, c.combine);
}

std::string fraction(double f) {
  if (f <= 0) return "-";
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%.2f", f);
  return buf;
}

void print_row(const LlReport& rep, const LlCase& c) {
  if (!c.problem.empty()) {
    std::printf("%5d  %s\n", c.tokens, c.problem.c_str());
    return;
  }
  std::printf("%5d %8.0f %14s %14s %14s %14s %14s %14s %14s %14s %14s %7s %7s %7s %7s %6s %6s\n",
              c.tokens, c.num_messages / rep.options.ranks, med_p99(c.dispatch).c_str(),
              med_p99(c.combine).c_str(), med_p99(c.dispatch_combine).c_str(),
              med_p99(c.graph_dispatch).c_str(), med_p99(c.graph_combine).c_str(),
              med_p99(c.graph_dispatch_combine).c_str(), med_p99(c.loop_dispatch).c_str(),
              med_p99(c.loop_combine).c_str(), med_p99(c.loop_dispatch_combine).c_str(),
              median_only(c.dispatch_send).c_str(), median_only(c.dispatch_recv).c_str(),
              median_only(c.combine_send).c_str(), median_only(c.combine_recv).c_str(),
              fraction(dispatch_roofline(rep, c)).c_str(),
              fraction(combine_roofline(rep, c)).c_str());
}

// The rows crossing domains per rank (mean): each message's row (ll_message_row_bytes) out in
// the dispatch, a 2H bf16 row back in the combine.
void print_domain_bytes(const LlReport& rep, const LlCase& c) {
  const double per_rank = c.num_remote_messages / rep.options.ranks;
  std::printf(
      "  T=%d across domains, per rank: %.0f of %.0f messages; dispatch rows %.2f MB, "
      "combine rows %.2f MB\n",
      c.tokens, per_rank, c.num_messages / rep.options.ranks,
      per_rank * ll_message_row_bytes(rep.options.hidden, c.use_fp8) / 1e6,
      per_rank * 2.0 * rep.options.hidden / 1e6);
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\';
    if (static_cast<unsigned char>(ch) < 0x20) {
      out += ' ';
      continue;
    }
    out += ch;
  }
  return out + "\"";
}

std::string json_stat(const char* name, const LatencyStat& s) {
  if (!s.measured) return std::string("\"") + name + "\": null";
  return std::string("\"") + name + "\": {\"median_us\": " + std::to_string(s.median_us) +
         ", \"p99_us\": " + std::to_string(s.p99_us) + "}";
}

void write_case(std::ofstream& f, const LlReport& rep, const LlCase& c) {
  f << "    {\"tokens\": " << c.tokens << ", \"dtype\": \"" << dtype_name(c.use_fp8)
    << "\", \"problem\": " << (c.problem.empty() ? "null" : json_string(c.problem));
  if (c.problem.empty()) {
    f << ", \"messages\": " << c.num_messages << ", \"remote_messages\": " << c.num_remote_messages
      << ",\n     \"eager\": {" << json_stat("dispatch", c.dispatch) << ", "
      << json_stat("combine", c.combine) << ", "
      << json_stat("dispatch_combine", c.dispatch_combine) << "},\n     \"graph\": {"
      << json_stat("dispatch", c.graph_dispatch) << ", " << json_stat("combine", c.graph_combine)
      << ", " << json_stat("dispatch_combine", c.graph_dispatch_combine)
      << "},\n     \"graph_loop\": {" << json_stat("dispatch", c.loop_dispatch) << ", "
      << json_stat("combine", c.loop_combine) << ", "
      << json_stat("dispatch_combine", c.loop_dispatch_combine) << "},\n     \"hook\": {"
      << json_stat("dispatch_send", c.dispatch_send) << ", "
      << json_stat("dispatch_recv", c.dispatch_recv) << ", "
      << json_stat("combine_send", c.combine_send) << ", "
      << json_stat("combine_recv", c.combine_recv)
      << "},\n     \"dispatch_min_bytes\": " << c.dispatch_min_bytes
      << ", \"combine_min_bytes\": " << c.combine_min_bytes
      << ", \"roofline\": {\"dispatch\": " << dispatch_roofline(rep, c)
      << ", \"combine\": " << combine_roofline(rep, c) << "}";
  }
  f << "}";
}

}  // namespace

void print_ll_tables(const LlReport& rep) {
  const BenchOptions& o = rep.options;
  std::printf("\nepcomm-bench --mode ll  backend=%s  launcher=%s  transport=%s  device: %s\n",
              to_string(o.backend), o.mpi ? "mpi" : "inprocess", to_string(o.transport),
              rep.device.c_str());
  std::printf(
      "ranks=%d M=%d hidden=%d topk=%d experts=%d sms=%d warmup=%d replays=%d loop-calls=%d\n",
      o.ranks, rep.max_tokens, o.hidden, o.topk, o.experts, o.sms.front(), o.warmup, o.replays,
      o.loop_calls);
  if (o.ranks_per_domain > 0 && o.ranks_per_domain < o.ranks) {
    std::printf("domains: %d of %d ranks (peers outside a rank's domain through NVSHMEM puts)\n",
                o.ranks / o.ranks_per_domain, o.ranks_per_domain);
  }
  if (rep.copy_gbps > 0) {
    std::printf("device copy bandwidth (read+write): %.0f GB/s\n", rep.copy_gbps);
  }
  for (DType dtype : o.ll_dtypes) {
    const bool fp8 = dtype == DType::kFP8E4M3;
    std::printf("\n%s, times in us (median/p99)\n", dtype_name(fp8));
    std::printf("%5s %8s %14s %14s %14s %14s %14s %14s %14s %14s %14s %7s %7s %7s %7s %6s %6s\n",
                "T", "msg/rank", "dispatch", "combine", "d+c", "graph:disp", "graph:comb",
                "graph:d+c", "loop:disp", "loop:comb", "loop:d+c", "d.send", "d.recv", "c.send",
                "c.recv", "roof.d", "roof.c");
    for (const LlCase& c : rep.cases) {
      if (c.use_fp8 == fp8) print_row(rep, c);
    }
    if (o.ranks_per_domain > 0 && o.ranks_per_domain < o.ranks) {
      for (const LlCase& c : rep.cases) {
        if (c.use_fp8 == fp8 && c.problem.empty()) print_domain_bytes(rep, c);
      }
    }
  }
  std::printf(
      "\ntimes: per replay the slowest rank's, then median/p99 over the replays. On GPUs a start\n"
      "gate releases all ranks' streams at once, so host skew and launch latency stay out.\n"
      "dispatch/combine/d+c: eager calls; graph:*: between event nodes inside one captured graph\n"
      "[dispatch; combine]; loop:*: per call in one graph of --loop-calls pairs [dispatch;\n"
      "combine] back to back (a decode step's layers): disp/comb between stamp kernels before\n"
      "each call (each includes one stamp's launch), d+c between event nodes at the graph's two\n"
      "ends / pairs; d.send..c.recv: send_only calls, each followed at once by\n"
      "low_latency_receive (medians). msg/rank: (token, expert) messages received per rank.\n"
      "roof.d/c: least bytes moved (dispatch: per token x row read, per message row written to\n"
      "staging, read, written to recv_x; combine: per message y row read, written to staging,\n"
      "read, plus outputs written) per GPU / loop (else graph) median / device copy bandwidth.\n"
      "Workload: the LL harness (uniform top-k; the last rank sends T/2 tokens).\n");
}

void write_ll_json(const LlReport& rep, const std::string& path) {
  std::ofstream f(path);
  const BenchOptions& o = rep.options;
  f << "{\n  \"mode\": \"ll\", \"backend\": \"" << to_string(o.backend)
    << "\", \"device\": " << json_string(rep.device) << ",\n  \"ranks\": " << o.ranks
    << ", \"max_tokens\": " << rep.max_tokens << ", \"hidden\": " << o.hidden
    << ", \"topk\": " << o.topk << ", \"experts\": " << o.experts << ", \"sms\": " << o.sms.front()
    << ", \"warmup\": " << o.warmup << ", \"replays\": " << o.replays
    << ", \"loop_calls\": " << o.loop_calls << ",\n  \"copy_gbps\": " << rep.copy_gbps
    << ",\n  \"results\": [\n";
  for (size_t i = 0; i < rep.cases.size(); ++i) {
    write_case(f, rep, rep.cases[i]);
    f << (i + 1 < rep.cases.size() ? ",\n" : "\n");
  }
  f << "  ]\n}\n";
  if (!f) throw Error(ErrorCode::kInvalidArgument, "cannot write --json " + path);
}

}  // namespace epcomm::bench
