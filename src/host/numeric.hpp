// bf16 <-> fp32 on the host, bit-exact with the device's round-to-nearest-even conversion.
#pragma once

#include <cmath>
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

// fp32 -> fp8 e4m3 (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no infinities,
// 0x7f is NaN): round to nearest, ties to even, then saturate to +-448, as the device's
// cvt.rn.satfinite.e4m3x2.f32 does.
inline uint8_t float_to_e4m3(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
  const float a = std::fabs(f);
  constexpr float kMinNormal = 0.015625f;  // 2^-6
  uint32_t code;
  if (a < kMinNormal) {
    // Subnormals are multiples of 2^-9; a * 2^9 is exact, so one rounding happens here.
    code = static_cast<uint32_t>(std::nearbyint(a * 512.0f));  // 8 means 2^-6, code 0x08: fine
  } else {
    int exponent;
    std::frexp(a, &exponent);    // a = m * 2^exponent with m in [0.5, 1)
    const int e = exponent - 1;  // a in [2^e, 2^(e+1))
    if (e > 8) return sign | 0x7e;
    // a / 2^(e-3) in [8, 16): exact scaling by a power of two, then one rounding.
    const uint32_t q = static_cast<uint32_t>(std::nearbyint(std::ldexp(a, 3 - e)));
    code = (static_cast<uint32_t>(e + 7) << 3) + (q - 8);  // q == 16 carries into the exponent
  }
  if (code > 0x7e) code = 0x7e;  // saturate: 448 is the largest finite value
  return sign | static_cast<uint8_t>(code);
}

// The low-latency fp8 cast of one block of 128 bf16 elements: a = max(amax, 1e-4),
// q = e4m3(x * (448 / a)), scale = a / 448, in IEEE fp32.
inline float cast_block_to_e4m3(const uint16_t* x, uint8_t* q, int n) {
  float amax = 0.f;
  for (int i = 0; i < n; ++i) amax = std::fmax(amax, std::fabs(bf16_to_float(x[i])));
  const float a = std::fmax(amax, 1e-4f);
  const float inv = 448.0f / a;
  for (int i = 0; i < n; ++i) q[i] = float_to_e4m3(bf16_to_float(x[i]) * inv);
  return a / 448.0f;
}

// ceil(log2(v)) for a positive normal fp32 v, from its bits: the exponent, plus one when any
// mantissa bit is set.
inline int log2_ceil(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return static_cast<int>((bits >> 23) & 0xffu) - 127 + ((bits & 0x7fffffu) != 0 ? 1 : 0);
}

// 2^e for e in [-126, 127], exactly.
inline float pow2(int e) {
  const uint32_t bits = static_cast<uint32_t>(e + 127) << 23;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// The same cast with a power-of-two scale (DeepEP's round_scale): a = max(amax, 1e-4),
// e = ceil(log2(a * (1 / 448))) with the fp32 product, q = e4m3(x * 2^-e), scale = 2^e.
inline float cast_block_to_e4m3_pow2(const uint16_t* x, uint8_t* q, int n) {
  float amax = 0.f;
  for (int i = 0; i < n; ++i) amax = std::fmax(amax, std::fabs(bf16_to_float(x[i])));
  const float a = std::fmax(amax, 1e-4f);
  const int e = log2_ceil(a * (1.0f / 448.0f));
  const float inv = pow2(-e);
  for (int i = 0; i < n; ++i) q[i] = float_to_e4m3(bf16_to_float(x[i]) * inv);
  return pow2(e);
}

// The UE8M0 code of a power-of-two scale: its biased fp32 exponent.
inline uint8_t ue8m0_code(float scale) {
  uint32_t bits;
  std::memcpy(&bits, &scale, sizeof(bits));
  return static_cast<uint8_t>(bits >> 23);
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
