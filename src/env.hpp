// The one place epcomm reads the environment. Every variable read is listed here.
#pragma once

namespace epcomm::env {

// CUDA_DEVICE_MAX_CONNECTIONS: hardware work queues CUDA gives each device context (CUDA reads
// it when the context is created; 8 when unset). epcomm reads it only to refuse a setup in
// which ranks of one process sharing a GPU would share queues (see cuda_backend.cpp).
int cuda_device_max_connections();

}  // namespace epcomm::env
