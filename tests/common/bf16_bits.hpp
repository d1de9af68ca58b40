// bf16 <-> fp32 for test expectations, written apart from the library's own conversion so that
// the tests check it rather than share it. Inputs are finite.
#pragma once

#include <cstdint>
#include <cstring>

namespace epcomm::testing {

inline float float_of(uint16_t b) {
  const uint32_t w = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &w, 4);
  return f;
}

// fp32 -> bf16, round to nearest even.
inline uint16_t bf16_of(float f) {
  uint32_t w;
  std::memcpy(&w, &f, 4);
  return static_cast<uint16_t>((w + 0x7fffu + ((w >> 16) & 1u)) >> 16);
}

}  // namespace epcomm::testing
