// The low-latency region's layout (src/cuda/low_latency_layout.hpp): every section of a buffer
// lies inside it, after the previous one and 128-byte aligned; the outbox (domains smaller
// than the job only) holds M x K messages after the combine rows and changes nothing before it.
#include "cuda/low_latency_layout.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace epcomm::cuda {
namespace {

struct Shape {
  int ranks, experts_per_rank, max_tokens, max_topk, hidden;
};

class LowLatencyLayoutTest : public ::testing::TestWithParam<Shape> {};

TEST_P(LowLatencyLayoutTest, SectionsAreOrderedAlignedAndInside) {
  const Shape s = GetParam();
  const LowLatencyLayout one =
      LowLatencyLayout::make(s.ranks, s.experts_per_rank, s.max_tokens, s.max_topk, s.hidden);
  const LowLatencyLayout across =
      LowLatencyLayout::make(s.ranks, s.experts_per_rank, s.max_tokens, s.max_topk, s.hidden, true);
  // The message: a bf16 row, H / 128 fp32 scales and a 16-byte header, padded to 128 bytes.
  const size_t message = one.message_bytes;
  EXPECT_EQ(message % 128, 0u);
  EXPECT_GE(message, one.message_header_offset() + 16);
  EXPECT_GE(one.message_header_offset(), one.message_scales_offset() + 4 * (s.hidden / 128));
  for (const LowLatencyLayout* l : {&one, &across}) {
    EXPECT_EQ(l->counts_offset, 0u);
    EXPECT_GE(l->delivered_offset, 8u * s.experts_per_rank * s.ranks);
    EXPECT_GE(l->messages_offset, l->delivered_offset + 8u * s.ranks);
    EXPECT_GE(l->combine_offset,
              l->messages_offset + message * s.experts_per_rank * s.ranks * s.max_tokens);
    EXPECT_GE(l->outbox_offset, l->combine_offset + 2u * s.hidden * s.max_topk * s.max_tokens);
    for (size_t offset : {l->delivered_offset, l->messages_offset, l->combine_offset,
                          l->outbox_offset, l->buffer_bytes}) {
      EXPECT_EQ(offset % 128, 0u) << offset;
    }
    EXPECT_EQ(l->total_bytes(), 2 * l->buffer_bytes);
  }
  // One domain: no outbox. Across domains: the same sections, then M x K messages.
  EXPECT_EQ(one.outbox_offset, one.buffer_bytes);
  EXPECT_EQ(across.outbox_offset, one.outbox_offset);
  EXPECT_EQ(across.buffer_bytes,
            across.outbox_offset + message * static_cast<size_t>(s.max_tokens) * s.max_topk);
  // Outbox message i of buffer b: inside buffer b's outbox, M x K of them back to back; checked
  // on a real region where it is small enough to allocate.
  if (across.total_bytes() > (size_t{64} << 20)) return;
  std::vector<char> region(across.total_bytes());
  char* base = region.data();
  for (int b = 0; b < 2; ++b) {
    const size_t last = static_cast<size_t>(s.max_tokens) * s.max_topk - 1;
    EXPECT_EQ(across.outbox(base, b, 0) - base,
              static_cast<std::ptrdiff_t>(b * across.buffer_bytes + across.outbox_offset));
    EXPECT_EQ(across.outbox(base, b, last) + message - base,
              static_cast<std::ptrdiff_t>((b + 1) * across.buffer_bytes));
    // The last combine row ends at or before the outbox.
    EXPECT_LE(across.combine_row(base, b, s.max_tokens - 1, s.max_topk - 1) + 2 * s.hidden,
              across.outbox(base, b, 0));
    // The last message slot ends at or before the combine rows.
    EXPECT_LE(
        across.message(base, b, s.experts_per_rank - 1, s.ranks - 1, s.max_tokens - 1) + message,
        across.combine_row(base, b, 0, 0));
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, LowLatencyLayoutTest,
                         ::testing::Values(Shape{2, 4, 16, 2, 128}, Shape{8, 32, 128, 8, 7168},
                                           Shape{3, 1, 1, 1, 256}, Shape{8, 4, 32, 8, 512}),
                         [](const ::testing::TestParamInfo<Shape>& info) {
                           const Shape& s = info.param;
                           return "R" + std::to_string(s.ranks) + "_Le" +
                                  std::to_string(s.experts_per_rank) + "_M" +
                                  std::to_string(s.max_tokens) + "_K" + std::to_string(s.max_topk) +
                                  "_H" + std::to_string(s.hidden);
                         });

}  // namespace
}  // namespace epcomm::cuda
