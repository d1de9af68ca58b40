// The low-latency bench's device pieces for the host backend, and the choice between host and
// CUDA versions.
#include <chrono>
#include <vector>

#include "epcomm/error.hpp"
#include "ll_device.hpp"

namespace epcomm::bench {
namespace {

using Clock = std::chrono::steady_clock;

// Host calls return when their work is done, so the host clock times them.
class HostStepClock final : public StepClock {
 public:
  explicit HostStepClock(int num_marks) : marks_(num_marks) {}
  void mark(int i) override { marks_.at(i) = Clock::now(); }
  void wait(int) override {}
  double ms_between(int a, int b) override {
    return std::chrono::duration<double, std::milli>(marks_.at(b) - marks_.at(a)).count();
  }

 private:
  std::vector<Clock::time_point> marks_;
};

// Host calls synchronize the ranks themselves; nothing waits behind a gate.
class OpenGate final : public StartGate {
 public:
  void prepare(int) override {}
  void hold(Stream, uint32_t) override {}
  void open(uint32_t) override {}
  bool gave_up() const override { return false; }
};

}  // namespace

std::unique_ptr<StepClock> make_step_clock(Backend backend, Stream stream, int device,
                                           int num_marks) {
  if (backend == Backend::kCuda) return make_cuda_step_clock(stream, device, num_marks);
  return std::make_unique<HostStepClock>(num_marks);
}

std::unique_ptr<StepClock> make_stamp_clock(Backend backend, Stream stream, int device,
                                            int num_marks) {
  if (backend == Backend::kCuda) return make_cuda_stamp_clock(stream, device, num_marks);
  return std::make_unique<HostStepClock>(num_marks);
}

std::shared_ptr<StartGate> make_start_gate(Backend backend, int device) {
  if (backend == Backend::kCuda) return make_cuda_start_gate(device);
  return std::make_shared<OpenGate>();
}

std::unique_ptr<CapturedGraph> capture_graph(Backend backend, Stream stream, int device,
                                             const std::function<void()>& issue) {
  if (backend != Backend::kCuda) {
    throw Error(ErrorCode::kUnsupported, "CUDA graphs need the CUDA backend");
  }
  return capture_cuda_graph(stream, device, issue);
}

Stream create_bench_stream(Backend backend, int device) {
  return backend == Backend::kCuda ? create_cuda_stream(device) : nullptr;
}

void destroy_bench_stream(Backend backend, Stream stream) {
  if (backend == Backend::kCuda && stream) destroy_cuda_stream(stream);
}

}  // namespace epcomm::bench
