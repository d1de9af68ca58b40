// Device memory through the CUDA runtime, for tests and the bench on GPU builds.
#include <cuda_runtime.h>

#include <string>

#include "epcomm/error.hpp"
#include "memory.hpp"

namespace epcomm::testing {

std::unique_ptr<Memory> make_host_memory();

namespace {
void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw Error(ErrorCode::kCuda, std::string(what) + ": " + cudaGetErrorString(err));
  }
}

// Every operation runs on a private non-blocking stream and waits for that stream only:
// a device-wide synchronisation (cudaFree, cudaDeviceSynchronize, legacy-stream copies) would
// wait for peer ranks' kernels, which may be waiting for this rank.
class CudaMemory final : public Memory {
 public:
  CudaMemory(int device, cudaStream_t borrowed) : device_(device), stream_(borrowed) {
    check(cudaSetDevice(device_), "cudaSetDevice");
    if (stream_ == nullptr) {
      check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
      owned_ = true;
    }
  }
  ~CudaMemory() override {
    cudaSetDevice(device_);
    if (owned_) cudaStreamDestroy(stream_);
  }
  void* alloc(size_t bytes) override {
    check(cudaSetDevice(device_), "cudaSetDevice");
    void* p = nullptr;
    check(cudaMallocAsync(&p, bytes, stream_), "cudaMallocAsync");
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize after cudaMallocAsync");
    return p;
  }
  void release(void* ptr) override {
    cudaSetDevice(device_);
    cudaFreeAsync(ptr, stream_);
    cudaStreamSynchronize(stream_);
  }
  void upload(void* dst, const void* src, size_t bytes) override {
    copy(dst, src, bytes, cudaMemcpyHostToDevice);
  }
  void download(void* dst, const void* src, size_t bytes) override {
    copy(dst, src, bytes, cudaMemcpyDeviceToHost);
  }
  void fill(void* dst, unsigned char byte, size_t bytes) override {
    check(cudaSetDevice(device_), "cudaSetDevice");
    check(cudaMemsetAsync(dst, byte, bytes, stream_), "cudaMemsetAsync");
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize after cudaMemsetAsync");
  }
  void copy_on_stream(void* dst, const void* src, size_t bytes, Stream stream) override {
    check(cudaSetDevice(device_), "cudaSetDevice");
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice,
                          reinterpret_cast<cudaStream_t>(stream)),
          "cudaMemcpyAsync on the caller's stream");
  }

 private:
  void copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    check(cudaSetDevice(device_), "cudaSetDevice");
    check(cudaMemcpyAsync(dst, src, bytes, kind, stream_), "cudaMemcpyAsync");
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize after cudaMemcpyAsync");
  }

  int device_;
  cudaStream_t stream_ = nullptr;
  bool owned_ = false;
};
}  // namespace

std::unique_ptr<Memory> make_memory(Backend backend, int device, Stream stream) {
  if (backend == Backend::kHost) return make_host_memory();
  return std::make_unique<CudaMemory>(device, reinterpret_cast<cudaStream_t>(stream));
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

bool cuda_stream_idle(Stream stream) {
  const cudaError_t err = cudaStreamQuery(reinterpret_cast<cudaStream_t>(stream));
  if (err != cudaErrorNotReady) cudaGetLastError();  // a real error surfaces at the next call
  return err != cudaErrorNotReady;
}

int cuda_sm_count(int device) {
  int n = 0;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

}  // namespace epcomm::testing
