// A program outside epcomm's tree, built against the installed package: two ranks as threads
// dispatch and combine on the host backend, and on the CUDA backend too when the package has it
// and a GPU is present; exits nonzero unless every output is as expected.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "epcomm/epcomm.hpp"

#ifdef EPCOMM_CONSUMER_CUDA
#include <cuda_runtime.h>
#endif

namespace {

constexpr int kRanks = 2, kTokens = 8, kHidden = 256, kTopk = 2, kExperts = 4;

// Small integers are exact in bf16: the top half of the float's bits.
uint16_t bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return static_cast<uint16_t>(bits >> 16);
}

float input_value(int rank, int token, int h) { return float(rank + token % 5 + h % 3 + 1); }

// Experts 0-1 live on rank 0, 2-3 on rank 1. Token t % 4: 0 goes nowhere, 1 to rank 0 only
// (both slots), 2 to rank 1 only, 3 to both ranks.
void route(int token, int64_t* slots) {
  static const int64_t kSlots[4][kTopk] = {{-1, -1}, {0, 1}, {3, 2}, {0, 3}};
  slots[0] = kSlots[token % 4][0];
  slots[1] = kSlots[token % 4][1];
}
int ranks_reached(int token) { return token % 4 == 3 ? 2 : token % 4 == 0 ? 0 : 1; }

// Host memory for the host backend, device memory of the current GPU for the CUDA backend.
struct Buffers {
  epcomm::Backend backend;
  std::vector<void*> device;
  void* put(const void* host, size_t bytes) {
    if (backend == epcomm::Backend::kHost) return const_cast<void*>(host);
#ifdef EPCOMM_CONSUMER_CUDA
    void* p = nullptr;
    if (cudaMalloc(&p, bytes) != cudaSuccess) throw std::runtime_error("cudaMalloc failed");
    cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice);
    device.push_back(p);
    return p;
#else
    throw std::runtime_error("built without CUDA");
#endif
  }
  void get(void* host, const void* from, size_t bytes) {
    if (backend == epcomm::Backend::kHost) return;
#ifdef EPCOMM_CONSUMER_CUDA
    cudaMemcpy(host, from, bytes, cudaMemcpyDeviceToHost);
#endif
  }
  ~Buffers() {
#ifdef EPCOMM_CONSUMER_CUDA
    for (void* p : device) cudaFree(p);
#endif
  }
};

// Returns the number of wrong values this rank saw.
int run_rank(std::shared_ptr<epcomm::Bootstrap> bootstrap, const epcomm::Config& config,
             epcomm::Backend backend) {
  const int rank = bootstrap->rank();
#ifdef EPCOMM_CONSUMER_CUDA
  if (backend == epcomm::Backend::kCuda) cudaSetDevice(0);
#endif
  auto comm = epcomm::Communicator::create(bootstrap, config, backend);
  std::vector<uint16_t> x(kTokens * kHidden), out(kTokens * kHidden, 0xffff);
  std::vector<int64_t> topk_idx(kTokens * kTopk);
  for (int t = 0; t < kTokens; ++t) {
    route(t, &topk_idx[t * kTopk]);
    for (int h = 0; h < kHidden; ++h) x[t * kHidden + h] = bf16(input_value(rank, t, h));
  }
  Buffers buffers{backend, {}};
  void* out_ptr = buffers.put(out.data(), out.size() * 2);
  epcomm::DispatchInputs in;
  in.x = buffers.put(x.data(), x.size() * 2);
  in.topk_idx = buffers.put(topk_idx.data(), topk_idx.size() * 8);
  in.num_tokens = kTokens;
  in.num_topk = kTopk;
  epcomm::DispatchResult res = comm->dispatch(in);
  int errors = 0;
  // Each source sends this rank the tokens with t % 4 == 3 and those of this rank's own half.
  if (res.num_recv != kRanks * kTokens / 2) {
    std::fprintf(stderr, "rank %d: num_recv %d, expected %d\n", rank, res.num_recv,
                 kRanks * kTokens / 2);
    ++errors;
  }
  // Identity experts: combine then returns each token times the number of ranks it reached.
  comm->combine(res.recv_x, res.handle, out_ptr);
  comm->synchronize();
  buffers.get(out.data(), out_ptr, out.size() * 2);
  for (int t = 0; t < kTokens; ++t) {
    for (int h = 0; h < kHidden; ++h) {
      const uint16_t want = bf16(input_value(rank, t, h) * float(ranks_reached(t)));
      if (out[t * kHidden + h] != want && errors++ < 5) {
        std::fprintf(stderr, "rank %d: out[%d][%d] = 0x%04x, expected 0x%04x\n", rank, t, h,
                     out[t * kHidden + h], want);
      }
    }
  }
  return errors;
}

}  // namespace

int main() {
  // The library, its headers and the package (EPCOMM_EXPECTED_VERSION, from find_package) must
  // all be the same version.
  if (std::string(epcomm::version()) != EPCOMM_VERSION_STRING ||
      std::string(epcomm::version()) != EPCOMM_EXPECTED_VERSION) {
    std::fprintf(stderr, "version: library %s, header %s, package %s\n", epcomm::version(),
                 EPCOMM_VERSION_STRING, EPCOMM_EXPECTED_VERSION);
    return 1;
  }
  // Two ranks of this process share GPU 0: each needs hardware queues of its own.
  setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", /*overwrite=*/0);
  epcomm::Config config;
  config.num_experts = kExperts;
  config.hidden = kHidden;
  config.max_tokens_per_rank = kTokens;
  config.max_topk = kTopk;
  std::vector<epcomm::Backend> backends{epcomm::Backend::kHost};
#ifdef EPCOMM_CONSUMER_CUDA
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) == cudaSuccess && gpus > 0) {
    backends.push_back(epcomm::Backend::kCuda);
  } else {
    std::printf("no GPU present: the CUDA backend is not run\n");
  }
#endif
  for (const epcomm::Backend backend : backends) {
    auto bootstraps = epcomm::make_in_process_bootstraps(kRanks, /*timeout_ms=*/10000);
    std::vector<int> errors(kRanks, 0);
    std::vector<std::thread> threads;
    for (int r = 0; r < kRanks; ++r) {
      threads.emplace_back([&, r] {
        try {
          errors[r] = run_rank(std::move(bootstraps[r]), config, backend);
        } catch (const std::exception& e) {
          std::fprintf(stderr, "rank %d: %s\n", r, e.what());
          errors[r] = 1;
        }
      });
    }
    for (auto& thread : threads) thread.join();
    for (int r = 0; r < kRanks; ++r) {
      if (errors[r] != 0) return 1;
    }
    std::printf("epcomm %s: dispatch and combine on %d %s ranks as expected\n",
                epcomm::version(), kRanks, epcomm::to_string(backend));
  }
  return 0;
}
