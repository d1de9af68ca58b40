// Parameter structs of the kernels (flat and ring paths), each passed by value. Host and device
// code. "DESIGN section N" in kernel comments refers to the project contract, shared/DESIGN.md;
// docs/design.md describes the same protocols as implemented.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../device_state.hpp"
#include "../domain_layout.hpp"
#include "../region_layout.hpp"

namespace epcomm::cuda {

// Tokens per layout block: slots are computed per chunk, offsets per chunk by notify.
constexpr int kLayoutChunkTokens = 128;

// Where a kernel reports an error.
struct ErrorSink {
  int32_t* claimed;     // DeviceState::error_claimed
  ErrorRecord* record;  // mapped host memory
};

// Where a waiting kernel reports a timeout.
struct WaitContext {
  DeviceState* state;
  ErrorSink errors;
  uint64_t timeout_ns;
  int rank;
};

// Ring path: channel c covers layout chunks [first_chunk(c), first_chunk(c + 1)).
EPCOMM_HD int channel_first_chunk(int channel, int num_chunks, int channels) {
  return static_cast<int>(static_cast<long long>(num_chunks) * channel / channels);
}

// A dispatch's routing tables in device memory (owned by its handle).
struct Routing {
  int* slot;              // [T][R]: row of token t on rank d, or -1 (position in chunk at first)
  int* send_counts;       // [R]: rows this rank sends to each rank
  int* recv_counts;       // [R]: rows this rank receives from each rank
  int* num_recv;          // [1]
  int* accepted;          // [1]: the count exchange's verdict (1 accepted, 0 rejected); a
                          // cached dispatch of a rejected one is rejected too
  int* ring_send_counts;  // [channels][R]: rows channel c of this rank sends to each rank
  int* ring_recv_counts;  // [channels][R]: rows channel c of each rank sends to this rank
  // Expert-major dispatch (docs/design.md section 24):
  int* pair_row;        // [T][K]: row of the pair (token t, slot k) at its destination, or -1
                        // (position among the chunk's pairs of that expert at first)
  int* pair_dest;       // [T][K]: the pair's destination rank, or -1
  float* pair_weight;   // [T][K]: topk_weights at the pair's slot (0 without them)
  int* expert_offsets;  // [Le + 1]: each group's first row on this rank, then num_recv
  int* group_pairs;     // [Le]: pairs (not padding) in each group on this rank
};

// The high-throughput paths across NVLink domains (domain_layout.hpp, docs/design.md section
// 23). `staging` is null within one domain, and every kernel then runs as it does without it.
struct DomainParams {
  DomainLayout layout;
  char* staging;  // this rank's staging region (symmetric memory), or null
};

struct LayoutParams {
  const void* topk_idx;
  bool idx_int64;
  int num_tokens, num_topk, num_experts, num_ranks, experts_per_rank;
  int* slot;               // [T][R] position within the chunk, or -1; may be null
  int* chunk_counts;       // [chunks][R]; may be null
  int* expert_counts;      // [E], zeroed first (accumulated with atomics)
  int* tokens_per_rank;    // [R], zeroed first; may be null
  bool* is_token_in_rank;  // [T][R]; may be null
  int32_t* invalid_flag;   // set to 1 on a bad id; may be null
  ErrorSink errors;
  int rank;
  // Expert-major (pair_layout_kernel): instead of slot / chunk_counts, each pair's position
  // among the chunk's pairs of its expert, and per chunk the pairs of each expert; expert_counts
  // then counts pairs (a token naming an expert in several slots counts once).
  int* pair_pos;             // [T][K], -1 where slot k is not a pair
  int* chunk_expert_counts;  // [chunks][E]
};

struct NotifyParams {
  RegionLayout layout;
  char* const* peers;  // [R] region bases, this rank's included
  int rank, num_ranks, experts_per_rank, num_topk;
  bool cached;            // replay the handle's counts: no layout, no chunk offsets
  uint64_t handle_epoch;  // cached: the replayed dispatch's sequence number; ranks must agree
  int* chunk_counts;      // [chunks][R]; turned into each chunk's first row per destination
  int num_chunks;
  const int* expert_counts;  // [E] this rank's tokens per expert (fresh only)
  Routing routing;
  int* num_recv_per_expert;  // [Le] output (fresh only)
  int expert_alignment;
  volatile int* mapped_num_recv;  // host-mapped copy of num_recv; may be null
  WaitContext wait;
  // Expert-major: every rank posts its pair counts for all E experts; every rank then knows
  // each destination's groups and its own first row in each (section 24).
  bool expert_major;
  int* pair_matrix;          // [R][E] scratch: pairs each source sends to each expert
  int* group_rows;           // [E] scratch: each expert's group rows at its rank, padding included
  int* chunk_expert_counts;  // fresh: [chunks][E], turned into each chunk's first row per expert
  // Across domains the exchange is split around the NVSHMEM module's puts of the rows this
  // rank posts outside its domain (to domains.staging's count outbox): kNotifyPost, then the
  // module, then kNotifyCollect. Within one domain, kNotifyAll.
  int phase;
  DomainParams domains;
};

constexpr int kNotifyAll = 0;
constexpr int kNotifyPost = 1;
constexpr int kNotifyCollect = 2;

struct SendParams {
  RegionLayout layout;
  char* const* peers;
  int rank, num_ranks, experts_per_rank, num_tokens, num_topk;
  bool cached;            // rows and scales only
  const void* x;          // [T][row_bytes]
  const float* x_scales;  // [T][num_scales] or null
  const void* topk_idx;   // fresh only
  bool idx_int64;
  const float* topk_weights;  // may be null
  int* slot;                  // [T][R]: fresh: positions in chunk, made final here; cached: final
  const int* chunk_offsets;   // fresh: [chunks][R] first row of each chunk per destination
  const DeviceState* state;
  // Expert-major: one row per pair instead of per (token, destination).
  bool expert_major;
  Routing routing;                  // pair_row (made final here when fresh), pair_dest, pair_weight
  const int* chunk_expert_offsets;  // fresh: [chunks][E] first row of each chunk per expert
  // Rows by bulk copies (the TMA engine) instead of vector stores: only where every peer's pool
  // is memory the engine may write (MemoryDomain::bulk_copies) and the buffers fit.
  bool bulk;
  // Across domains: a destination outside this rank's domain (a null peer) gets no row here;
  // the token's record goes to domains.staging's out_record instead (the module puts it to
  // the forwarders).
  DomainParams domains;
};

// Single-block wait: rows from every source have arrived.
struct ArrivalWaitParams {
  RegionLayout layout;
  char* local;
  int num_ranks;
  WaitContext wait;
};

struct DrainParams {
  RegionLayout layout;
  char* local;
  int num_topk;
  bool cached;
  const int* num_recv;
  void* recv_topk_idx;  // [num_recv][K]
  bool idx_int64;
  float* recv_topk_weights;  // [num_recv][K]
  int* recv_src;             // [num_recv][2]
  float* recv_scales;        // [num_recv][num_scales] or null
  const DeviceState* state;
  // Expert-major: per row the pair's slot and weight; padding rows (after each group's pairs)
  // get x and scales zero, source {-1, -1}, slot -1, weight 0, also when cached.
  bool expert_major;
  int experts_per_rank;
  const int* expert_offsets;  // [Le + 1]
  const int* group_pairs;     // [Le]
  int32_t* recv_topk_slot;    // [num_recv]
  float* recv_weight;         // [num_recv]
};

// Copies num_recv rows between a pool and a caller buffer, either direction.
struct RowCopyParams {
  const char* src;
  char* dst;
  size_t src_stride, dst_stride, row_bytes;
  const int* num_rows;
  const DeviceState* state;
};

// Single-block: raise this rank's ready signal at every peer, wait for every peer's.
struct CombineReadyParams {
  RegionLayout layout;
  char* const* peers;
  int rank, num_ranks;
  WaitContext wait;
};

struct GatherParams {
  RegionLayout layout;
  char* const* peers;
  int num_ranks, num_tokens, hidden;
  const int* slot;        // [T][R]
  uint16_t* out;          // [T][H] bf16
  const uint16_t* bias;   // [T][H] bf16 or null: added after the rows, before the rounding
  const uint16_t* bias2;  // [T][H] bf16 or null: added after bias
  const DeviceState* state;
  // Expert-major: token t's rows are its pairs in ascending slot order (pair_row, pair_dest),
  // weighted with pair_weight (fmaf) when apply_weights.
  bool expert_major;
  bool apply_weights;
  int num_topk;
  Routing routing;
};

// The kernels of the high-throughput paths across domains (domain_forward.cu,
// domain_combine.cu): this rank as forwarder for the other domains' ranks of its local index,
// and as the source that adds the domains' partials.
struct DomainKernelParams {
  RegionLayout layout;
  char* const* peers;  // [R]; null outside this rank's domain
  DomainParams domains;
  int rank, num_ranks, experts_per_rank, num_topk, num_tokens, hidden;
  bool cached;            // dispatch: rows and scales only
  const int* slot;        // combine: [T][R] final slots of this rank's tokens
  uint16_t* out;          // combine: [T][H] bf16
  const uint16_t* bias;   // combine: as GatherParams::bias
  const uint16_t* bias2;  // combine: as GatherParams::bias2
  WaitContext wait;
};

// Ring dispatch and combine (DESIGN section 7): blocks [0, C) send, blocks [C, 2C) receive,
// block c handling channel c. Both directions use the same rings, as FIFOs whose counters
// only grow.
struct RingParams {
  RegionLayout layout;
  char* const* peers;
  int rank, num_ranks, experts_per_rank, num_tokens, num_topk, num_chunks, hidden;
  int chunk_rows;  // most rows a sender publishes at once
  bool cached;
  // Dispatch.
  const void* x;
  const float* x_scales;
  const void* topk_idx;
  bool idx_int64;
  const float* topk_weights;
  int* slot;                 // as SendParams::slot
  const int* chunk_offsets;  // as SendParams::chunk_offsets
  Routing routing;
  uint64_t* sent;      // [C][R] rows pushed into ring (c, this rank -> d) so far (local memory)
  uint64_t* received;  // [C][R] rows consumed from ring (c, s -> this rank) so far
  // Combine.
  uint16_t* out;          // [T][H]
  const uint16_t* bias;   // as GatherParams::bias
  const uint16_t* bias2;  // as GatherParams::bias2
  WaitContext wait;
};

}  // namespace epcomm::cuda
