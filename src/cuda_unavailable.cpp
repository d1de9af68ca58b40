// make_cuda_backend for builds without CUDA: the request is valid, this build cannot serve it.
#include "backend.hpp"
#include "epcomm/error.hpp"

namespace epcomm::detail {
std::unique_ptr<CommBackend> make_cuda_backend(std::shared_ptr<Bootstrap>, const Config&, int) {
  throw Error(ErrorCode::kUnsupported, "this build of epcomm has no CUDA backend (nvcc not found)");
}
}  // namespace epcomm::detail
