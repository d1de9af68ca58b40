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
      "  --transport ipc|nvshmem regions shared by CUDA IPC (default) or in NVSHMEM's\n"
      "                          symmetric heap (needs --launcher mpi)\n"
      "  --ranks R               ranks (threads); on GPUs rank r uses GPU r %% count (8)\n"
      "  --tokens T              tokens per rank (4096 on GPUs, 512 on host)\n"
      "  --hidden H --topk K --experts E    (7168, 8, 256)\n"
      "  --dtype bf16|fp8        dispatch element type (bf16)\n"
      "  --algorithms LIST       comma list of flat,ring (flat)\n"
      "  --layouts LIST          receive layouts on the flat path: token_major,expert_major\n"
      "                          (both; the ring path is token-major only)\n"
      "  --expert-alignment N    expert-major groups start at multiples of N rows (1)\n"
      "  --sms LIST              comma list of SMs per rank for dispatch and combine (16)\n"
      "  --ring-slots Q --ring-chunk N   ring path: entries per ring, rows per publish (32, 8)\n"
      "  --warmup N --iters N    (5, 20)\n"
      "  --seed S                workload seed (1)\n"
      "  --no-check              skip the check against the reference\n"
      "  --json FILE             also write the results as JSON\n"
      "  --plot FILE.png         draw time against SMs (needs python3 with matplotlib)\n"
      "  --mode ht|ll|soak|domains   high-throughput (default) or low-latency dispatch/\n"
      "                          combine, random back-to-back calls checked against the\n"
      "                          reference, or the bytes the routing sends across domains\n"
      "low-latency mode (--mode ll):\n"
      "  --tokens LIST           tokens per rank, one row each (1,32,128,256; host: 1,8);\n"
      "                          M = ll_max_tokens_per_rank = the largest\n"
      "  --ll-dtypes LIST        comma list of bf16,fp8 (both)\n"
      "  --replays N             timed replays per figure (200; host: 20), after --warmup\n"
      "  --loop-calls N          dispatch + combine pairs per graph of the loop timing (16;\n"
      "                          0: no loop timing; CUDA only)\n"
      "  --sms N                 one value: dispatch_sms = combine_sms of the LL kernels (16)\n"
      "soak mode (--mode soak; CUDA; ranks, seed and launcher as above):\n"
      "  --seconds N             run batches for N seconds (300)\n"
      "  --batch-rounds N        rounds per batch, the host synchronising between batches (100)\n"
      "domains mode (--mode domains; shape, dtype, layouts and seed as above; no device):\n"
      "  --ranks-per-domain N    ranks per NVLink domain, dividing --ranks (--mode domains;\n"
      "                          --mode ht (flat, token_major) and ll with --transport nvshmem:\n"
      "                          peers outside a rank's domain reached through NVSHMEM puts\n"
      "                          only, and the bytes across domains printed)\n");
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

// --mode ll: the token list, the defaults that depend on the backend, and the flags that only
// the high-throughput mode takes.
void finish_low_latency_options(const std::string& tokens, BenchOptions* o) {
  const bool gpu = o->backend == Backend::kCuda;
  for (const auto& t : split(tokens)) o->ll_tokens.push_back(to_int("--tokens", t));
  if (o->ll_tokens.empty()) {
    o->ll_tokens = gpu ? std::vector<int>{1, 32, 128, 256} : std::vector<int>{1, 8};
  }
  for (int t : o->ll_tokens) {
    if (t < 1) throw Error(ErrorCode::kInvalidArgument, "--tokens: " + std::to_string(t) + " < 1");
  }
  if (o->replays == 0) o->replays = gpu ? 200 : 20;
  if (o->replays < 1) throw Error(ErrorCode::kInvalidArgument, "--replays must be at least 1");
  if (o->loop_calls < 0) {
    throw Error(ErrorCode::kInvalidArgument,
                "--loop-calls = " + std::to_string(o->loop_calls) + " is negative");
  }
  if (!gpu) o->loop_calls = 0;
  if (o->ll_dtypes.empty()) throw Error(ErrorCode::kInvalidArgument, "--ll-dtypes is empty");
  if (o->sms.size() != 1) {
    throw Error(ErrorCode::kInvalidArgument, "--mode ll takes one --sms value");
  }
  if (o->warmup < 0) throw Error(ErrorCode::kInvalidArgument, "--warmup must be at least 0");
  if (!o->plot_path.empty()) throw Error(ErrorCode::kInvalidArgument, "--plot is for --mode ht");
  if (!o->check) {  // every timed replay is compared with the checked round's output
    throw Error(ErrorCode::kInvalidArgument, "--no-check is for --mode ht; --mode ll checks");
  }
  o->tokens = 1;  // the high-throughput size: unused, kept valid
}

}  // namespace

