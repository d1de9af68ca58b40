// Config: the sizes and knobs a communicator is built for; fixed for its lifetime.
#pragma once

#include <cstdint>

#include "epcomm/types.hpp"

namespace epcomm {

struct Config {
  int num_experts = 0;          // E, a multiple of the number of ranks
  int hidden = 0;               // H elements per row
  int max_tokens_per_rank = 0;  // capacity: the most tokens one dispatch may send from a rank
  int max_topk = 8;             // the largest K a dispatch may use
  DType dtype = DType::kBF16;   // element type of dispatched rows
  IndexType index_type = IndexType::kInt64;
  Algorithm algorithm = Algorithm::kFlat;
  int dispatch_sms = 16;           // thread blocks (one per SM) a dispatch sends with
  int combine_sms = 16;            // thread blocks a combine gathers with
  int expert_alignment = 1;        // num_recv_per_expert is rounded up to a multiple of this
  int max_recv_rows = 0;           // receive pool rows per rank; 0 means R * max_tokens_per_rank
  int wait_timeout_ms = 5000;      // every wait on a peer gives up after this long
  int ring_slots = 8;              // ring path: slots per (channel, source, destination) ring
  int ring_chunk = 4;              // ring path: most rows a sender publishes at once (< ring_slots;
                                   // dispatch publishes at most 32 rows at a time regardless)
  int ll_max_tokens_per_rank = 0;  // M of the low-latency mode (<= 1024): the most tokens one
                                   // low-latency dispatch sends from a rank; 0 disables the mode
                                   // (no buffers). Needs hidden % 128 == 0.
  // Elastic low-latency mode (DeepEP's enable_shrink): a low-latency wait on a peer that times
  // out masks that peer (Communicator::low_latency_query_mask shows it) instead of failing the
  // communicator, and the call goes on without it. Masks set by hand work without it.
  bool ll_enable_shrink = false;
  // How the CUDA backend shares its regions (types.hpp). kNvshmem needs a build with NVSHMEM
  // and one rank per process (in-process ranks are refused); its library,
  // libnvshmem_host.so.3, is loaded when the first such communicator is created (found through
  // LD_LIBRARY_PATH, else the NVSHMEM the build used), and every region comes from the
  // symmetric heap (NVSHMEM_SYMMETRIC_SIZE must hold them). The host backend computes the
  // same results for every transport and ignores it.
  Transport transport = Transport::kIpc;
  // Ranks per NVLink domain, in rank order: 0 = all ranks one domain (ipc), or as NVSHMEM's
  // nvshmem_ptr finds them (nvshmem); > 0 must divide the number of ranks, and smaller than
  // the job needs transport = nvshmem: ranks outside a rank's domain are then reached through
  // NVSHMEM puts only, even where nvshmem_ptr could map them. Across domains the low-latency
  // mode is built (outputs identical to one domain); the high-throughput dispatch refuses
  // smaller domains with kUnsupported.
  int ranks_per_domain = 0;
  // Test hook for counter wrap: dispatch epochs, combine rounds and low-latency rounds start
  // here instead of 0 (every sequence is 64-bit; tests start just below 2^32). Leave it at 0.
  uint64_t sequence_start = 0;

  // Throws Error(kInvalidArgument) naming the first field that is wrong and its value.
  void validate(int num_ranks) const;

  int experts_per_rank(int num_ranks) const { return num_experts / num_ranks; }
  int recv_capacity(int num_ranks) const {
    return max_recv_rows > 0 ? max_recv_rows : num_ranks * max_tokens_per_rank;
  }
  int num_scales() const { return dtype == DType::kFP8E4M3 ? hidden / kFp8ScaleBlock : 0; }
  size_t row_bytes() const { return static_cast<size_t>(hidden) * element_bytes(dtype); }
};

}  // namespace epcomm
