// The byte layout of a rank's symmetric region, the one place that knows offsets into it.
// Every rank allocates the same layout; peers reach each other's regions through mapped
// base pointers. See docs/design.md, "Region layout".
#pragma once

#include <cstddef>
#include <cstdint>

#ifdef __CUDACC__
#define EPCOMM_HD __host__ __device__ __forceinline__
#else
#define EPCOMM_HD inline
#endif

namespace epcomm::cuda {

EPCOMM_HD size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

// The 32-bit tag of a 64-bit sequence number (dispatch epoch, low-latency round) in a signal
// word (tag << 32) | value. Never 0, so a zeroed word never passes for a posted one, and
// numbers up to 2^32 - 2 apart get different tags, so a word of an earlier round (at most 2
// behind) never passes for the current one, across the wrap of 2^32 too.
EPCOMM_HD uint32_t sequence_tag(uint64_t sequence) {
  return static_cast<uint32_t>(sequence % 0xffffffffull) + 1u;
}

// A received meta row: where the row came from, its top-k slots as seen by the receiver, and
// the fp8 scales of the row. Stride rounded to 16 bytes.
struct MetaLayout {
  int max_topk = 0;
  int num_scales = 0;
  EPCOMM_HD size_t ids_offset() const { return 8; }  // after int32 source rank, source token
  EPCOMM_HD size_t weights_offset() const { return 8 + 4 * static_cast<size_t>(max_topk); }
  EPCOMM_HD size_t scales_offset() const { return 8 + 8 * static_cast<size_t>(max_topk); }
  EPCOMM_HD size_t stride() const { return align_up(scales_offset() + 4 * num_scales, 16); }
};

// Ring path (DESIGN section 7): one ring of `slots` entries per (channel, peer) in the
// receiving rank's region. An entry = 16-byte header (final row) | row | meta row. The tail of
// ring (c, s -> this rank) lives here; the head of ring (c, this rank -> d) lives here too,
// written by d as it consumes.
struct RingLayout {
  int channels = 0;  // 0: flat path, no rings
  int slots = 0;
  size_t entry_bytes = 0;
};

// signals | count matrix (2 epoch slots) | pair counts (2 epoch slots) | received hidden rows |
// received meta rows | rings
struct RegionLayout {
  int num_ranks = 0;
  int experts_per_rank = 0;
  int capacity = 0;              // received rows
  size_t row_bytes = 0;          // a dispatched row (H x dispatch element size)
  size_t combine_row_bytes = 0;  // a combine row (H x 2, bf16)
  MetaLayout meta;
  RingLayout ring;

  size_t arrived_offset = 0, ready_offset = 0, counts_offset = 0, pair_counts_offset = 0;
  size_t rows_offset = 0;
  size_t meta_offset = 0, ring_offset = 0, total_bytes = 0;

  // ring_channels = 0 for the flat path.
  static RegionLayout make(int num_ranks, int experts_per_rank, int capacity, size_t row_bytes,
                           size_t combine_row_bytes, int max_topk, int num_scales,
                           int ring_channels, int ring_slots) {
    RegionLayout l;
    l.num_ranks = num_ranks;
    l.experts_per_rank = experts_per_rank;
    l.capacity = capacity;
    l.row_bytes = row_bytes;
    l.combine_row_bytes = combine_row_bytes;
    l.meta.max_topk = max_topk;
    l.meta.num_scales = num_scales;
    l.ring.channels = ring_channels;
    l.ring.slots = ring_channels > 0 ? ring_slots : 0;
    const size_t widest = row_bytes > combine_row_bytes ? row_bytes : combine_row_bytes;
    l.ring.entry_bytes = 16 + align_up(widest, 16) + l.meta.stride();
    const size_t ring_bytes =
        ring_channels > 0
            ? 2 * 8 * static_cast<size_t>(ring_channels) * num_ranks +
                  l.ring.entry_bytes * l.ring.slots * static_cast<size_t>(ring_channels) * num_ranks
            : 0;
    size_t off = 0;
    l.arrived_offset = off;
    off = align_up(off + 8 * static_cast<size_t>(num_ranks), 128);
    l.ready_offset = off;
    off = align_up(off + 8 * static_cast<size_t>(num_ranks), 128);
    l.counts_offset = off;
    off = align_up(off + 2 * 8 * static_cast<size_t>(num_ranks) * l.count_row_words(), 128);
    l.pair_counts_offset = off;
    off = align_up(off + 2 * 8 * static_cast<size_t>(num_ranks) * l.num_experts(), 128);
    const size_t pool_row = row_bytes > combine_row_bytes ? row_bytes : combine_row_bytes;
    l.rows_offset = off;
    off = align_up(off + pool_row * capacity, 128);
    l.meta_offset = off;
    off = align_up(off + l.meta.stride() * capacity, 128);
    l.ring_offset = off;
    off = align_up(off + ring_bytes, 128);
    l.total_bytes = off;
    return l;
  }

