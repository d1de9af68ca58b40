// CUDA events around each operation on the communicator's stream; copy bandwidth probe.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <vector>

#include "device_support.hpp"
#include "epcomm/error.hpp"

namespace epcomm::bench {
namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw Error(ErrorCode::kCuda, std::string(what) + ": " + cudaGetErrorString(err));
  }
}

class CudaTimer final : public OpTimer {
 public:
  CudaTimer(Stream stream, int device) : stream_(reinterpret_cast<cudaStream_t>(stream)) {
    check(cudaSetDevice(device), "cudaSetDevice");
    check(cudaEventCreate(&begin_), "cudaEventCreate");
    check(cudaEventCreate(&end_), "cudaEventCreate");
  }
  ~CudaTimer() override {
    cudaEventDestroy(begin_);
    cudaEventDestroy(end_);
  }
  void start() override { check(cudaEventRecord(begin_, stream_), "cudaEventRecord"); }
  double stop_ms() override {
    check(cudaEventRecord(end_, stream_), "cudaEventRecord");
    check(cudaEventSynchronize(end_), "cudaEventSynchronize");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, begin_, end_), "cudaEventElapsedTime");
    return ms;
  }

 private:
  cudaStream_t stream_;
  cudaEvent_t begin_, end_;
};

}  // namespace

std::unique_ptr<OpTimer> make_cuda_timer(Stream stream, int device) {
  return std::make_unique<CudaTimer>(stream, device);
}

double measure_copy_gbps(int device) {
  check(cudaSetDevice(device), "cudaSetDevice");
  const size_t bytes = size_t{1} << 30;
  void *src = nullptr, *dst = nullptr;
  check(cudaMalloc(&src, bytes), "cudaMalloc");
  check(cudaMalloc(&dst, bytes), "cudaMalloc");
  check(cudaMemset(src, 0x3c, bytes), "cudaMemset");
  cudaStream_t stream;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  CudaTimer timer(reinterpret_cast<Stream>(stream), device);
  std::vector<double> ms;
  for (int i = 0; i < 13; ++i) {
    timer.start();
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream), "cudaMemcpyAsync");
    const double t = timer.stop_ms();
    if (i >= 3) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  cudaStreamDestroy(stream);
  cudaFree(src);
  cudaFree(dst);
  return 2.0 * bytes / (ms[ms.size() / 2] * 1e-3) / 1e9;
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
