// What the kernels of epcomm's NVSHMEM module take (src/nvshmem/module_kernels.cu). The module is
// device-linked with NVSHMEM's device library on its own and loaded at run time
// (src/cuda/nvshmem_module.hpp); these plain structs are all its callers share with it.
#pragma once

#include <cstdint>

#include "cuda/domain_layout.hpp"
#include "cuda/low_latency_layout.hpp"
#include "cuda/region_layout.hpp"

namespace epcomm::nvshmem {

// One block's put: `bytes` from local `src` to the symmetric `dst` on PE `pe`, then `add` added
// to the symmetric `signal` there, after the data (NVSHMEM's put-with-signal ordering).
struct PutSignalOp {
  void* dst;
  const void* src;
  uint64_t bytes;
  uint64_t* signal;
  uint64_t add;
  int pe;
};

// A bounded wait for the local symmetric `signal` to reach `expected`; the kernel fills `seen`
// (the last value read) and `timed_out` (1 when the bound passed first).
struct SignalWait {
  uint64_t* signal;
  uint64_t expected;
  uint64_t seen;
  int timed_out;
};

// A low-latency message the dispatch send staged in the outbox for a rank outside this rank's
// domain (DESIGN section 11): entry i = token * K + top-k slot of the table; rank -1 where
// slot i sends nothing across domains.
struct LlRemoteMessage {
  int32_t rank, local_expert, slot, unused;
};

// What both low-latency put kernels take. The region is symmetric memory: this rank's address
// of a word or row is also the address NVSHMEM puts to on any PE. `words[i]` is the signal
// word the send kernel would have stored across domains: the count of expert i (dispatch, E
// words: PE i / Le, count[i % Le][rank]) or the combine signal of source i (R words: PE i,
// delivered[rank]); 0 where nothing is posted (a rank of this domain, or masked).
struct LlPuts {
  cuda::LowLatencyLayout layout;
  char* region;
  int rank, buffer, experts_per_rank;
  bool fp8;                         // dispatch: rows are H bytes of e4m3, then the scales
  const LlRemoteMessage* messages;  // dispatch: [num_messages]
  int num_messages;
  const int* recv_count;    // combine: [Le], rows per local expert
  const int32_t* recv_src;  // combine: [Le][R * M][3] (source, token, top-k slot)
  const int* layout_range;  // combine: [Le][R][2] (first row, rows) per source
  const uint64_t* words;
  int num_words;
  uint32_t* blocks_done;  // rank-private, 0 between launches; the last block resets it
  // The rank's failure flag (DeviceState::failed): once set, the send kernels return at once
  // and these kernels too (the staged messages and words are then stale).
  const int32_t* failed;
};

// What the high-throughput puts across domains take (docs/design.md section 23). Both regions
// are symmetric memory: this rank's address of a word is the address a put reaches on any PE.
// The kernels read the epoch and combine count the backend's kernels stored before them in the
// stream, and return at once when the rank has failed or (forward, partials) the dispatch was
// rejected, when no forwarder waits either.
struct HtPuts {
  cuda::RegionLayout region;
  cuda::DomainLayout domains;
  char* main;     // this rank's region (count matrices)
  char* staging;  // this rank's staging region
  int rank, num_tokens;
  const uint64_t* epoch;            // DeviceState::epoch (count: the exchange's is epoch + 1)
  const uint64_t* combine_seq;      // DeviceState::combine_seq
  const uint64_t* domain_combines;  // DeviceState::domain_combines: its parity, the buffer
  const int32_t* failed;            // DeviceState::failed
  const int32_t* dispatch_ok;       // DeviceState::dispatch_ok
  uint32_t* blocks_done;            // rank-private, 0 between launches; the last block resets it
};

// The module's kernels (extern "C": found by name in the loaded module).
constexpr const char* kPutSignalKernel = "epcomm_nvshmem_put_signal";      // (ops, n)
constexpr const char* kWaitSignalsKernel = "epcomm_nvshmem_wait_signals";  // (waits, n, ns)
// (LlPuts): the staged messages to their slots, then every count word, after the data.
constexpr const char* kLlDispatchPutsKernel = "epcomm_nvshmem_ll_dispatch_puts";
// (LlPuts): rows of y staged in this rank's message slots to their sources' combine rows,
// then every source's signal word, after the data.
constexpr const char* kLlCombinePutsKernel = "epcomm_nvshmem_ll_combine_puts";
// (HtPuts), one block: the count words staged for ranks outside the domain, each set in that
// rank's count matrix.
constexpr const char* kHtCountPutsKernel = "epcomm_nvshmem_ht_count_puts";
// (HtPuts): each staged record of this dispatch to the forwarder of every remote domain its
// token reaches, then every forwarder's forward word, after the data.
constexpr const char* kHtForwardPutsKernel = "epcomm_nvshmem_ht_forward_puts";
// (HtPuts): each partial this rank made as forwarder to its source, then every source's partial
// word, after the data.
constexpr const char* kHtPartialPutsKernel = "epcomm_nvshmem_ht_partial_puts";

}  // namespace epcomm::nvshmem
