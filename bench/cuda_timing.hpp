// CUDA helpers the bench's CUDA files share (cuda_support.cpp): error checks, and the median
// time of a copy repeated on a stream of its own.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <functional>

namespace epcomm::bench {

// Throws kCuda naming `what` when `err` is an error.
void check(cudaError_t err, const char* what);

// On `device`: allocates `src_bytes` (filled) and `dst_bytes`, issues copy(src, dst, stream)
// warmup + timed times back to back on a new stream, and returns the median milliseconds of
// the timed ones (CUDA events between them).
double median_copy_ms(int device, size_t src_bytes, size_t dst_bytes, int warmup, int timed,
                      const std::function<void(const void*, void*, cudaStream_t)>& copy);

}  // namespace epcomm::bench
