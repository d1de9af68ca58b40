// What the low-latency bench needs from the device: reusable timing marks, a start gate that
// releases every rank's stream at once, and captured graphs. Host versions stand in for the
// host backend (whose calls return when their work is done); CUDA versions live in
// ll_cuda_support.cpp so that the bench builds without CUDA.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "epcomm/types.hpp"

namespace epcomm::bench {

// `num_marks` marks on one stream, recorded again every iteration (mark i overwrites the last
// mark i). Inside a stream capture a mark becomes an event-record node of the graph, so that
// each replay records it: the way to time the parts of a graph.
class StepClock {
 public:
  virtual ~StepClock() = default;
  virtual void mark(int i) = 0;
  virtual void wait(int i) = 0;  // until the latest record of mark i has happened
  virtual double ms_between(int first, int second) = 0;
};

// Holds streams until opened. Every rank holds its stream with the same ticket, issues its calls
// behind it, and once all have issued (a host barrier) the gate opens: the ranks then start on
// the device together, so neither host skew nor launch latency counts in device time.
// Tickets increase; open(t) releases every hold with a ticket <= t.
class StartGate {
 public:
  virtual ~StartGate() = default;
  // Loads the gate's kernel on `device`. Each rank calls it before any rank issues work: under
  // lazy loading a kernel's first launch can wait for the whole context, and so for peers'
  // kernels that are themselves waiting for this rank.
  virtual void prepare(int device) = 0;
  virtual void hold(Stream stream, uint32_t ticket) = 0;
  virtual void open(uint32_t ticket) = 0;
  // True once a hold gave up waiting (after kGateTimeoutSeconds): something waited on the host
  // for work behind the gate, and the timings of that iteration mean nothing.
  virtual bool gave_up() const = 0;
};
constexpr int kGateTimeoutSeconds = 20;

// A graph captured from the calls `issue` makes on `stream`, then instantiated.
class CapturedGraph {
 public:
  virtual ~CapturedGraph() = default;
  virtual void launch(Stream stream) = 0;
};

std::unique_ptr<StepClock> make_step_clock(Backend backend, Stream stream, int device,
                                           int num_marks);
// Marks that are one-thread kernels writing the device's global timer (ns; one clock for every
// stream of the GPU). Captured, a mark is a kernel node: the next kernel follows it as it follows
// any kernel, where an event-record node between two calls delayed the next call's start on some
// of 8 in-process ranks by up to 20-30 us (docs/perf.md). A mark costs about one kernel launch.
// The host backend gets host marks.
std::unique_ptr<StepClock> make_stamp_clock(Backend backend, Stream stream, int device,
                                            int num_marks);
// One gate for the ranks of this process: all of them, or just this one under mpirun. Its
// memory is pinned from `device` (no context is made on another GPU).
std::shared_ptr<StartGate> make_start_gate(Backend backend, int device);
// Throws kUnsupported for the host backend. Capture is thread-local: other ranks' threads may
// make CUDA calls meanwhile. Ends the capture before rethrowing when `issue` throws.
std::unique_ptr<CapturedGraph> capture_graph(Backend backend, Stream stream, int device,
                                             const std::function<void()>& issue);
// A non-blocking stream of `device` (nullptr on the host backend), and its release.
Stream create_bench_stream(Backend backend, int device);
void destroy_bench_stream(Backend backend, Stream stream);

// The CUDA versions (ll_cuda_support.cpp, or stubs that throw kUnsupported without CUDA).
std::unique_ptr<StepClock> make_cuda_step_clock(Stream stream, int device, int num_marks);
std::unique_ptr<StepClock> make_cuda_stamp_clock(Stream stream, int device, int num_marks);
std::shared_ptr<StartGate> make_cuda_start_gate(int device);
std::unique_ptr<CapturedGraph> capture_cuda_graph(Stream stream, int device,
                                                  const std::function<void()>& issue);
Stream create_cuda_stream(int device);
void destroy_cuda_stream(Stream stream);

}  // namespace epcomm::bench
