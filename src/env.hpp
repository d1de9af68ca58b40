// The one place epcomm reads the environment. Every variable read is listed here.
#pragma once

namespace epcomm::env {

// CUDA_DEVICE_MAX_CONNECTIONS: hardware work queues CUDA gives each device context (CUDA reads
// it when the context is created; 8 when unset). epcomm reads it only to refuse a setup in
// which ranks of one process sharing a GPU would share queues (see cuda_backend.cpp).
int cuda_device_max_connections();

// EPCOMM_IPC: how ranks in separate processes share regions. Unset or "cumem": cuMem
// allocations with POSIX file descriptors (src/cuda/cumem_region.cpp) where every rank's driver
// exports them, else legacy CUDA IPC handles; "legacy": legacy handles always. Any other value
// throws kInvalidArgument naming it.
enum class IpcRegions { kCuMem, kLegacy };
IpcRegions ipc_regions();

}  // namespace epcomm::env
