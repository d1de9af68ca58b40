// Turns a device error record into the epcomm::Error the host throws.
#pragma once

#include "device_state.hpp"
#include "epcomm/error.hpp"

namespace epcomm::cuda {

Error error_from_record(const ErrorRecord& rec, int wait_timeout_ms);

}  // namespace epcomm::cuda
