// Bounded waits. On timeout the first failing thread records rank, phase, peer, expected and
// seen values in the mapped error record and marks the rank failed; every waiter then stops.
#pragma once

#include "../params.hpp"
#include "ptx.cuh"

namespace epcomm::kernels {

using cuda::ErrorRecord;
using cuda::ErrorSink;
using cuda::WaitContext;

// Records an error if none is recorded yet (first writer wins).
__device__ __forceinline__ void record_error(const ErrorSink& sink, int32_t code, int32_t phase,
                                             int32_t rank, int32_t peer, uint64_t expected,
                                             uint64_t seen, int64_t token = -1, int64_t slot = -1,
                                             int64_t value = 0) {
  if (atomicCAS(sink.claimed, 0, 1) != 0) return;
  volatile ErrorRecord* rec = sink.record;
  rec->phase = phase;
  rec->rank = rank;
  rec->peer = peer;
  rec->expected = expected;
  rec->seen = seen;
  rec->token = token;
  rec->slot = slot;
  rec->value = value;
  __threadfence_system();
  rec->code = code;
  __threadfence_system();
}

// Host side: loads kernels into the context (see load_all_kernels).
template <typename... Kernels>
cudaError_t load_kernels(Kernels... kernels) {
  cudaError_t first = cudaSuccess;
  for (const void* k : {reinterpret_cast<const void*>(kernels)...}) {
    cudaFuncAttributes attr;
    const cudaError_t err = cudaFuncGetAttributes(&attr, k);
    if (first == cudaSuccess) first = err;
  }
  return first;
}

__device__ __forceinline__ bool rank_failed(const cuda::DeviceState* state) {
  return *reinterpret_cast<const volatile int32_t*>(&state->failed) != 0;
}

// backoff_ns: a pause after each unsuccessful poll, for waits with many pollers at once (the
// low-latency receive), which then take less of the memory system from the kernels they wait
// for.
template <typename Done>
__device__ __forceinline__ bool bounded_wait(const WaitContext& ctx, const uint64_t* addr,
                                             Done done, uint64_t expected, int32_t phase,
                                             int32_t peer, uint64_t* seen_out,
                                             uint32_t backoff_ns = 0) {
  const uint64_t start = global_timer_ns();
  uint32_t spins = 0;
  while (true) {
    const uint64_t v = ld_acquire_sys(addr);
    if (done(v)) {
      *seen_out = v;
      return true;
    }
    if (backoff_ns != 0) __nanosleep(backoff_ns);
    if ((++spins & 63) == 0) {
      if (rank_failed(ctx.state)) return false;
      if (global_timer_ns() - start > ctx.timeout_ns) {
        record_error(ctx.errors, cuda::kDevTimeout, phase, ctx.rank, peer, expected, v);
        *reinterpret_cast<volatile int32_t*>(&ctx.state->failed) = 1;
        return false;
      }
    }
  }
}

// Waits until *addr >= expected (a monotonic counter); *seen gets the value that satisfied it.
__device__ __forceinline__ bool wait_at_least(const WaitContext& ctx, const uint64_t* addr,
                                              uint64_t expected, int32_t phase, int32_t peer,
                                              uint64_t* seen) {
  return bounded_wait(
      ctx, addr, [&](uint64_t v) { return v >= expected; }, expected, phase, peer, seen);
}

// Waits until *addr >= expected (a monotonic counter).
__device__ __forceinline__ bool wait_at_least(const WaitContext& ctx, const uint64_t* addr,
                                              uint64_t expected, int32_t phase, int32_t peer) {
  uint64_t seen;
  return bounded_wait(
      ctx, addr, [&](uint64_t v) { return v >= expected; }, expected, phase, peer, &seen);
}

// Waits until the tag (high 32 bits, a sequence_tag) of *addr equals `tag`; returns the word.
__device__ __forceinline__ bool wait_tagged(const WaitContext& ctx, const uint64_t* addr,
                                            uint32_t tag, int32_t phase, int32_t peer,
                                            uint64_t* word) {
  return bounded_wait(
      ctx, addr, [&](uint64_t v) { return static_cast<uint32_t>(v >> 32) == tag; },
      static_cast<uint64_t>(tag) << 32, phase, peer, word);
}

}  // namespace epcomm::kernels
