// Bulk copies through the TMA engine (sm_90): global -> shared with an mbarrier counting the
// bytes, shared -> global in bulk groups. Addresses and sizes are multiples of 16 bytes.
// Peer memory is a valid destination only when mapped through the CUDA virtual-memory API or
// local to this process (docs/design.md section 25; the engine faults on legacy IPC mappings).
#pragma once

#include <cstdint>

namespace epcomm::kernels {

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// One arrival (the thread that posts the expected bytes) completes a phase.
__device__ __forceinline__ void mbarrier_init(uint64_t* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(shared_address(bar)) : "memory");
}

// Makes initialised mbarriers visible to the async proxy; a block barrier follows.
__device__ __forceinline__ void fence_mbarrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// Starts copying `bytes` from global `src` into shared `dst`; `bar`'s current phase completes
// when they have landed.
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes,
                                          uint64_t* bar) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(
                   shared_address(bar)),
               "r"(bytes)
               : "memory");
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::
          "r"(shared_address(dst)),
      "l"(src), "r"(bytes), "r"(shared_address(bar))
      : "memory");
}

// Waits for the phase of `bar` with parity `parity` to complete. It completes when the bulk load
// posted on it lands: a copy of this GPU's memory by its own engine, which ends or faults the
// context, so the wait needs no bound of its own.
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  while (!done) {
    asm volatile(
        "{\n\t.reg .pred p;\n\t"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
        "selp.u32 %0, 1, 0, p;\n\t}"
        : "=r"(done)
        : "r"(shared_address(bar)), "r"(parity)
        : "memory");
  }
}

// Starts copying `bytes` from shared `src` to global `dst` in the current bulk group.
__device__ __forceinline__ void bulk_store(void* dst, const void* src, uint32_t bytes) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(dst),
               "r"(shared_address(src)), "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void bulk_commit() {
  asm volatile("cp.async.bulk.commit_group;" ::: "memory");
}

// Every bulk group of this thread but the newest `kPending` has read its shared source.
template <int kPending>
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(kPending) : "memory");
}

// Every bulk group of this thread has written its destination, and the writes are ordered
// before this thread's later generic accesses (so a barrier and a release after it publish
// them).
__device__ __forceinline__ void bulk_wait_written() {
  asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
  asm volatile("fence.proxy.async.global;" ::: "memory");
}

// Orders this thread's earlier generic accesses of global memory before its later bulk copies.
__device__ __forceinline__ void fence_generic_to_bulk() {
  asm volatile("fence.proxy.async.global;" ::: "memory");
}

}  // namespace epcomm::kernels