bool parse_options(int argc, char** argv, BenchOptions* o) {
  o->backend = testing::cuda_device_count() > 0 ? Backend::kCuda : Backend::kHost;
  std::string tokens;
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
        if (v != "host" && v != "cuda")
          throw Error(ErrorCode::kInvalidArgument, "--backend = " + v);
        o->backend = v == "host" ? Backend::kHost : Backend::kCuda;
      } else if (flag == "--launcher") {
        const std::string v = value();
        if (v != "inprocess" && v != "mpi") {
          throw Error(ErrorCode::kInvalidArgument, "--launcher = " + v);
        }
        o->mpi = v == "mpi";
      } else if (flag == "--transport") {
        const std::string v = value();
        if (v != "ipc" && v != "nvshmem") {
          throw Error(ErrorCode::kInvalidArgument, "--transport = " + v);
        }
        o->transport = v == "ipc" ? Transport::kIpc : Transport::kNvshmem;
      } else if (flag == "--ranks") {
        o->ranks = to_int(flag, value());
      } else if (flag == "--mode") {
        const std::string v = value();
        if (v != "ht" && v != "ll" && v != "soak" && v != "domains") {
          throw Error(ErrorCode::kInvalidArgument, "--mode = " + v);
        }
        o->mode = v == "ht"     ? BenchMode::kHighThroughput
                  : v == "ll"   ? BenchMode::kLowLatency
                  : v == "soak" ? BenchMode::kSoak
                                : BenchMode::kDomains;
      } else if (flag == "--ranks-per-domain") {
        o->ranks_per_domain = to_int(flag, value());
      } else if (flag == "--seconds") {
        o->soak_seconds = to_int(flag, value());
      } else if (flag == "--batch-rounds") {
        o->soak_batch_rounds = to_int(flag, value());
      } else if (flag == "--tokens") {
        tokens = value();  // an integer or, with --mode ll, a list: parsed once the mode is known
      } else if (flag == "--ll-dtypes") {
        o->ll_dtypes.clear();
        for (const auto& d : split(value())) {
          if (d != "bf16" && d != "fp8") {
            throw Error(ErrorCode::kInvalidArgument, "--ll-dtypes: unknown '" + d + "'");
          }
          o->ll_dtypes.push_back(d == "bf16" ? DType::kBF16 : DType::kFP8E4M3);
        }
      } else if (flag == "--replays") {
        o->replays = to_int(flag, value());
      } else if (flag == "--loop-calls") {
        o->loop_calls = to_int(flag, value());
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
      } else if (flag == "--layouts") {
        o->layouts.clear();
        for (const auto& l : split(value())) {
          if (l != "token_major" && l != "expert_major") {
            throw Error(ErrorCode::kInvalidArgument, "--layouts: unknown '" + l + "'");
          }
          o->layouts.push_back(l == "token_major" ? RecvLayout::kTokenMajor
                                                  : RecvLayout::kExpertMajor);
        }
      } else if (flag == "--expert-alignment") {
        o->expert_alignment = to_int(flag, value());
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
    if (o->transport == Transport::kNvshmem && !o->mpi) {
      throw Error(ErrorCode::kInvalidArgument,
                  "--transport nvshmem needs --launcher mpi: NVSHMEM has one PE per process");
    }
    if (o->mode == BenchMode::kLowLatency) {
      finish_low_latency_options(tokens, o);
    } else if (!tokens.empty()) {
      o->tokens = to_int("--tokens", tokens);
    }
    if (o->tokens == 0) o->tokens = o->backend == Backend::kCuda ? 4096 : 512;
    if (o->mode == BenchMode::kSoak && (o->soak_seconds < 0 || o->soak_batch_rounds < 1)) {
      throw Error(ErrorCode::kInvalidArgument, "--seconds must be >= 0, --batch-rounds >= 1");
    }
    if (o->mode == BenchMode::kDomains &&
        (o->ranks_per_domain < 1 || o->ranks % o->ranks_per_domain != 0)) {
      throw Error(
          ErrorCode::kInvalidArgument,
          "--ranks-per-domain = " + std::to_string(o->ranks_per_domain) +
              ": --mode domains needs a positive divisor of --ranks = " + std::to_string(o->ranks));
    }
    if (o->mode == BenchMode::kLowLatency && o->ranks_per_domain != 0 &&
        (o->transport != Transport::kNvshmem || o->ranks_per_domain < 1)) {
      throw Error(ErrorCode::kInvalidArgument,
                  "--ranks-per-domain = " + std::to_string(o->ranks_per_domain) +
                      ": --mode ll crosses domains over --transport nvshmem only, with a "
                      "positive divisor of the ranks");
    }
    if (o->mode == BenchMode::kHighThroughput && o->ranks_per_domain != 0 &&
        (o->transport != Transport::kNvshmem || o->ranks_per_domain < 1 ||
         o->algorithms != std::vector<Algorithm>{Algorithm::kFlat} ||
         o->layouts != std::vector<RecvLayout>{RecvLayout::kTokenMajor})) {
      throw Error(ErrorCode::kInvalidArgument,
                  "--ranks-per-domain = " + std::to_string(o->ranks_per_domain) +
                      ": the high-throughput rows cross domains over --transport nvshmem only, "
                      "with a positive divisor of the ranks, --algorithms flat and --layouts "
                      "token_major (the ring and expert-major rows do not cross domains)");
    }
    if (o->mode == BenchMode::kSoak && o->ranks_per_domain != 0) {
      throw Error(ErrorCode::kInvalidArgument, "--ranks-per-domain is not for --mode soak");
    }
    if (o->iters < 1) throw Error(ErrorCode::kInvalidArgument, "--iters must be at least 1");
    if (o->algorithms.empty() || o->sms.empty() || o->layouts.empty()) {
      throw Error(ErrorCode::kInvalidArgument,
                  "--algorithms, --layouts and --sms need at least one value");
    }
    if (o->expert_alignment < 1) {
      throw Error(ErrorCode::kInvalidArgument,
                  "--expert-alignment = " + std::to_string(o->expert_alignment) + " is below 1");
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "epcomm-bench: %s\n", e.what());
    usage();
    return false;
  }
  return true;
}

}  // namespace epcomm::bench
