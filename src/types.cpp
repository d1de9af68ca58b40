// Names and sizes of the public enums.
#include "epcomm/dispatch.hpp"
#include "epcomm/error.hpp"
#include "epcomm/types.hpp"

namespace epcomm {

const char* to_string(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid argument";
    case ErrorCode::kCapacityExceeded: return "capacity exceeded";
    case ErrorCode::kTimeout: return "timeout";
    case ErrorCode::kStaleHandle: return "stale handle";
    case ErrorCode::kInvalidExpert: return "invalid expert id";
    case ErrorCode::kUnsupported: return "unsupported";
    case ErrorCode::kCuda: return "CUDA error";
    case ErrorCode::kBootstrap: return "bootstrap error";
    case ErrorCode::kBroken: return "communicator broken";
  }
  return "unknown error";
}

const char* to_string(RecvLayout layout) {
  return layout == RecvLayout::kExpertMajor ? "expert_major" : "token_major";
}

size_t element_bytes(DType dtype) { return dtype == DType::kBF16 ? 2 : 1; }
size_t index_bytes(IndexType type) { return type == IndexType::kInt32 ? 4 : 8; }

const char* to_string(DType dtype) { return dtype == DType::kBF16 ? "bf16" : "fp8_e4m3"; }
const char* to_string(IndexType type) { return type == IndexType::kInt32 ? "int32" : "int64"; }
const char* to_string(Algorithm algorithm) {
  return algorithm == Algorithm::kFlat ? "flat" : "ring";
}
const char* to_string(Backend backend) { return backend == Backend::kHost ? "host" : "cuda"; }
const char* to_string(Transport transport) {
  return transport == Transport::kIpc ? "ipc" : "nvshmem";
}

}  // namespace epcomm
