// The byte layout of the staging region of the high-throughput paths across NVLink domains
// (DESIGN section 11, docs/design.md section 23). Each rank allocates it in NVSHMEM's symmetric
// heap, only when its domain is smaller than the job, so this rank's address of a word or record
// is also the address a put reaches on any other rank.
//
// Ranks r are numbered domain by domain: domain r / L, local index r % L. Rank s of domain A
// forwards a token to remote domain B through the forwarder f = B * L + s % L: one record per
// (token, B), written into f's in_record(A, token). f stores it over NVLink at the final slots
// of B's ranks, and in the combine sends back one bf16 partial per token into s's
// in_partial(B, token).
#pragma once

#include <cstddef>
#include <cstdint>

#include "region_layout.hpp"

namespace epcomm::cuda {

// A forwarded token: | header | slot[R] int32 | ids[K] int32 | weights[K] fp32 | (16-aligned)
// row | scales[S] fp32 | (16-aligned). The header's tag is sequence_tag(epoch) of the dispatch
// that wrote it, so a record left from an earlier dispatch is never taken for a current one.
struct RecordHeader {
  uint32_t tag;
  int32_t token;
  int32_t unused[2];
};

//   forward words [D] | partial words [2][D] | count outbox [R][W] | out records [T] |
//   in records [D][T] | out partials [D][T] | in partials [2][D][T]
// The partial words and in partials alternate between two buffers by combine
// (DeviceState::domain_combines), so a second combine of one dispatch never writes what its
// source may still wait for or read.
struct DomainLayout {
  int num_ranks = 0;
  int ranks_per_domain = 0;  // L < num_ranks
  int max_tokens = 0;        // per rank
  int max_topk = 0;
  int num_scales = 0;
  int count_row_words = 0;   // RegionLayout::count_row_words()
  size_t row_bytes = 0;      // a dispatched row
  size_t partial_bytes = 0;  // a bf16 combine row, 2H
  size_t record_row_offset = 0, record_bytes = 0;
  size_t forward_words_offset = 0, partial_words_offset = 0, count_outbox_offset = 0;
  size_t out_records_offset = 0, in_records_offset = 0;
  size_t out_partials_offset = 0, in_partials_offset = 0, total_bytes = 0;

  // A record's bytes before its row, and in all: what crosses domains per (token, remote
  // domain) in a dispatch (the bench's count uses these too).
  static size_t record_row_offset_of(int num_ranks, int max_topk) {
    return align_up(sizeof(RecordHeader) + 4 * static_cast<size_t>(num_ranks + 2 * max_topk), 16);
  }
  static size_t record_bytes_of(int num_ranks, int max_topk, int num_scales, size_t row_bytes) {
    return align_up(record_row_offset_of(num_ranks, max_topk) + row_bytes + 4 * num_scales, 16);
  }

  static DomainLayout make(const RegionLayout& region, int ranks_per_domain, int max_tokens) {
    DomainLayout l;
    l.num_ranks = region.num_ranks;
    l.ranks_per_domain = ranks_per_domain;
    l.max_tokens = max_tokens;
    l.max_topk = region.meta.max_topk;
    l.num_scales = region.meta.num_scales;
    l.count_row_words = region.count_row_words();
    l.row_bytes = region.row_bytes;
    l.partial_bytes = region.combine_row_bytes;
    l.record_row_offset = record_row_offset_of(l.num_ranks, l.max_topk);
    l.record_bytes = record_bytes_of(l.num_ranks, l.max_topk, l.num_scales, l.row_bytes);
    const size_t D = static_cast<size_t>(l.num_domains()), T = static_cast<size_t>(max_tokens);
    size_t off = 0;
    l.forward_words_offset = off;
    off = align_up(off + 8 * D, 128);
    l.partial_words_offset = off;
    off = align_up(off + 2 * 8 * D, 128);
    l.count_outbox_offset = off;
    off = align_up(off + 8 * static_cast<size_t>(l.num_ranks) * l.count_row_words, 128);
    l.out_records_offset = off;
    off = align_up(off + l.record_bytes * T, 128);
    l.in_records_offset = off;
    off = align_up(off + l.record_bytes * D * T, 128);
    l.out_partials_offset = off;
    off = align_up(off + l.partial_bytes * D * T, 128);
    l.in_partials_offset = off;
    off = align_up(off + 2 * l.partial_bytes * D * T, 128);
    l.total_bytes = off;
    return l;
  }

  EPCOMM_HD int num_domains() const { return num_ranks / ranks_per_domain; }
  EPCOMM_HD int domain_of(int rank) const { return rank / ranks_per_domain; }
  // The rank of domain `domain` with the same local index as `rank`.
  EPCOMM_HD int partner(int rank, int domain) const {
    return domain * ranks_per_domain + rank % ranks_per_domain;
  }

  // At forwarder f: (tag(epoch) << 32) | tokens, set by the source of domain A once its records
  // of that dispatch are all in place (tokens: the source's T).
  EPCOMM_HD uint64_t* forward_word(char* base, int source_domain) const {
    return reinterpret_cast<uint64_t*>(base + forward_words_offset) + source_domain;
  }
  // At source s: (tag(combine) << 32) | 1, set by the forwarder of domain B once its partials
  // of that combine are all in place.
  EPCOMM_HD uint64_t* partial_word(char* base, int buffer, int forwarder_domain) const {
    return reinterpret_cast<uint64_t*>(base + partial_words_offset) +
           static_cast<size_t>(buffer) * num_domains() + forwarder_domain;
  }
  // This rank's count row for `peer` outside its domain (tagged words, as the notify kernel
  // would store them), before the NVSHMEM module sets them in the peer's count matrix.
  EPCOMM_HD uint64_t* count_outbox(char* base, int peer) const {
    return reinterpret_cast<uint64_t*>(base + count_outbox_offset) +
           static_cast<size_t>(peer) * count_row_words;
  }
  EPCOMM_HD char* out_record(char* base, int token) const {
    return base + out_records_offset + record_bytes * static_cast<size_t>(token);
  }
  EPCOMM_HD char* in_record(char* base, int source_domain, int token) const {
    return base + in_records_offset +
           record_bytes * (static_cast<size_t>(source_domain) * max_tokens + token);
  }
  EPCOMM_HD char* out_partial(char* base, int source_domain, int token) const {
    return base + out_partials_offset +
           partial_bytes * (static_cast<size_t>(source_domain) * max_tokens + token);
  }
  // Buffer `buffer` (a combine's parity) of the partials the forwarder of `domain` sends here.
  EPCOMM_HD char* in_partial(char* base, int buffer, int domain, int token) const {
    return base + in_partials_offset +
           partial_bytes *
               ((static_cast<size_t>(buffer) * num_domains() + domain) * max_tokens + token);
  }

  // Within a record.
  EPCOMM_HD RecordHeader* header(char* record) const {
    return reinterpret_cast<RecordHeader*>(record);
  }
  EPCOMM_HD int32_t* slots(char* record) const {
    return reinterpret_cast<int32_t*>(record + sizeof(RecordHeader));
  }
  EPCOMM_HD int32_t* ids(char* record) const { return slots(record) + num_ranks; }
  EPCOMM_HD float* weights(char* record) const {
    return reinterpret_cast<float*>(ids(record) + max_topk);
  }
  EPCOMM_HD char* row(char* record) const { return record + record_row_offset; }
  EPCOMM_HD float* scales(char* record) const {
    return reinterpret_cast<float*>(record + record_row_offset + row_bytes);
  }
};

}  // namespace epcomm::cuda
