// What the bench needs from the CUDA runtime, kept apart so the bench builds without CUDA.
#pragma once

#include <memory>
#include <string>

#include "epcomm/types.hpp"

namespace epcomm::bench {

// Timestamps taken in issue order: CUDA events on the communicator's stream, or the host clock
// for the host backend (whose calls return when their work is done).
class Timeline {
 public:
  virtual ~Timeline() = default;
  virtual void mark() = 0;    // at most the capacity given at creation
  virtual void finish() = 0;  // waits for the last mark
  virtual double ms_between(int first, int second) = 0;
};

std::unique_ptr<Timeline> make_host_timeline(int capacity);
std::unique_ptr<Timeline> make_cuda_timeline(Stream stream, int device, int capacity);
// Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written.
double measure_copy_gbps(int device);
// The same, by a copy kernel running one block on each of `sms` SMs (at most the device's),
// storing each byte it reads `fanout` times (bytes read plus bytes written).
double measure_sm_copy_gbps(int device, int sms, int fanout);
// GPUs the ranks spread over: min(ranks, visible GPUs); 1 without CUDA.
int gpus_used(int ranks);
// The device's SM count; 0 without CUDA.
int device_sms(int device);
std::string device_description();
// With two or more GPUs: every GPU copies to the next one at once (cudaMemcpyPeerAsync); the
// bytes one GPU sends per second, in GB/s. 0 with fewer than two GPUs.
double measure_p2p_gbps();
// The NVLink bandwidth per direction per GPU that reports compare with (GB/s).
constexpr double kNvlinkGbpsPerDirection = 450.0;

}  // namespace epcomm::bench
