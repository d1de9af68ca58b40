// The fp32 order of a combined token on the host (DESIGN sections 2 and 11, docs/design.md
// section 24): one partial per NVLink domain, added in ascending domain order (rounded to bf16
// first when there are several domains: what a domain sends back), then bias and bias2, then
// one rounding. Token-major and expert-major combines differ only in what a partial sums.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "epcomm/dispatch.hpp"
#include "numeric.hpp"

namespace epcomm::host {

inline void add_domain_partial(std::vector<float>& acc, const std::vector<float>& partial,
                               bool one_domain) {
  for (size_t h = 0; h < acc.size(); ++h) {
    acc[h] += one_domain ? partial[h] : bf16_to_float(float_to_bf16(partial[h]));
  }
}

// out[t] = bf16(acc + bias[t] + bias2[t]) over the acc.size() elements of token t.
inline void finish_token(std::vector<float>& acc, const CombineOptions& options, int t,
                         uint16_t* out) {
  const size_t H = acc.size();
  for (const void* bias : {options.bias, options.bias2}) {  // after the rows, in this order
    if (bias == nullptr) continue;
    const auto* bias_row = static_cast<const uint16_t*>(bias) + t * H;
    for (size_t h = 0; h < H; ++h) acc[h] += bf16_to_float(bias_row[h]);
  }
  for (size_t h = 0; h < H; ++h) out[t * H + h] = float_to_bf16(acc[h]);
}

}  // namespace epcomm::host
