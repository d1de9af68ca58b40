// The byte layout of a rank's low-latency region (DESIGN section 10), the one place that knows
// offsets into it. Every rank allocates the same layout; two buffers alternate by call parity.
//
// Per buffer: dispatch counts [Le][R] | combine signals [R] |
//             dispatch messages [Le][R][M] | combine rows [M][K][H] bf16 |
//             outbox [M][K] messages (only across domains: the messages this rank puts to
//             ranks outside its domain, staged where NVSHMEM may put from them).
// A message = row (room for H bf16; an fp8 row uses the first H bytes) | H / 128 fp32 scales |
// 16-byte header (int32 token, int32 top-k slot), padded to 128 bytes: every row starts on a
// 128-byte line, so a warp's 512-byte store or load touches 4 lines, not 5.
#pragma once

#include <cstddef>
#include <cstdint>

#include "region_layout.hpp"

namespace epcomm::cuda {

struct LowLatencyLayout {
  int num_ranks = 0;
  int experts_per_rank = 0;
  int max_tokens = 0;  // M
  int max_topk = 0;
  int hidden = 0;
  size_t message_bytes = 0;
  size_t counts_offset = 0, delivered_offset = 0, messages_offset = 0, combine_offset = 0;
  size_t outbox_offset = 0;
  size_t buffer_bytes = 0;

  // `outbox`: whether the buffers hold an outbox (ranks outside this rank's domain exist).
  static LowLatencyLayout make(int num_ranks, int experts_per_rank, int max_tokens, int max_topk,
                               int hidden, bool outbox = false) {
    LowLatencyLayout l;
    l.num_ranks = num_ranks;
    l.experts_per_rank = experts_per_rank;
    l.max_tokens = max_tokens;
    l.max_topk = max_topk;
    l.hidden = hidden;
    l.message_bytes = align_up(l.message_header_offset() + 16, 128);
    size_t off = 0;
    l.counts_offset = off;
    off = align_up(off + 8 * static_cast<size_t>(experts_per_rank) * num_ranks, 128);
    l.delivered_offset = off;
    off = align_up(off + 8 * static_cast<size_t>(num_ranks), 128);
    l.messages_offset = off;
    off = align_up(off + l.message_bytes * experts_per_rank * num_ranks * max_tokens, 128);
    l.combine_offset = off;
    off = align_up(off + 2 * static_cast<size_t>(hidden) * max_topk * max_tokens, 128);
    l.outbox_offset = off;
    if (outbox) off += l.message_bytes * max_tokens * max_topk;
    l.buffer_bytes = off;
    return l;
  }
  size_t total_bytes() const { return 2 * buffer_bytes; }
  EPCOMM_HD size_t rows_per_expert() const { return static_cast<size_t>(num_ranks) * max_tokens; }

  // The message count source `s` posted for local expert `le`: (tag << 32) | messages; zero
  // until posted, reset to zero by the receiver once read.
  EPCOMM_HD uint64_t* count(char* base, int buffer, int le, int s) const {
    return reinterpret_cast<uint64_t*>(base + buffer * buffer_bytes + counts_offset) +
           static_cast<size_t>(le) * num_ranks + s;
  }
  // The signal peer `s` posted once it returned all its combine rows to this rank:
  // (tag << 32) | rows; zero until posted, reset to zero by this rank once read.
  EPCOMM_HD uint64_t* delivered(char* base, int buffer, int s) const {
    return reinterpret_cast<uint64_t*>(base + buffer * buffer_bytes + delivered_offset) + s;
  }
  EPCOMM_HD char* message(char* base, int buffer, int le, int s, int slot) const {
    const size_t index = (static_cast<size_t>(le) * num_ranks + s) * max_tokens + slot;
    return base + buffer * buffer_bytes + messages_offset + index * message_bytes;
  }
  // The row starts the message.
  EPCOMM_HD size_t message_scales_offset() const {
    return align_up(2 * static_cast<size_t>(hidden), 16);
  }
  EPCOMM_HD size_t message_header_offset() const {
    return message_scales_offset() + align_up(4 * static_cast<size_t>(hidden / 128), 16);
  }
  // Outbox message i = token * K + top-k slot (K = the dispatch's num_topk <= max_topk).
  EPCOMM_HD char* outbox(char* base, int buffer, size_t i) const {
    return base + buffer * buffer_bytes + outbox_offset + i * message_bytes;
  }
  EPCOMM_HD char* combine_row(char* base, int buffer, int token, int k) const {
    const size_t index = static_cast<size_t>(token) * max_topk + k;
    return base + buffer * buffer_bytes + combine_offset + index * 2 * static_cast<size_t>(hidden);
  }
};

}  // namespace epcomm::cuda
