// Small value types shared by the public API.
#pragma once

#include <cstddef>
#include <cstdint>

struct CUstream_st;  // cudaStream_t without the CUDA headers

namespace epcomm {

// A CUDA stream (cudaStream_t). nullptr means the communicator's own stream.
using Stream = CUstream_st*;

// Element type of dispatched hidden rows. Combine always takes and returns bf16.
enum class DType { kBF16, kFP8E4M3 };
// Element type of topk_idx (input) and recv_topk_idx (output).
enum class IndexType { kInt32, kInt64 };
// How rows travel: flat = one hop straight into the final slot; ring = two-stage baseline.
enum class Algorithm { kFlat, kRing };
// Where the work runs: host = reference oracle (ranks are threads, host memory); cuda = GPUs.
enum class Backend { kHost, kCuda };
// How the CUDA backend's regions are shared: ipc = CUDA IPC (or plain device pointers between
// in-process ranks); nvshmem = NVSHMEM's symmetric heap (one rank per process).
enum class Transport { kIpc, kNvshmem };

// fp8 rows carry one fp32 scale per this many elements.
constexpr int kFp8ScaleBlock = 128;

size_t element_bytes(DType dtype);
size_t index_bytes(IndexType type);
const char* to_string(DType dtype);
const char* to_string(IndexType type);
const char* to_string(Algorithm algorithm);
const char* to_string(Backend backend);
const char* to_string(Transport transport);

// Where a received row came from.
struct RecvSource {
  int32_t rank;
  int32_t token;
};

}  // namespace epcomm
