// Communicator: one rank's endpoint for dispatch and combine.
#pragma once

#include <memory>

#include "epcomm/bootstrap.hpp"
#include "epcomm/config.hpp"
#include "epcomm/dispatch.hpp"
#include "epcomm/error.hpp"
#include "epcomm/types.hpp"

namespace epcomm {

namespace detail {
class CommBackend;
}

class Communicator {
 public:
  // Collective: every rank of `bootstrap` calls it with an equal Config. `device` picks the GPU
  // for Backend::kCuda (-1: the current device). Throws kInvalidArgument for a bad Config,
  // kUnsupported for a backend this build lacks, kCuda / kBootstrap when setup fails.
  static std::unique_ptr<Communicator> create(std::shared_ptr<Bootstrap> bootstrap,
                                              const Config& config, Backend backend,
                                              int device = -1);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const;
  int num_ranks() const;
  Backend backend() const;
  const Config& config() const;
  int recv_capacity() const;  // rows the receive pool holds

  // Work is ordered on this stream (CUDA); the default is the communicator's own stream.
  void set_stream(Stream stream);
  Stream stream() const;

  // Local, not collective. Counts per rank and expert and the token-rank map. Throws
  // kInvalidExpert naming the token and value of an id outside [-1, E) (CUDA: once the
  // stream reaches it; this call waits for it).
  void get_dispatch_layout(const void* topk_idx, int num_tokens, int num_topk,
                           const LayoutOutputs& out);

  // Collective: every rank calls it, in the same order as its other collective calls.
  // Sends each token to every rank that hosts one of its experts (once per rank). Returns
  // views valid until the next dispatch; the handle feeds combine and dispatch_cached.
  // Blocks the host only when options.wait_num_recv. Throws kInvalidArgument for bad
  // inputs, kInvalidExpert for an id out of range, kCapacityExceeded when a rank would
  // receive more than recv_capacity() rows, kTimeout when a peer never joins.
  DispatchResult dispatch(const DispatchInputs& inputs, const DispatchOptions& options = {});

  // Collective: same routing as `handle`, new rows. Needs no topk input; returns recv_x (and
  // recv_scales for fp8) only, with a new handle for combine.
  DispatchResult dispatch_cached(const DispatchHandle& handle, const void* x,
                                 const float* x_scales, const DispatchOptions& options = {});

  // The receive pool as combine input: [recv_capacity()][H] bf16. Expert outputs written here,
  // in dispatch row order, make combine zero-copy. Overwrites the zero-copy recv_x.
  void* combine_input();

  // Collective. out[t][:] = bf16(sum over ranks d that token t was sent to, ascending d, of
  // y_d[row of t on d]), accumulated in fp32; tokens sent nowhere come back as zeros.
  // `y` is [num_recv][H] bf16 (combine_input() or any other buffer, which is then staged),
  // `out` is [handle.num_tokens()][H] bf16. Throws kStaleHandle unless `handle` comes from
  // this communicator's latest dispatch.
  void combine(const void* y, const DispatchHandle& handle, void* out);

  // Waits for all work of this communicator and reports device-side errors (kInvalidExpert,
  // kTimeout, kCapacityExceeded) found since the last check.
  void synchronize();

 private:
  Communicator(std::shared_ptr<Bootstrap> bootstrap, const Config& config, Backend backend,
               std::unique_ptr<detail::CommBackend> impl);
  void check_usable() const;
  void check_handle(const DispatchHandle& handle, const char* caller) const;

  std::shared_ptr<Bootstrap> bootstrap_;
  Config config_;
  Backend backend_;
  std::unique_ptr<detail::CommBackend> impl_;
  uint64_t id_;
  uint64_t epoch_ = 0;  // dispatches issued so far
  bool broken_ = false;
};

}  // namespace epcomm
