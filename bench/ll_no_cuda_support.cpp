// Builds without CUDA: the low-latency bench runs the host backend only.
#include "epcomm/error.hpp"
#include "ll_device.hpp"

namespace epcomm::bench {
namespace {
[[noreturn]] void no_cuda() {
  throw Error(ErrorCode::kUnsupported, "epcomm-bench was built without CUDA");
}
}  // namespace

std::unique_ptr<StepClock> make_cuda_step_clock(Stream, int, int) { no_cuda(); }
std::unique_ptr<StepClock> make_cuda_stamp_clock(Stream, int, int) { no_cuda(); }
std::shared_ptr<StartGate> make_cuda_start_gate(int) { no_cuda(); }
std::unique_ptr<CapturedGraph> capture_cuda_graph(Stream, int, const std::function<void()>&) {
  no_cuda();
}
Stream create_cuda_stream(int) { no_cuda(); }
void destroy_cuda_stream(Stream) {}

}  // namespace epcomm::bench
