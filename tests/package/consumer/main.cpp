// A program outside epcomm's tree, built against the installed package: two ranks as threads
// dispatch and combine on the host backend; exits nonzero unless every output is as expected.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "epcomm/epcomm.hpp"

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

// Returns the number of wrong values this rank saw.
int run_rank(std::shared_ptr<epcomm::Bootstrap> bootstrap, const epcomm::Config& config) {
  const int rank = bootstrap->rank();
  auto comm = epcomm::Communicator::create(bootstrap, config, epcomm::Backend::kHost);
  std::vector<uint16_t> x(kTokens * kHidden), out(kTokens * kHidden, 0xffff);
  std::vector<int64_t> topk_idx(kTokens * kTopk);
  for (int t = 0; t < kTokens; ++t) {
    route(t, &topk_idx[t * kTopk]);
    for (int h = 0; h < kHidden; ++h) x[t * kHidden + h] = bf16(input_value(rank, t, h));
  }
  epcomm::DispatchInputs in;
  in.x = x.data();
  in.topk_idx = topk_idx.data();
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
  comm->combine(res.recv_x, res.handle, out.data());
  comm->synchronize();
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
  epcomm::Config config;
  config.num_experts = kExperts;
  config.hidden = kHidden;
  config.max_tokens_per_rank = kTokens;
  config.max_topk = kTopk;
  auto bootstraps = epcomm::make_in_process_bootstraps(kRanks, /*timeout_ms=*/10000);
  std::vector<int> errors(kRanks, 0);
  std::vector<std::thread> threads;
  for (int r = 0; r < kRanks; ++r) {
    threads.emplace_back([&, r] {
      try {
        errors[r] = run_rank(std::move(bootstraps[r]), config);
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
  std::printf("epcomm %s: dispatch and combine on %d host ranks as expected\n", epcomm::version(),
              kRanks);
  return 0;
}
