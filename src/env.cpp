// Environment variables epcomm reads (see env.hpp for the list).
#include "env.hpp"

#include <cstdlib>
#include <cstring>

namespace epcomm::env {

int cuda_device_max_connections() {
  const char* v = std::getenv("CUDA_DEVICE_MAX_CONNECTIONS");
  const int n = v ? std::atoi(v) : 0;
  return n > 0 ? n : 8;
}

bool ipc_cumem_requested() {
  const char* v = std::getenv("EPCOMM_IPC");
  return v != nullptr && std::strcmp(v, "cumem") == 0;
}

}  // namespace epcomm::env
