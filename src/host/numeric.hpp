// bf16 <-> fp32 on the host, bit-exact with the device's round-to-nearest-even conversion.
#pragma once

#include <cstdint>
#include <cstring>

namespace epcomm::host {

inline float bf16_to_float(uint16_t bits) {
  const uint32_t word = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &word, sizeof(f));
  return f;
}

// Round to nearest, ties to even; NaN becomes the canonical 0x7fff, as cvt.rn.bf16.f32 does.
inline uint16_t float_to_bf16(float f) {
  uint32_t word;
  std::memcpy(&word, &f, sizeof(word));
  if ((word & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
  const uint32_t lsb = (word >> 16) & 1u;
  return static_cast<uint16_t>((word + 0x7fffu + lsb) >> 16);
}

inline int64_t read_index(const void* base, bool is_int64, size_t i) {
  return is_int64 ? static_cast<const int64_t*>(base)[i] : static_cast<const int32_t*>(base)[i];
}

inline void write_index(void* base, bool is_int64, size_t i, int64_t value) {
  if (is_int64) {
    static_cast<int64_t*>(base)[i] = value;
  } else {
    static_cast<int32_t*>(base)[i] = static_cast<int32_t>(value);
  }
}

}  // namespace epcomm::host
