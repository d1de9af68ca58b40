// Shared argument checks: messages name the caller, the argument and the value.
#include "argument_checks.hpp"

#include <cstdint>
#include "message_stream.hpp"

namespace epcomm::detail {

void invalid_argument(const char* caller, const std::string& what) {
  throw Error(ErrorCode::kInvalidArgument, std::string(caller) + ": " + what);
}

std::string value_of(const char* name, long long value) {
  epcomm::detail::MessageStream os;
  os << name << " = " << value;
  return os.str();
}

void check_tokens_and_topk(const char* caller, const Config& config, int num_tokens, int num_topk) {
  if (num_tokens < 0 || num_tokens > config.max_tokens_per_rank) {
    invalid_argument(caller, value_of("num_tokens", num_tokens) +
                                 " is outside [0, max_tokens_per_rank = " +
                                 std::to_string(config.max_tokens_per_rank) + "]");
  }
  if (num_topk < 1 || num_topk > config.max_topk) {
    invalid_argument(caller, value_of("num_topk", num_topk) + " is outside [1, max_topk = " +
                                 std::to_string(config.max_topk) + "]");
  }
}

void check_scales(const char* caller, const Config& config, const float* x_scales,
                  int scales_per_token, int num_tokens) {
  if (config.dtype == DType::kBF16) {
    if (x_scales != nullptr) invalid_argument(caller, "x_scales is given but Config.dtype is bf16");
    return;
  }
  if (x_scales == nullptr && num_tokens > 0) {
    invalid_argument(caller, "x_scales is null but dtype is fp8");
  }
  if (scales_per_token >= 0 && scales_per_token != config.num_scales()) {
    invalid_argument(caller, value_of("scales_per_token", scales_per_token) +
                                 " but fp8 rows of hidden " + std::to_string(config.hidden) +
                                 " need " + std::to_string(config.num_scales()));
  }
}

void PointerChecker::check_alignment(const char* name, const void* ptr, size_t alignment) const {
  if (ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % alignment == 0) return;
  epcomm::detail::MessageStream os;
  os << name << " = " << ptr << " is not " << alignment << "-byte aligned";
  invalid_argument(caller_, os.str());
}

void PointerChecker::check(const char* name, const void* ptr, size_t alignment,
                           size_t bytes) const {
  check_alignment(name, ptr, alignment);
  if (ptr == nullptr || bytes == 0) return;
  const auto begin = reinterpret_cast<uintptr_t>(ptr);
  for (const MemoryRange& range : shared_) {
    const auto shared_begin = reinterpret_cast<uintptr_t>(range.begin);
    if (begin < shared_begin + range.bytes && shared_begin < begin + bytes) {
      epcomm::detail::MessageStream os;
      os << name << " = " << ptr << " (" << bytes
         << " bytes) overlaps the communicator's memory at " << range.begin << " (" << range.bytes
         << " bytes), which peers write and read during collective calls";
      invalid_argument(caller_, os.str());
    }
  }
}

}  // namespace epcomm::detail
