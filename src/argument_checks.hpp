// Argument checks every backend shares: ranges, shapes, and each pointer's alignment and
// overlap with the memory peers write or read (DESIGN section 13). Each throws
// Error(kInvalidArgument) naming the caller, the argument and its value.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "epcomm/config.hpp"
#include "epcomm/error.hpp"

namespace epcomm::detail {

// Bytes of this rank's memory that peers write or read during collective calls (the receive
// pool and signals of the CUDA region, the low-latency region, the host reference's pool).
struct MemoryRange {
  const void* begin = nullptr;
  size_t bytes = 0;
};

[[noreturn]] void invalid_argument(const char* caller, const std::string& what);
std::string value_of(const char* name, long long value);

void check_tokens_and_topk(const char* caller, const Config& config, int num_tokens, int num_topk);
void check_scales(const char* caller, const Config& config, const float* x_scales,
                  int scales_per_token, int num_tokens);

// Checks a caller's pointer to `bytes` bytes: a multiple of `alignment` (16 for rows, 8 for
// int64, 4 for int32 and fp32) and outside every range in `shared`. Null passes (callers check
// whether null is allowed); so does an empty extent's overlap.
class PointerChecker {
 public:
  PointerChecker(const char* caller, std::vector<MemoryRange> shared)
      : caller_(caller), shared_(std::move(shared)) {}
  void check(const char* name, const void* ptr, size_t alignment, size_t bytes) const;
  // Alignment only: for y == combine_input(), which lies in the pool by design.
  void check_alignment(const char* name, const void* ptr, size_t alignment) const;

 private:
  const char* caller_;
  std::vector<MemoryRange> shared_;
};

}  // namespace epcomm::detail