  EPCOMM_HD int num_experts() const { return num_ranks * experts_per_rank; }

  // A count row from one source: R token counts (one per destination), one status word, the
  // source's per-expert counts for the receiving rank's experts, and (ring path) the rows each
  // of the source's channels sends to the receiving rank.
  EPCOMM_HD int count_row_words() const { return num_ranks + 1 + experts_per_rank + ring.channels; }
  EPCOMM_HD int status_word() const { return num_ranks; }
  EPCOMM_HD int expert_word(int local_expert) const { return num_ranks + 1 + local_expert; }
  EPCOMM_HD int channel_word(int channel) const {
    return num_ranks + 1 + experts_per_rank + channel;
  }

  // Rows delivered so far by each source (cumulative, only grows).
  EPCOMM_HD uint64_t* arrived(char* base) const {
    return reinterpret_cast<uint64_t*>(base + arrived_offset);
  }
  // Combines each source has made its y ready for (cumulative, only grows).
  EPCOMM_HD uint64_t* ready(char* base) const {
    return reinterpret_cast<uint64_t*>(base + ready_offset);
  }
  // The count row `source` posted for epoch slot `slot` (epoch & 1); each word is
  // (sequence_tag(epoch) << 32) | value.
  EPCOMM_HD uint64_t* count_row(char* base, int slot, int source) const {
    return reinterpret_cast<uint64_t*>(base + counts_offset) +
           (static_cast<size_t>(slot) * num_ranks + source) * count_row_words();
  }
  // Expert-major dispatch: the pair counts `source` posted for epoch slot `slot`, one word per
  // expert (all E, so that every rank sees every source's counts for every destination), each
  // (sequence_tag(epoch) << 32) | pairs.
  EPCOMM_HD uint64_t* pair_count_row(char* base, int slot, int source) const {
    return reinterpret_cast<uint64_t*>(base + pair_counts_offset) +
           (static_cast<size_t>(slot) * num_ranks + source) * num_experts();
  }
  EPCOMM_HD char* row(char* base, int i) const {
    return base + rows_offset + row_bytes * static_cast<size_t>(i);
  }
  EPCOMM_HD char* combine_row(char* base, int i) const {
    return base + rows_offset + combine_row_bytes * static_cast<size_t>(i);
  }
  EPCOMM_HD char* meta_row(char* base, int i) const {
    return base + meta_offset + meta.stride() * static_cast<size_t>(i);
  }
  // Rows written into ring (channel, peer -> this rank) so far (cumulative).
  EPCOMM_HD uint64_t* ring_tail(char* base, int channel, int peer) const {
    return reinterpret_cast<uint64_t*>(base + ring_offset) +
           static_cast<size_t>(channel) * num_ranks + peer;
  }
  // Rows of ring (channel, this rank -> peer) the peer has consumed so far (cumulative).
  EPCOMM_HD uint64_t* ring_head(char* base, int channel, int peer) const {
    return ring_tail(base, channel, peer) + static_cast<size_t>(ring.channels) * num_ranks;
  }
  // Entry `index` (a cumulative count; taken modulo the ring size) of ring (channel, peer ->
  // this rank).
  EPCOMM_HD char* ring_entry(char* base, int channel, int peer, uint64_t index) const {
    const size_t ring_idx = static_cast<size_t>(channel) * num_ranks + peer;
    return base + ring_offset + 2 * 8 * static_cast<size_t>(ring.channels) * num_ranks +
           (ring_idx * ring.slots + index % static_cast<uint64_t>(ring.slots)) * ring.entry_bytes;
  }
  EPCOMM_HD char* entry_row(char* entry) const { return entry + 16; }
  EPCOMM_HD char* entry_meta(char* entry) const {
    const size_t widest = row_bytes > combine_row_bytes ? row_bytes : combine_row_bytes;
    return entry + 16 + align_up(widest, 16);
  }
};

}  // namespace epcomm::cuda
