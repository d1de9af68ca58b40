// Table and JSON output of epcomm-bench.
#include "report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "device_support.hpp"
#include "domains.hpp"

namespace epcomm::bench {
namespace {

struct OpView {
  const char* name;
  double ms;
  double min_bytes;
  double row_bytes;  // logical bytes per received row
  bool fans_out;     // reads each row once and writes it to every destination (dispatch)
};

std::vector<OpView> ops_of(const Report& rep, const Measurement& m) {
  const double H = rep.options.hidden;
  const double dispatch_row = H * element_bytes(rep.options.dtype);
  return {{"dispatch", m.dispatch_ms, m.dispatch_min_bytes, dispatch_row, true},
          {"dispatch(cached)", m.cached_ms, m.cached_min_bytes, dispatch_row, true},
          {"combine", m.combine_ms, m.combine_min_bytes, 2.0 * H, false}};
}

double gbps(double bytes, double ms) { return ms > 0 ? bytes / (ms * 1e-3) / 1e9 : 0; }

// The op's least bytes a second on one GPU (the ranks spread evenly over rep.gpus).
double gbps_per_gpu(const Report& rep, const OpView& op) {
  return gbps(op.min_bytes / rep.gpus, op.ms);
}

// The op's least bytes over its time, against a copy on the SMs the sweep row gives its ranks
// (`fan_out`: against the fan-out copy there); 0 where not measured.
double sm_copy_fraction(const Report& rep, const Measurement& m, const OpView& op, bool fan_out) {
  const auto it = rep.sm_copy.find(m.setup.sms);
  if (it == rep.sm_copy.end()) return 0;
  double bound = it->second.gbps;
  if (fan_out) {
    const auto f = it->second.fanout_gbps.find(fanout_of(rep, m));
    bound = f == it->second.fanout_gbps.end() ? 0 : f->second;
  }
  return bound > 0 ? gbps_per_gpu(rep, op) / bound : 0;
}

// The ring row the flat token-major row of `sms` is compared with.
const Measurement* ring_row(const Report& rep, int sms) {
  for (const auto& m : rep.rows) {
    if (m.setup.algorithm == Algorithm::kRing && m.setup.sms == sms) return &m;
  }
  return nullptr;
}

}  // namespace

int fanout_of(const Report& rep, const Measurement& m) {
  const int tokens = rep.options.tokens;
  return tokens > 0 ? std::max(1, static_cast<int>(std::lround(m.recv_rows_per_rank / tokens))) : 1;
}

void print_table(const Report& rep) {
  const BenchOptions& o = rep.options;
  std::printf("\nepcomm-bench  backend=%s  launcher=%s  transport=%s  device: %s\n",
              to_string(o.backend), o.mpi ? "mpi" : "inprocess", to_string(o.transport),
              rep.device.c_str());
  std::printf("ranks=%d tokens/rank=%d hidden=%d topk=%d experts=%d dtype=%s iters=%d\n", o.ranks,
              o.tokens, o.hidden, o.topk, o.experts, to_string(o.dtype), o.iters);
  if (rep.copy_gbps > 0) {
    std::printf("device copy bandwidth (read+write): %.0f GB/s\n", rep.copy_gbps);
  }
  for (const auto& [sms, probe] : rep.sm_copy) {
    std::printf("copy bandwidth of a kernel on %d SMs of a GPU (its ranks x %d SMs): %.0f GB/s",
                probe.sms_used, sms, probe.gbps);
    for (const auto& [fanout, fan_gbps] : probe.fanout_gbps) {
      std::printf("; writing each byte %d times: %.0f GB/s", fanout, fan_gbps);
    }
    std::printf("\n");
  }
  const bool links = rep.p2p_gbps > 0;
  if (links) {
    std::printf("peer copy bandwidth per GPU and direction (all GPUs at once): %.0f GB/s\n",
                rep.p2p_gbps);
  }
  std::printf("%-9s %-12s %4s  %-17s %10s %14s %11s %9s %10s", "algorithm", "layout", "SMs",
              "operation", "time_ms", "recv_rows/rank", "GB/s/rank", "roofline", "flat/ring");
  const bool sm_bound = !rep.sm_copy.empty();
  if (sm_bound) std::printf(" %11s %11s", "of SM copy", "of fan-out");
  if (links) std::printf(" %14s %9s %8s", "link GB/s/rank", "of 450", "of p2p");
  std::printf("\n");
  for (const auto& m : rep.rows) {
    const Measurement* ring =
        m.setup.layout == RecvLayout::kTokenMajor ? ring_row(rep, m.setup.sms) : nullptr;
    const auto ring_ops = ring ? ops_of(rep, *ring) : std::vector<OpView>{};
    const auto ops = ops_of(rep, m);
    for (size_t i = 0; i < ops.size(); ++i) {
      const OpView& op = ops[i];
      const double logical = gbps(m.recv_rows_per_rank * op.row_bytes, op.ms);
      char roofline[16] = "-", ratio[16] = "-";
      if (rep.copy_gbps > 0)
        std::snprintf(roofline, sizeof(roofline), "%.2f", gbps_per_gpu(rep, op) / rep.copy_gbps);
      if (m.setup.algorithm == Algorithm::kFlat && ring) {
        std::snprintf(ratio, sizeof(ratio), "%.2fx", ring_ops[i].ms / op.ms);
      }
      std::printf("%-9s %-12s %4d  %-17s %10.3f %14.0f %11.1f %9s %10s",
                  to_string(m.setup.algorithm), to_string(m.setup.layout), m.setup.sms, op.name,
                  op.ms, m.recv_rows_per_rank, logical, roofline, ratio);
      if (sm_bound) {
        char fan[16] = "-";
        if (op.fans_out) {
          std::snprintf(fan, sizeof(fan), "%.2f", sm_copy_fraction(rep, m, op, true));
        }
        std::printf(" %11.2f %11s", sm_copy_fraction(rep, m, op, false), fan);
      }
      if (links) {  // rows that came from other ranks crossed a link once
        const double link = gbps(m.peer_rows_per_rank * op.row_bytes, op.ms);
        std::printf(" %14.1f %9.2f %8.2f", link, link / kNvlinkGbpsPerDirection,
                    link / rep.p2p_gbps);
      }
      std::printf("\n");
    }
  }
  std::printf(
      "time: median over iterations of the slowest rank; GB/s/rank: received rows x row "
      "bytes / time;\nroofline: least bytes moved per GPU / time / copy bandwidth; flat/ring: "
      "ring time / flat time.\n");
  if (sm_bound) {
    std::printf(
        "of SM copy: least bytes moved per GPU / time / copy bandwidth of a kernel on as many\n"
        "SMs as the call's ranks on one GPU use; of fan-out: the same against that kernel\n"
        "writing each byte it reads as many times as a token has destinations.\n");
  }
  std::printf(
      "expert_major: one row per (token, local expert) pair, groups aligned to %d rows; its "
      "combine applies the weights.\n",
      o.expert_alignment);
  if (o.ranks_per_domain > 0 && o.ranks_per_domain < o.ranks) print_timed_domain_bytes(o);
  if (links) {
    std::printf(
        "link GB/s/rank: rows received from other ranks x row bytes / time, against "
        "%.0f GB/s NVLink per direction and the measured peer copy.\n",
        kNvlinkGbpsPerDirection);
  }
}

void write_json(const Report& rep, const std::string& path) {
  std::ofstream f(path);
  const BenchOptions& o = rep.options;
  f << "{\n  \"backend\": \"" << to_string(o.backend) << "\",\n  \"device\": \"" << rep.device
    << "\",\n  \"ranks\": " << o.ranks << ", \"tokens\": " << o.tokens
    << ", \"hidden\": " << o.hidden << ", \"topk\": " << o.topk << ", \"experts\": " << o.experts
    << ", \"dtype\": \"" << to_string(o.dtype) << "\", \"iters\": " << o.iters
    << ", \"expert_alignment\": " << o.expert_alignment << ",\n  \"copy_gbps\": " << rep.copy_gbps
    << ", \"p2p_gbps\": " << rep.p2p_gbps << ", \"gpus\": " << rep.gpus << ",\n  \"sm_copy\": [";
  bool first = true;
  for (const auto& [sms, probe] : rep.sm_copy) {
    f << (first ? "" : ", ") << "{\"sms\": " << sms << ", \"sms_used\": " << probe.sms_used
      << ", \"gbps\": " << probe.gbps << ", \"fanout_gbps\": {";
    bool first_fanout = true;
    for (const auto& [fanout, fan_gbps] : probe.fanout_gbps) {
      f << (first_fanout ? "" : ", ") << "\"" << fanout << "\": " << fan_gbps;
      first_fanout = false;
    }
    f << "}}";
    first = false;
  }
  f << "],\n  \"results\": [\n";
  for (size_t i = 0; i < rep.rows.size(); ++i) {
    const Measurement& m = rep.rows[i];
    f << "    {\"algorithm\": \"" << to_string(m.setup.algorithm) << "\", \"layout\": \""
      << to_string(m.setup.layout) << "\", \"sms\": " << m.setup.sms;
    for (const auto& op : ops_of(rep, m)) {
      const double logical = gbps(m.recv_rows_per_rank * op.row_bytes, op.ms);
      const double roof = rep.copy_gbps > 0 ? gbps_per_gpu(rep, op) / rep.copy_gbps : 0;
      f << ", \"" << op.name << "\": {\"ms\": " << op.ms << ", \"gbps_per_rank\": " << logical
        << ", \"roofline\": " << roof << ", \"of_sm_copy\": " << sm_copy_fraction(rep, m, op, false)
        << ", \"of_fan_out\": " << (op.fans_out ? sm_copy_fraction(rep, m, op, true) : 0.0) << "}";
    }
    f << ", \"recv_rows_per_rank\": " << m.recv_rows_per_rank
      << ", \"peer_rows_per_rank\": " << m.peer_rows_per_rank << "}"
      << (i + 1 < rep.rows.size() ? "," : "") << "\n";
  }
  f << "  ]\n}\n";
  if (!f) throw Error(ErrorCode::kInvalidArgument, "cannot write --json " + path);
}

}  // namespace epcomm::bench
