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

// signals | count matrix (2 epoch slots) | received hidden rows | received meta rows | rings
struct RegionLayout {
  int num_ranks = 0;
  int experts_per_rank = 0;
  int capacity = 0;         // received rows
  size_t row_bytes = 0;     // a dispatched row (H x dispatch element size)
  size_t combine_row_bytes = 0;  // a combine row (H x 2, bf16)
  MetaLayout meta;
  size_t ring_bytes = 0;    // ring path buffers; 0 for the flat path

  size_t arrived_offset = 0, ready_offset = 0, counts_offset = 0, rows_offset = 0;
  size_t meta_offset = 0, ring_offset = 0, total_bytes = 0;

  static RegionLayout make(int num_ranks, int experts_per_rank, int capacity, size_t row_bytes,
                           size_t combine_row_bytes, int max_topk, int num_scales,
                           size_t ring_bytes) {
    RegionLayout l;
    l.num_ranks = num_ranks;
    l.experts_per_rank = experts_per_rank;
    l.capacity = capacity;
    l.row_bytes = row_bytes;
    l.combine_row_bytes = combine_row_bytes;
    l.meta.max_topk = max_topk;
    l.meta.num_scales = num_scales;
    l.ring_bytes = ring_bytes;
    size_t off = 0;
    l.arrived_offset = off;
    off = align_up(off + 8 * static_cast<size_t>(num_ranks), 128);
    l.ready_offset = off;
    off = align_up(off + 8 * static_cast<size_t>(num_ranks), 128);
    l.counts_offset = off;
    off = align_up(off + 2 * 8 * static_cast<size_t>(num_ranks) * l.count_row_words(), 128);
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

  // A count row from one source: R token counts (one per destination), one status word, and
  // the source's per-expert counts for the receiving rank's experts.
  EPCOMM_HD int count_row_words() const { return num_ranks + 1 + experts_per_rank; }
  EPCOMM_HD int status_word() const { return num_ranks; }
  EPCOMM_HD int expert_word(int local_expert) const { return num_ranks + 1 + local_expert; }

  // Rows delivered so far by each source (cumulative, only grows).
  EPCOMM_HD uint64_t* arrived(char* base) const {
    return reinterpret_cast<uint64_t*>(base + arrived_offset);
  }
  // Combines each source has made its y ready for (cumulative, only grows).
  EPCOMM_HD uint64_t* ready(char* base) const {
    return reinterpret_cast<uint64_t*>(base + ready_offset);
  }
  // The count row `source` posted for epoch slot `slot` (epoch & 1); each word is
  // (epoch << 32) | value.
  EPCOMM_HD uint64_t* count_row(char* base, int slot, int source) const {
    return reinterpret_cast<uint64_t*>(base + counts_offset) +
           (static_cast<size_t>(slot) * num_ranks + source) * count_row_words();
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
  EPCOMM_HD char* rings(char* base) const { return base + ring_offset; }
};

}  // namespace epcomm::cuda
