// CUDA events around each operation on the communicator's stream; copy bandwidth probe.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <vector>

#include "cuda_timing.hpp"
#include "device_support.hpp"
#include "epcomm/error.hpp"

namespace epcomm::bench {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw Error(ErrorCode::kCuda, std::string(what) + ": " + cudaGetErrorString(err));
  }
}

namespace {

class CudaTimeline final : public Timeline {
 public:
  CudaTimeline(Stream stream, int device, int capacity)
      : stream_(reinterpret_cast<cudaStream_t>(stream)), events_(capacity) {
    check(cudaSetDevice(device), "cudaSetDevice");
    for (auto& e : events_) check(cudaEventCreate(&e), "cudaEventCreate");
  }
  ~CudaTimeline() override {
    for (auto& e : events_) cudaEventDestroy(e);
  }
  void mark() override {
    if (next_ >= static_cast<int>(events_.size())) {
      throw Error(ErrorCode::kInvalidArgument, "CudaTimeline: more marks than its capacity");
    }
    check(cudaEventRecord(events_[next_++], stream_), "cudaEventRecord");
  }
  void finish() override {
    if (next_ > 0) check(cudaEventSynchronize(events_[next_ - 1]), "cudaEventSynchronize");
  }
  double ms_between(int a, int b) override {
    float ms = 0;
    check(cudaEventElapsedTime(&ms, events_[a], events_[b]), "cudaEventElapsedTime");
    return ms;
  }

 private:
  cudaStream_t stream_;
  std::vector<cudaEvent_t> events_;
  int next_ = 0;
};

}  // namespace

std::unique_ptr<Timeline> make_cuda_timeline(Stream stream, int device, int capacity) {
  return std::make_unique<CudaTimeline>(stream, device, capacity);
}

double median_copy_ms(int device, size_t src_bytes, size_t dst_bytes, int warmup, int timed,
                      const std::function<void(const void*, void*, cudaStream_t)>& copy) {
  check(cudaSetDevice(device), "cudaSetDevice");
  void *src = nullptr, *dst = nullptr;
  check(cudaMalloc(&src, src_bytes), "cudaMalloc");
  check(cudaMalloc(&dst, dst_bytes), "cudaMalloc");
  check(cudaMemset(src, 0x3c, src_bytes), "cudaMemset");
  cudaStream_t stream;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  std::vector<double> ms;
  {
    CudaTimeline timeline(reinterpret_cast<Stream>(stream), device, warmup + timed + 1);
    timeline.mark();
    for (int i = 0; i < warmup + timed; ++i) {
      copy(src, dst, stream);
      timeline.mark();
    }
    timeline.finish();
    for (int i = warmup; i < warmup + timed; ++i) ms.push_back(timeline.ms_between(i, i + 1));
  }
  std::sort(ms.begin(), ms.end());
  cudaStreamDestroy(stream);
  cudaFree(src);
  cudaFree(dst);
  return ms[ms.size() / 2];
}

double measure_copy_gbps(int device) {
  const size_t bytes = size_t{1} << 30;
  const double ms =
      median_copy_ms(device, bytes, bytes, 3, 10, [&](const void* src, void* dst, cudaStream_t s) {
        check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s), "cudaMemcpyAsync");
      });
  return 2.0 * bytes / (ms * 1e-3) / 1e9;
}

int gpus_used(int ranks) {
  int gpus = 0;
  check(cudaGetDeviceCount(&gpus), "cudaGetDeviceCount");
  return std::max(1, std::min(ranks, gpus));
}

int device_sms(int device) {
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  return prop.multiProcessorCount;
}

double measure_p2p_gbps() {
  int n = 0;
  check(cudaGetDeviceCount(&n), "cudaGetDeviceCount");
  if (n < 2) return 0.0;
  const size_t bytes = size_t{256} << 20;
  std::vector<void*> buf(n);
  std::vector<cudaStream_t> streams(n);
  std::vector<cudaEvent_t> begin(n), end(n);
  for (int g = 0; g < n; ++g) {
    check(cudaSetDevice(g), "cudaSetDevice");
    const int next = (g + 1) % n;
    const cudaError_t peer = cudaDeviceEnablePeerAccess(next, 0);
    if (peer != cudaErrorPeerAccessAlreadyEnabled) check(peer, "cudaDeviceEnablePeerAccess");
    cudaGetLastError();
    check(cudaMalloc(&buf[g], 2 * bytes), "cudaMalloc");
    check(cudaStreamCreateWithFlags(&streams[g], cudaStreamNonBlocking), "cudaStreamCreate");
    check(cudaEventCreate(&begin[g]), "cudaEventCreate");
    check(cudaEventCreate(&end[g]), "cudaEventCreate");
  }
  std::vector<double> per_gpu;
  for (int rep = 0; rep < 6; ++rep) {
    for (int g = 0; g < n; ++g) {  // g sends the first half of its buffer into next's second
      const int next = (g + 1) % n;
      check(cudaSetDevice(g), "cudaSetDevice");
      check(cudaEventRecord(begin[g], streams[g]), "cudaEventRecord");
      check(cudaMemcpyPeerAsync(static_cast<char*>(buf[next]) + bytes, next, buf[g], g, bytes,
                                streams[g]),
            "cudaMemcpyPeerAsync");
      check(cudaEventRecord(end[g], streams[g]), "cudaEventRecord");
    }
    double slowest = 0;
    for (int g = 0; g < n; ++g) {
      check(cudaEventSynchronize(end[g]), "cudaEventSynchronize");
      float ms = 0;
      check(cudaEventElapsedTime(&ms, begin[g], end[g]), "cudaEventElapsedTime");
      slowest = std::max(slowest, static_cast<double>(ms));
    }
    if (rep > 0) per_gpu.push_back(bytes / (slowest * 1e-3) / 1e9);
  }
  for (int g = 0; g < n; ++g) {
    cudaSetDevice(g);
    cudaFree(buf[g]);
    cudaStreamDestroy(streams[g]);
    cudaEventDestroy(begin[g]);
    cudaEventDestroy(end[g]);
  }
  std::sort(per_gpu.begin(), per_gpu.end());
  return per_gpu[per_gpu.size() / 2];
}

std::string device_description() {
  int count = 0;
  check(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  return std::string(prop.name) + " x" + std::to_string(count) + " (" +
         std::to_string(prop.multiProcessorCount) + " SMs)";
}

}  // namespace epcomm::bench
