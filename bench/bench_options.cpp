// Flag parsing for epcomm-bench.
#include "bench_options.hpp"

#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "memory.hpp"

namespace epcomm::bench {
namespace {

void usage() {
  std::printf(
      "epcomm-bench: dispatch/combine time, bandwidth and roofline fraction.\n"
      "  --backend host|cuda     default: cuda when a GPU is present, else host\n"
      "  --launcher inprocess|mpi   ranks as threads of this process (default), or one rank\n"
      "                          per process under mpirun (--ranks is then the job's size)\n"
      "  --ranks R               ranks (threads); on GPUs rank r uses GPU r %% count (8)\n"
      "  --tokens T              tokens per rank (4096 on GPUs, 512 on host)\n"
      "  --hidden H --topk K --experts E    (7168, 8, 256)\n"
      "  --dtype bf16|fp8        dispatch element type (bf16)\n"
      "  --algorithms LIST       comma list of flat,ring (flat)\n"
      "  --sms LIST              comma list of SMs per rank for dispatch and combine (16)\n"
      "  --ring-slots Q --ring-chunk N   ring path: entries per ring, rows per publish (32, 8)\n"
      "  --warmup N --iters N    (5, 20)\n"
      "  --seed S                workload seed (1)\n"
      "  --no-check              skip the check against the reference\n"
      "  --json FILE             also write the results as JSON\n"
      "  --plot FILE.png         draw time against SMs (needs python3 with matplotlib)\n");
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

int to_int(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  const long n = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0') {
    throw Error(ErrorCode::kInvalidArgument, flag + " = '" + v + "' is not an integer");
  }
  return static_cast<int>(n);
}

}  // namespace

bool parse_options(int argc, char** argv, BenchOptions* o) {
  o->backend = testing::cuda_device_count() > 0 ? Backend::kCuda : Backend::kHost;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string flag = argv[i];
      auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw Error(ErrorCode::kInvalidArgument, flag + " needs a value");
        return argv[++i];
      };
      if (flag == "--help" || flag == "-h") {
        usage();
        return false;
      } else if (flag == "--backend") {
        const std::string v = value();
        if (v != "host" && v != "cuda") throw Error(ErrorCode::kInvalidArgument, "--backend = " + v);
        o->backend = v == "host" ? Backend::kHost : Backend::kCuda;
      } else if (flag == "--launcher") {
        const std::string v = value();
        if (v != "inprocess" && v != "mpi") {
          throw Error(ErrorCode::kInvalidArgument, "--launcher = " + v);
        }
        o->mpi = v == "mpi";
      } else if (flag == "--ranks") {
        o->ranks = to_int(flag, value());
      } else if (flag == "--tokens") {
        o->tokens = to_int(flag, value());
      } else if (flag == "--hidden") {
        o->hidden = to_int(flag, value());
      } else if (flag == "--topk") {
        o->topk = to_int(flag, value());
      } else if (flag == "--experts") {
        o->experts = to_int(flag, value());
      } else if (flag == "--dtype") {
        const std::string v = value();
        if (v != "bf16" && v != "fp8") throw Error(ErrorCode::kInvalidArgument, "--dtype = " + v);
        o->dtype = v == "bf16" ? DType::kBF16 : DType::kFP8E4M3;
      } else if (flag == "--algorithms") {
        o->algorithms.clear();
        for (const auto& a : split(value())) {
          if (a != "flat" && a != "ring") {
            throw Error(ErrorCode::kInvalidArgument, "--algorithms: unknown '" + a + "'");
          }
          o->algorithms.push_back(a == "flat" ? Algorithm::kFlat : Algorithm::kRing);
        }
      } else if (flag == "--sms") {
        o->sms.clear();
        for (const auto& s : split(value())) o->sms.push_back(to_int(flag, s));
      } else if (flag == "--ring-slots") {
        o->ring_slots = to_int(flag, value());
      } else if (flag == "--ring-chunk") {
        o->ring_chunk = to_int(flag, value());
      } else if (flag == "--warmup") {
        o->warmup = to_int(flag, value());
      } else if (flag == "--iters") {
        o->iters = to_int(flag, value());
      } else if (flag == "--seed") {
        o->seed = static_cast<uint64_t>(to_int(flag, value()));
      } else if (flag == "--no-check") {
        o->check = false;
      } else if (flag == "--json") {
        o->json_path = value();
      } else if (flag == "--plot") {
        o->plot_path = value();
      } else {
        throw Error(ErrorCode::kInvalidArgument, "unknown flag " + flag);
      }
    }
    if (o->mpi && o->backend != Backend::kCuda) {
      throw Error(ErrorCode::kInvalidArgument,
                  "--launcher mpi needs --backend cuda: the host reference runs ranks as threads");
    }
    if (o->tokens == 0) o->tokens = o->backend == Backend::kCuda ? 4096 : 512;
    if (o->iters < 1) throw Error(ErrorCode::kInvalidArgument, "--iters must be at least 1");
    if (o->algorithms.empty() || o->sms.empty()) {
      throw Error(ErrorCode::kInvalidArgument, "--algorithms and --sms need at least one value");
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "epcomm-bench: %s\n", e.what());
    usage();
    return false;
  }
  return true;
}

}  // namespace epcomm::bench
