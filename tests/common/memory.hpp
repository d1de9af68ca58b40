// Memory the tests and the bench use for a backend: host memory, or a CUDA device's memory.
#pragma once

#include <cstddef>
#include <memory>

#include "epcomm/types.hpp"

namespace epcomm::testing {

class Memory {
 public:
  virtual ~Memory() = default;
  virtual void* alloc(size_t bytes) = 0;
  virtual void release(void* ptr) = 0;
  // Synchronous copies and fills; callers synchronize the communicator first.
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;
  virtual void download(void* dst, const void* src, size_t bytes) = 0;
  virtual void fill(void* dst, unsigned char byte, size_t bytes) = 0;
  // A copy between two buffers of this memory issued on `stream` (CUDA: in stream order, the
  // host does not wait; host memory: done at once). For tests that issue calls back to back.
  virtual void copy_on_stream(void* dst, const void* src, size_t bytes, Stream stream) = 0;
};

// stream: a CUDA stream of the caller's to run every operation on (not owned; nullptr: a
// private one). The bench passes its own, so that 8 in-process ranks keep to 3 streams each
// (docs/design.md section 12).
std::unique_ptr<Memory> make_memory(Backend backend, int device = 0, Stream stream = nullptr);
int cuda_device_count();  // 0 when the build has no CUDA or no GPU is present
// The GPU of in-process rank `rank`: ranks spread over every visible GPU (rank % count), so
// the in-process suites exercise peers on other GPUs unchanged where there are several.
inline int gpu_of_rank(int rank) {
  const int n = cuda_device_count();
  return n > 0 ? rank % n : 0;
}
int cuda_sm_count(int device);  // 0 when the build has no CUDA or the device is absent
// Whether `stream` has finished its work (cudaStreamQuery: never waits; it also hands queued
// launches to the GPU, which the driver may otherwise hold back until a call that waits).
bool cuda_stream_idle(Stream stream);

// An allocation that frees itself.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Memory& memory, size_t bytes)
      : memory_(&memory), ptr_(bytes ? memory.alloc(bytes) : nullptr), bytes_(bytes) {}
  ~Buffer() { reset(); }
  Buffer(Buffer&& other) noexcept { *this = std::move(other); }
  Buffer& operator=(Buffer&& other) noexcept {
    reset();
    memory_ = other.memory_;
    ptr_ = other.ptr_;
    bytes_ = other.bytes_;
    other.ptr_ = nullptr;
    other.bytes_ = 0;
    return *this;
  }
  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void reset() {
    if (ptr_) memory_->release(ptr_);
    ptr_ = nullptr;
  }
  Memory* memory_ = nullptr;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace epcomm::testing
