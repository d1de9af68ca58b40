// Communicator: one rank's endpoint for dispatch and combine.
#pragma once

#include <memory>

#include "epcomm/bootstrap.hpp"
#include "epcomm/config.hpp"
#include "epcomm/dispatch.hpp"
#include "epcomm/error.hpp"
#include "epcomm/low_latency.hpp"
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
  DispatchResult dispatch_cached(const DispatchHandle& handle, const void* x, const float* x_scales,
                                 const DispatchOptions& options = {});

  // The receive pool as combine input: [recv_capacity()][H] bf16. Expert outputs written here,
  // in dispatch row order, make combine zero-copy. Overwrites the zero-copy recv_x.
  void* combine_input();

  // Collective. out[t][:] = bf16(sum over ranks d that token t was sent to, ascending d, of
  // y_d[row of t on d]), accumulated in fp32; tokens sent nowhere come back as zeros.
  // `y` is [num_recv][H] bf16 (combine_input() or any other buffer, which is then staged),
  // `out` is [handle.num_tokens()][H] bf16. Throws kStaleHandle unless `handle` comes from
  // this communicator's latest dispatch. `options` adds biases (see CombineOptions).
  void combine(const void* y, const DispatchHandle& handle, void* out,
               const CombineOptions& options = {});

  // Low-latency mode (needs Config::ll_max_tokens_per_rank > 0). Collective, issued in the same
  // order on every rank; nothing waits on the host, so each call can be captured in a CUDA
  // graph. Each (token, expert) pair goes straight into the expert's rank, in a slot the sender
  // computes. With send_only the call returns once its sends are issued, and
  // low_latency_receive(handle) finishes it later; no SM is held in between. Call n uses buffer
  // (n - 1) % 2: throws kInvalidArgument when that buffer still holds dispatch n - 2 whose
  // combine has not finished being issued (at most two calls in flight). Every rank passes the
  // same use_fp8; x must be finite for the fp8 cast. An expert id outside [-1, E): the CUDA
  // backend sends that slot nowhere, finishes the round, and this rank's synchronize throws
  // kInvalidExpert naming token, slot and value (peers are not affected); the host reference,
  // which sees every rank's input, throws kInvalidExpert on every rank and leaves the buffer idle.
  LowLatencyDispatchResult low_latency_dispatch(const LowLatencyDispatchInputs& inputs,
                                                bool send_only = false);

  // Collective. out[t] = bf16(acc) with acc = fmaf(topk_weights[t][k], y_row(t, k), acc) over k
  // ascending from acc = 0 (fp32), where y_row(t, k) is the row the expert topk_idx[t][k]
  // computed for token t; slots with id -1 add nothing, tokens with none come back as zeros.
  // `y` is [Le][R * M][H] bf16 in the dispatch's row order; `topk_idx` must be the one given to
  // the dispatch of `handle`, `topk_weights` is [T][K] fp32, `out` is [T][H] bf16. Throws
  // kStaleHandle unless `handle` is the latest dispatch on its buffer and was received.
  void low_latency_combine(const void* y, const void* topk_idx, const float* topk_weights,
                           const LowLatencyHandle& handle, void* out, bool send_only = false,
                           const LowLatencyCombineOptions& options = {});

  // Finishes the send_only dispatch or combine pending on `handle`'s buffer.
  void low_latency_receive(const LowLatencyHandle& handle);

  // Rank masks of the low-latency mode (DeepEP's low_latency_*_mask_buffer). Local, ordered on
  // the stream, capturable; change them between rounds, not between a send and its receive.
  // A masked rank is neither sent to nor waited for: its experts receive nothing from this
  // rank, its tokens are not received, and its experts add nothing to this rank's combine.
  // Masking is this rank's view only; ranks that still send to a rank that masked them time
  // out on it (and, with Config::ll_enable_shrink, mask it in turn).
  void low_latency_update_mask(int rank, bool masked);
  // Writes each rank's mask (1 masked, 0 not) to mask_out: [R] int32 in the backend's memory.
  void low_latency_query_mask(int32_t* mask_out);
  void low_latency_clean_mask();  // unmasks every rank

  // Waits for all work of this communicator and reports device-side errors (kInvalidExpert,
  // kTimeout, kCapacityExceeded) found since the last check.
  void synchronize();

 private:
  Communicator(std::shared_ptr<Bootstrap> bootstrap, const Config& config, Backend backend,
               std::unique_ptr<detail::CommBackend> impl);
  void check_usable() const;
  void check_handle(const DispatchHandle& handle, const char* caller) const;
  // The low-latency buffer `handle` names, checked to hold its call in `phase`.
  int low_latency_buffer(const LowLatencyHandle& handle, int phase, const char* caller) const;

  std::shared_ptr<Bootstrap> bootstrap_;
  Config config_;
  Backend backend_;
  std::unique_ptr<detail::CommBackend> impl_;
  uint64_t id_;
  uint64_t epoch_;  // the latest dispatch's number: Config::sequence_start + dispatches issued
  bool combined_ = false;  // the latest dispatch was combined at least once
  bool broken_ = false;
  uint64_t ll_calls_;  // Config::sequence_start + low-latency dispatches issued
  struct LowLatencyBuffer {
    uint64_t call = 0;  // the dispatch that last used it
    int phase = 0;      // a LowLatencyPhase (communicator.cpp)
  };
  LowLatencyBuffer ll_buffers_[2];
};

}  // namespace epcomm
