// What the kernels of epcomm's NVSHMEM module take (src/nvshmem/module_kernels.cu). The module is
// device-linked with NVSHMEM's device library on its own and loaded at run time
// (src/cuda/nvshmem_module.hpp); these plain structs are all its callers share with it.
#pragma once

#include <cstdint>

#include "cuda/low_latency_layout.hpp"

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

// The module's kernels (extern "C": found by name in the loaded module).
constexpr const char* kPutSignalKernel = "epcomm_nvshmem_put_signal";      // (ops, n)
constexpr const char* kWaitSignalsKernel = "epcomm_nvshmem_wait_signals";  // (waits, n, ns)
// (LlPuts): the staged messages to their slots, then every count word, after the data.
constexpr const char* kLlDispatchPutsKernel = "epcomm_nvshmem_ll_dispatch_puts";
// (LlPuts): rows of y staged in this rank's message slots to their sources' combine rows,
// then every source's signal word, after the data.
constexpr const char* kLlCombinePutsKernel = "epcomm_nvshmem_ll_combine_puts";

}  // namespace epcomm::nvshmem
