// What the kernels of epcomm's NVSHMEM module take (src/nvshmem/module_kernels.cu). The module is
// device-linked with NVSHMEM's device library on its own and loaded at run time
// (src/cuda/nvshmem_module.hpp); these plain structs are all its callers share with it.
#pragma once

#include <cstdint>

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

// The module's kernels (extern "C": found by name in the loaded module).
constexpr const char* kPutSignalKernel = "epcomm_nvshmem_put_signal";      // (ops, n)
constexpr const char* kWaitSignalsKernel = "epcomm_nvshmem_wait_signals";  // (waits, n, ns)

}  // namespace epcomm::nvshmem
