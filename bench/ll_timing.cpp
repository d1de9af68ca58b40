// Low-latency timing loops. Per replay: hold the stream at the start gate, issue the calls with
// marks between them, agree with the other ranks (a barrier), open the gate, wait for the last
// mark. All ranks thus start together on the device, and the marks time device work only.
#include "ll_timing.hpp"

#include <algorithm>
#include <cstring>

namespace epcomm::bench {
namespace {

constexpr size_t kMessageBytes = 512;  // failure texts travel in fixed-size slots

}  // namespace

std::string first_failure(Bootstrap& bootstrap, const std::string& mine) {
  const int R = bootstrap.size();
  const int32_t failed = mine.empty() ? 0 : 1;
  std::vector<int32_t> all(R);
  bootstrap.allGather(&failed, all.data(), sizeof(failed));
  const auto first = std::find(all.begin(), all.end(), 1);
  if (first == all.end()) return "";
  std::vector<char> slot(kMessageBytes, '\0');
  std::memcpy(slot.data(), mine.data(), std::min(mine.size(), kMessageBytes - 1));
  std::vector<char> slots(kMessageBytes * R);
  bootstrap.allGather(slot.data(), slots.data(), kMessageBytes);
  return std::string(slots.data() + kMessageBytes * (first - all.begin()));
}

void collective_step(Bootstrap& bootstrap, const std::function<void()>& fn) {
  std::string mine;
  try {
    fn();
  } catch (const std::exception& e) {
    mine = "rank " + std::to_string(bootstrap.rank()) + ": " + e.what();
  }
  const std::string failure = first_failure(bootstrap, mine);
  if (!failure.empty()) throw CollectiveFailure(failure);
}

Samples LlTimer::run(StepClock& clock, const Spans& spans, int last_mark,
                     const std::function<void()>& issue) {
  Samples out(spans.size());
  for (int i = 0; i < s_.warmup + s_.replays; ++i) {
    const uint32_t ticket = ++ticket_;
    std::string error;
    try {
      s_.gate->hold(s_.stream, ticket);
      issue();
      if (s_.gate->gave_up()) {
        error = "the start gate gave up after " + std::to_string(kGateTimeoutSeconds) +
                " s: a call waited on the host for work issued behind the gate";
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
    if (!error.empty()) error = "rank " + std::to_string(s_.bootstrap->rank()) + ": " + error;
    // NOTE: every rank has issued this replay once first_failure returns; only then may the
    // gate open, and it must open even after a failure, or the streams would stay held.
    const std::string failure = first_failure(*s_.bootstrap, error);
    if (s_.opens_gate) s_.gate->open(ticket);
    if (!failure.empty()) throw CollectiveFailure(failure);
    clock.wait(last_mark);
    if (i < s_.warmup) continue;
    for (size_t k = 0; k < spans.size(); ++k) {
      out[k].push_back(clock.ms_between(spans[k].first, spans[k].second));
    }
  }
  collective_step(*s_.bootstrap, [&] { s_.comm->synchronize(); });  // device-side errors
  return out;
}

Samples LlTimer::time_eager(const LlRoundInputs& in) {
  auto clock = make_step_clock(s_.backend, s_.stream, s_.device, 3);
  Communicator& comm = *s_.comm;
  return run(*clock, {{0, 1}, {1, 2}, {0, 2}}, 2, [&] {
    clock->mark(0);
    const LowLatencyDispatchResult res = comm.low_latency_dispatch(in.dispatch);
    clock->mark(1);
    comm.low_latency_combine(in.y, in.dispatch.topk_idx, in.topk_weights, res.handle, in.out);
    clock->mark(2);
  });
}

Samples LlTimer::time_hook(const LlRoundInputs& in) {
  auto clock = make_step_clock(s_.backend, s_.stream, s_.device, 5);
  Communicator& comm = *s_.comm;
  return run(*clock, {{0, 1}, {1, 2}, {2, 3}, {3, 4}}, 4, [&] {
    clock->mark(0);
    const LowLatencyDispatchResult res = comm.low_latency_dispatch(in.dispatch, true);
    clock->mark(1);
    comm.low_latency_receive(res.handle);
    clock->mark(2);
    comm.low_latency_combine(in.y, in.dispatch.topk_idx, in.topk_weights, res.handle, in.out, true);
    clock->mark(3);
    comm.low_latency_receive(res.handle);
    clock->mark(4);
  });
}

// Why one graph [mark 0; dispatch; mark 1; combine; mark 2] and not a dispatch-only graph: a
// dispatch leaves its buffer waiting for its combine, so a graph of dispatches alone could not
// be replayed. Two graphs (dispatch, combine) replayed alternately would also be correct, but
// each graph launch would then count in the times; event-record nodes inside the one graph time
// dispatch and combine as a decode step replays them. Every replay reuses the captured call's
// buffer; the kernels tag messages with a device-side round counter per buffer, so replays of
// one captured call are valid (DESIGN section 10).
Samples LlTimer::time_graph(const LlRoundInputs& in) {
  // Marks 0-2 are graph nodes; mark 3, recorded after each launch, is what the host waits for.
  auto clock = make_step_clock(s_.backend, s_.stream, s_.device, 4);
  Communicator& comm = *s_.comm;
  std::unique_ptr<CapturedGraph> graph;
  collective_step(*s_.bootstrap, [&] {
    graph = capture_graph(s_.backend, s_.stream, s_.device, [&] {
      clock->mark(0);
      const LowLatencyDispatchResult res = comm.low_latency_dispatch(in.dispatch);
      clock->mark(1);
      comm.low_latency_combine(in.y, in.dispatch.topk_idx, in.topk_weights, res.handle, in.out);
      clock->mark(2);
    });
  });
  Samples out = run(*clock, {{0, 1}, {1, 2}, {0, 2}}, 3, [&] {
    graph->launch(s_.stream);
    clock->mark(3);
  });
  // NOTE: destroying a graph may wait for the device; a peer already issuing the next case's
  // calls would then wait on this rank's kernels and this rank on them. The step's agreement
  // keeps every rank here until all have destroyed theirs.
  collective_step(*s_.bootstrap, [&] { graph.reset(); });
  return out;
}

// NOTE: the start gate releases the ranks together, but the first call's start still differs
// between ranks by the graph launches' skew; over loop_calls calls the ranks then run in step
// (every combine waits for every rank), so the per-call average is a decode step's layer time.
Samples LlTimer::time_graph_loop(const LlRoundInputs& in) {
  const int L = s_.loop_calls;
  Communicator& comm = *s_.comm;
  // [stamps: one before each call and one at the end] or [ends: an event node at each end].
  auto capture_loop = [&](StepClock* stamps, StepClock* ends) {
    std::unique_ptr<CapturedGraph> graph;
    collective_step(*s_.bootstrap, [&] {
      graph = capture_graph(s_.backend, s_.stream, s_.device, [&] {
        if (ends) ends->mark(0);
        for (int i = 0; i < L; ++i) {
          if (stamps) stamps->mark(2 * i);
          const LowLatencyDispatchResult res = comm.low_latency_dispatch(in.dispatch);
          if (stamps) stamps->mark(2 * i + 1);
          comm.low_latency_combine(in.y, in.dispatch.topk_idx, in.topk_weights, res.handle, in.out);
        }
        if (stamps) stamps->mark(2 * L);
        if (ends) ends->mark(1);
      });
    });
    return graph;
  };
  auto release = [&](std::unique_ptr<CapturedGraph>& graph) {  // see time_graph
    collective_step(*s_.bootstrap, [&] { graph.reset(); });
  };

  // Call i: dispatch from stamp 2i to 2i + 1, combine from 2i + 1 to 2i + 2.
  auto stamps = make_stamp_clock(s_.backend, s_.stream, s_.device, 2 * L + 1);
  std::unique_ptr<CapturedGraph> stamped = capture_loop(stamps.get(), nullptr);
  Spans spans;
  for (int i = 0; i < 2 * L; ++i) spans.emplace_back(i, i + 1);
  const Samples parts = run(*stamps, spans, 2 * L, [&] { stamped->launch(s_.stream); });
  release(stamped);
  // Mark 2, recorded after each launch, is what the host waits for.
  auto ends = make_step_clock(s_.backend, s_.stream, s_.device, 3);
  std::unique_ptr<CapturedGraph> plain = capture_loop(nullptr, ends.get());
  const Samples whole = run(*ends, {{0, 1}}, 2, [&] {
    plain->launch(s_.stream);
    ends->mark(2);
  });
  release(plain);

  const size_t n = whole[0].size();
  Samples out(3, std::vector<double>(n, 0.0));
  for (size_t r = 0; r < n; ++r) {
    for (int i = 0; i < L; ++i) {
      out[0][r] += parts[2 * i][r] / L;
      out[1][r] += parts[2 * i + 1][r] / L;
    }
    out[2][r] = whole[0][r] / L;
  }
  return out;
}

}  // namespace epcomm::bench
