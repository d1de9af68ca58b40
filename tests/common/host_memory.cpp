// Host memory for the reference backend, and make_memory for builds without CUDA.
#include <cstdlib>
#include <cstring>

#include "epcomm/error.hpp"
#include "memory.hpp"

namespace epcomm::testing {

namespace {
class HostMemory final : public Memory {
 public:
  void* alloc(size_t bytes) override { return std::malloc(bytes); }
  void release(void* ptr) override { std::free(ptr); }
  void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void fill(void* dst, unsigned char byte, size_t bytes) override { std::memset(dst, byte, bytes); }
  void copy_on_stream(void* dst, const void* src, size_t bytes, Stream) override {
    std::memcpy(dst, src, bytes);
  }
};
}  // namespace

std::unique_ptr<Memory> make_host_memory() { return std::make_unique<HostMemory>(); }

#ifndef EPCOMM_TESTING_WITH_CUDA
std::unique_ptr<Memory> make_memory(Backend backend, int, Stream) {
  if (backend == Backend::kCuda) throw Error(ErrorCode::kUnsupported, "built without CUDA");
  return make_host_memory();
}
int cuda_device_count() { return 0; }
int cuda_sm_count(int) { return 0; }
bool cuda_stream_idle(Stream) { return true; }
#endif

}  // namespace epcomm::testing
