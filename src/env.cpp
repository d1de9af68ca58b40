// Environment variables epcomm reads (see env.hpp for the list).
#include "env.hpp"

#include <cstdlib>
#include <cstring>
#include <string>

#include "epcomm/error.hpp"

namespace epcomm::env {

int cuda_device_max_connections() {
  const char* v = std::getenv("CUDA_DEVICE_MAX_CONNECTIONS");
  const int n = v ? std::atoi(v) : 0;
  return n > 0 ? n : 8;
}

IpcRegions ipc_regions() {
  const char* v = std::getenv("EPCOMM_IPC");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "cumem") == 0) return IpcRegions::kCuMem;
  if (std::strcmp(v, "legacy") == 0) return IpcRegions::kLegacy;
  throw Error(ErrorCode::kInvalidArgument,
              std::string("EPCOMM_IPC=") + v + ": expected cumem (the default) or legacy");
}

}  // namespace epcomm::env
