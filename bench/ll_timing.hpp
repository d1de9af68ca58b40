// Timed low-latency rounds on one rank: eager calls, the send/receive hook, and one captured
// graph. Every rank runs the same sequence; each replay is collective.
#pragma once

#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "epcomm/epcomm.hpp"
#include "ll_device.hpp"

namespace epcomm::bench {

// One dispatch/combine pair's inputs, in the backend's memory.
struct LlRoundInputs {
  LowLatencyDispatchInputs dispatch;    // x, topk_idx, T, K, use_fp8
  const void* y = nullptr;              // [Le][R * M][H] bf16: the stand-in expert output
  const float* topk_weights = nullptr;  // [T][K]
  void* out = nullptr;                  // [T][H] bf16
};

// samples[span][replay]: milliseconds between two marks of each timed replay.
using Samples = std::vector<std::vector<double>>;

// Thrown on every rank, with the same text, when any rank failed a collective step.
class CollectiveFailure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Collective. The text of the first rank whose `mine` is not empty ("" when all are): every
// rank learns it, so all ranks take the same branch afterwards. Also a barrier.
std::string first_failure(Bootstrap& bootstrap, const std::string& mine);

// Collective. Runs `fn` on this rank, then throws CollectiveFailure on every rank if it threw on
// any ("rank r: what"). Keeps a failure on one rank from leaving its peers in a barrier.
void collective_step(Bootstrap& bootstrap, const std::function<void()>& fn);

struct LlTimerSetup {
  Communicator* comm = nullptr;
  Bootstrap* bootstrap = nullptr;
  StartGate* gate = nullptr;
  bool opens_gate = false;  // rank 0 of a shared in-process gate, every rank under mpirun
  Backend backend = Backend::kHost;
  Stream stream = nullptr;  // the communicator's stream
  int device = 0;
  int warmup = 0, replays = 0;
  int loop_calls = 0;  // dispatch + combine pairs in each graph of time_graph_loop
};

// One per rank for the whole sweep: gate tickets must keep increasing.
class LlTimer {
 public:
  explicit LlTimer(const LlTimerSetup& setup) : s_(setup) {}

  // Spans: dispatch (send and receive in one call), combine, dispatch + combine.
  Samples time_eager(const LlRoundInputs& in);
  // Spans: dispatch send, dispatch receive, combine send, combine receive (send_only calls,
  // each finished by low_latency_receive right away: nothing runs between the phases).
  Samples time_hook(const LlRoundInputs& in);
  // CUDA only. Spans: dispatch, combine, dispatch + combine, between event nodes inside one
  // graph that holds [dispatch; combine]. See time_graph in ll_timing.cpp for why one graph.
  Samples time_graph(const LlRoundInputs& in);
  // CUDA only. Spans: dispatch, combine, dispatch + combine per call, averaged over the
  // loop_calls pairs of one graph [dispatch; combine] x loop_calls, as a decode step's layers
  // replay them back to back. Dispatch and combine come from a graph with a stamp kernel
  // (make_stamp_clock) before every call; dispatch + combine from a second graph with event
  // nodes at its two ends only.
  Samples time_graph_loop(const LlRoundInputs& in);

 private:
  using Spans = std::vector<std::pair<int, int>>;
  // warmup + replays collective replays of `issue`, which records marks 0..last_mark on `clock`.
  Samples run(StepClock& clock, const Spans& spans, int last_mark,
              const std::function<void()>& issue);

  LlTimerSetup s_;
  uint32_t ticket_ = 0;
};

}  // namespace epcomm::bench
