// Bootstrap: how the ranks of a communicator find each other before any data moves.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

namespace epcomm {

// A collective channel between the R ranks of one job. Every rank must make the same
// sequence of calls. Implementations bound their waits and throw Error(kBootstrap or
// kTimeout) naming the ranks that did not arrive, rather than hang.
class Bootstrap {
 public:
  virtual ~Bootstrap() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Each rank contributes `bytes` bytes from `send`; on return `recv` holds size() * bytes
  // bytes, rank i's contribution at offset i * bytes. `send` and `recv` may not overlap.
  virtual void allGather(const void* send, void* recv, size_t bytes) = 0;
  // Returns once every rank has called barrier().
  virtual void barrier() = 0;
  // True when all ranks live in this process (host pointers may be shared between them).
  virtual bool in_process() const = 0;
};

// N bootstraps for N ranks that are threads of this process; hand one to each thread.
// Waits give up after `timeout_ms` with Error(kTimeout) naming the ranks that never came.
std::vector<std::unique_ptr<Bootstrap>> make_in_process_bootstraps(int num_ranks,
                                                                   int timeout_ms = 30000);

}  // namespace epcomm
