// The one place epcomm reads the environment. Every variable read is listed here.
#pragma once

namespace epcomm::env {

// CUDA_DEVICE_MAX_CONNECTIONS: hardware work queues CUDA gives each device context (CUDA reads
// it when the context is created; 8 when unset). epcomm reads it only to refuse a setup in
// which ranks of one process sharing a GPU would share queues (see cuda_backend.cpp).
int cuda_device_max_connections();

// EPCOMM_IPC=cumem: ranks in separate processes share cuMem regions instead of legacy CUDA IPC
// handles (src/cuda/cumem_region.cpp). Any other value, or none: legacy handles.
bool ipc_cumem_requested();

}  // namespace epcomm::env
