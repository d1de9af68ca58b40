// What the bench needs from the CUDA runtime, kept apart so the bench builds without CUDA.
#pragma once

#include <memory>
#include <string>

#include "epcomm/types.hpp"

namespace epcomm::bench {

// Times one operation issued between start() and stop_ms(); stop_ms() waits for it.
class OpTimer {
 public:
  virtual ~OpTimer() = default;
  virtual void start() = 0;
  virtual double stop_ms() = 0;
};

std::unique_ptr<OpTimer> make_host_timer();
std::unique_ptr<OpTimer> make_cuda_timer(Stream stream, int device);
// Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written.
double measure_copy_gbps(int device);
std::string device_description();

}  // namespace epcomm::bench
