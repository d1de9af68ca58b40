// The staging region of the high-throughput paths across domains (src/cuda/domain_layout.hpp):
// its sections are ordered, 128-byte aligned and inside the region; a record's fields lie in
// order inside it, the row 16-byte aligned and the scales right after it; records and partials
// are indexed (source domain, token) without overlap, the partials and their words in two
// buffers; partners share the local index.
#include "cuda/domain_layout.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace epcomm::cuda {
namespace {

struct Shape {
  int ranks, per_domain, max_tokens, max_topk, hidden, scales;
  size_t element_bytes;
};

class DomainLayoutTest : public ::testing::TestWithParam<Shape> {};

TEST_P(DomainLayoutTest, SectionsRecordsAndPartners) {
  const Shape s = GetParam();
  const RegionLayout region =
      RegionLayout::make(s.ranks, 4, s.ranks * s.max_tokens, s.element_bytes * s.hidden,
                         2 * static_cast<size_t>(s.hidden), s.max_topk, s.scales, 0, 0);
  const DomainLayout l = DomainLayout::make(region, s.per_domain, s.max_tokens);
  const size_t D = static_cast<size_t>(s.ranks / s.per_domain), T = s.max_tokens;
  ASSERT_EQ(l.num_domains(), static_cast<int>(D));
  EXPECT_EQ(l.count_row_words, region.count_row_words());
  EXPECT_EQ(l.forward_words_offset, 0u);
  EXPECT_GE(l.partial_words_offset, 8 * D);
  EXPECT_GE(l.count_outbox_offset, l.partial_words_offset + 2 * 8 * D);
  EXPECT_GE(l.out_records_offset,
            l.count_outbox_offset + 8u * s.ranks * static_cast<size_t>(l.count_row_words));
  EXPECT_GE(l.in_records_offset, l.out_records_offset + l.record_bytes * T);
  EXPECT_GE(l.out_partials_offset, l.in_records_offset + l.record_bytes * D * T);
  EXPECT_GE(l.in_partials_offset, l.out_partials_offset + l.partial_bytes * D * T);
  EXPECT_GE(l.total_bytes, l.in_partials_offset + 2 * l.partial_bytes * D * T);
  for (size_t offset :
       {l.partial_words_offset, l.count_outbox_offset, l.out_records_offset, l.in_records_offset,
        l.out_partials_offset, l.in_partials_offset, l.total_bytes}) {
    EXPECT_EQ(offset % 128, 0u) << offset;
  }
  // A record: header, slots [R], ids [K], weights [K], then the 16-aligned row and its scales.
  EXPECT_EQ(l.record_bytes % 16, 0u);
  EXPECT_EQ(l.record_row_offset % 16, 0u);
  EXPECT_EQ(l.record_bytes,
            DomainLayout::record_bytes_of(s.ranks, s.max_topk, s.scales, region.row_bytes));
  std::vector<char> staging(l.total_bytes);
  char* base = staging.data();
  char* record = l.in_record(base, static_cast<int>(D) - 1, s.max_tokens - 1);
  EXPECT_EQ(reinterpret_cast<char*>(l.slots(record)), record + sizeof(RecordHeader));
  EXPECT_EQ(reinterpret_cast<char*>(l.ids(record)), record + sizeof(RecordHeader) + 4 * s.ranks);
  EXPECT_EQ(reinterpret_cast<char*>(l.weights(record)),
            reinterpret_cast<char*>(l.ids(record)) + 4 * s.max_topk);
  EXPECT_LE(reinterpret_cast<char*>(l.weights(record)) + 4 * s.max_topk, l.row(record));
  EXPECT_EQ(reinterpret_cast<char*>(l.scales(record)), l.row(record) + region.row_bytes);
  EXPECT_LE(reinterpret_cast<char*>(l.scales(record)) + 4 * s.scales, record + l.record_bytes);
  // The last record and partial of each section end where the next section may begin.
  EXPECT_LE(record + l.record_bytes - base, static_cast<std::ptrdiff_t>(l.out_partials_offset));
  EXPECT_EQ(l.in_record(base, 1 % static_cast<int>(D), 0) - l.in_record(base, 0, 0),
            static_cast<std::ptrdiff_t>((1 % D) * T * l.record_bytes));
  EXPECT_LE(l.out_partial(base, static_cast<int>(D) - 1, s.max_tokens - 1) + l.partial_bytes - base,
            static_cast<std::ptrdiff_t>(l.in_partials_offset));
  for (int b = 0; b < 2; ++b) {  // two buffers back to back, each [D][T]
    EXPECT_EQ(l.in_partial(base, b, 0, 0) - base,
              static_cast<std::ptrdiff_t>(l.in_partials_offset + b * l.partial_bytes * D * T));
    EXPECT_EQ(
        l.in_partial(base, b, static_cast<int>(D) - 1, s.max_tokens - 1) + l.partial_bytes - base,
        static_cast<std::ptrdiff_t>(l.in_partials_offset + (b + 1) * l.partial_bytes * D * T));
    EXPECT_EQ(reinterpret_cast<char*>(l.partial_word(base, b, 0)) - base,
              static_cast<std::ptrdiff_t>(l.partial_words_offset + b * 8 * D));
  }
  EXPECT_LE(l.out_record(base, s.max_tokens - 1) + l.record_bytes - base,
            static_cast<std::ptrdiff_t>(l.in_records_offset));
  // Partners: the same local index, in the domain asked for.
  for (int r = 0; r < s.ranks; ++r) {
    for (int d = 0; d < static_cast<int>(D); ++d) {
      const int p = l.partner(r, d);
      EXPECT_EQ(l.domain_of(p), d);
      EXPECT_EQ(p % s.per_domain, r % s.per_domain);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, DomainLayoutTest,
                         ::testing::Values(Shape{8, 1, 96, 8, 7168, 0, 2},
                                           Shape{8, 4, 13, 4, 256, 2, 1},
                                           Shape{8, 2, 64, 8, 512, 0, 2},
                                           Shape{2, 1, 1, 1, 128, 1, 1},
                                           Shape{16, 8, 32, 6, 1024, 8, 1}),
                         [](const ::testing::TestParamInfo<Shape>& info) {
                           const Shape& s = info.param;
                           return "R" + std::to_string(s.ranks) + "_L" +
                                  std::to_string(s.per_domain) + "_T" +
                                  std::to_string(s.max_tokens) + "_K" + std::to_string(s.max_topk) +
                                  "_H" + std::to_string(s.hidden) + (s.scales ? "_fp8" : "_bf16");
                         });

}  // namespace
}  // namespace epcomm::cuda
