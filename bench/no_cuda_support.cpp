// Builds without CUDA: the bench runs the host backend only.
#include "device_support.hpp"
#include "epcomm/error.hpp"

namespace epcomm::bench {

std::unique_ptr<Timeline> make_cuda_timeline(Stream, int, int) {
  throw Error(ErrorCode::kUnsupported, "epcomm-bench was built without CUDA");
}
double measure_copy_gbps(int) { return 0.0; }
double measure_sm_copy_gbps(int, int, int) { return 0.0; }
int gpus_used(int) { return 1; }
int device_sms(int) { return 0; }
std::string device_description() { return "no GPU (host backend)"; }
double measure_p2p_gbps() { return 0.0; }

}  // namespace epcomm::bench
