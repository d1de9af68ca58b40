// Per-rank state that lives in the rank's own memory (not the symmetric region): counters that
// let kernels run from stream order alone (so calls can be replayed in a CUDA graph), and the
// error record the host reads after a failed wait.
#pragma once

#include <cstdint>

namespace epcomm::cuda {

constexpr int kMaxCudaRanks = 128;

// In device memory. The counters (epoch, combine_seq, expected_arrived) and the verdict are
// written only by single-block kernels (notify, combine ready) and read by later kernels;
// invalid_input is set by the layout kernel and error_claimed by whichever kernel records
// the first error.
struct DeviceState {
  uint64_t epoch;            // Config::sequence_start + dispatches whose count exchange completed
  uint64_t combine_seq;      // Config::sequence_start + combine ready rounds completed
  uint64_t domain_combines;  // combines across NVLink domains waited for (docs/design.md §23):
                             // its parity picks the partials buffer
  int32_t dispatch_ok;       // verdict of the latest count exchange: 1 = send, 0 = skip
  int32_t failed;            // a wait timed out: every later kernel returns at once
  int32_t invalid_input;     // the layout step of the current dispatch saw a bad expert id
  int32_t error_claimed;     // an error record is written or being written (first writer wins)
  uint64_t expected_arrived[kMaxCudaRanks];  // cumulative rows expected from each source
};

enum DeviceErrorCode : int32_t {
  kDevNone = 0,
  kDevTimeout = 1,
  kDevInvalidExpert = 2,     // token, slot and value of the bad id on this rank
  kDevPeerInvalidInput = 3,  // peer rank that had a bad id
  kDevCapacity = 4,          // peer = rank that would overflow, seen = rows, expected = capacity
  kDevTopkMismatch = 5,      // peer dispatched with another top-k (seen), expected = ours
  kDevStaleHandle = 6,       // cached: peer replayed dispatch #seen, this rank #expected
  kDevLlInvalidExpert = 7,   // low-latency: token, slot and value of a bad id (slot skipped)
  kDevLlRoundMismatch = 8,   // low-latency: peer's count carries round tag seen, ours expected
  kDevLlOverflow = 9,        // low-latency: peer posted seen messages or rows, at most expected
  kDevLlFp8Mismatch = 10,    // low-latency: peer's use_fp8 is seen, this rank's expected
  kDevRejectedReplay = 11,   // cached: the replayed dispatch #expected was rejected
  kDevLlTopkChanged = 12,    // low-latency combine: topk_idx[token][slot] = value, dispatch's
                             // was seen (the dispatch's is used)
  kDevLayoutMismatch = 13,   // peer dispatched with another layout (seen: 1 expert-major)
};

enum WaitPhase : int32_t {
  kPhaseNone = 0,
  kPhaseCountExchange = 1,  // dispatch: waiting for a peer's count row
  kPhaseArrival = 2,        // dispatch: waiting for a peer's rows
  kPhaseCombineReady = 3,   // combine: waiting for a peer's y to be in place
  kPhaseRingSpace = 4,      // ring: sender waiting for free slots
  kPhaseRingData = 5,       // ring: receiver waiting for rows
  kPhaseLlDispatch = 6,     // low-latency dispatch: waiting for a peer's message count
  kPhaseLlCombine = 7,      // low-latency combine: waiting for a peer's rows
  kPhaseForward = 8,        // dispatch across domains: forwarder waiting for a source's records
  kPhasePartials = 9,       // combine across domains: waiting for a forwarder's partials
};

const char* to_string(WaitPhase phase);

// In mapped host memory: the first error since the host last looked. The writer claims it
// through DeviceState::error_claimed (device memory: atomics on mapped host memory are not
// allowed), fills the fields, fences, and stores the code last. The host reads it after the
// stream reached the writer.
struct ErrorRecord {
  int32_t code;
  int32_t phase;
  int32_t rank;
  int32_t peer;
  uint64_t expected;
  uint64_t seen;
  int64_t token;
  int64_t slot;
  int64_t value;
};

}  // namespace epcomm::cuda
