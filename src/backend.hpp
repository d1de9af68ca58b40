// The interface every backend implements; Communicator checks arguments, then forwards here.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "argument_checks.hpp"
#include "epcomm/bootstrap.hpp"
#include "epcomm/config.hpp"
#include "epcomm/dispatch.hpp"
#include "epcomm/error.hpp"
#include "epcomm/low_latency.hpp"

namespace epcomm::detail {

// What every backend's handle carries; backends derive to add their routing tables.
struct HandleState {
  virtual ~HandleState() = default;
  uint64_t comm_id = 0;  // the Communicator that made it
  uint64_t epoch = 0;    // its dispatch sequence number
  int num_tokens = 0;
  int num_recv = -1;  // -1 when the dispatch did not wait for it on the host
  bool expert_major = false;  // RecvLayout::kExpertMajor
  bool has_weights = false;   // the dispatch was given topk_weights
};

// What a low-latency handle carries.
struct LowLatencyState {
  uint64_t comm_id = 0;
  uint64_t call = 0;  // low-latency dispatch sequence number (1, 2, ...)
  int buffer = 0;     // (call - 1) % 2
  int num_tokens = 0;
  int num_topk = 0;
  bool use_fp8 = false;
};

struct LowLatencyCombineArgs {
  const void* y = nullptr;  // [Le][R * M][H] bf16
  const void* topk_idx = nullptr;
  const float* topk_weights = nullptr;
  void* out = nullptr;  // [T][H] bf16
  int64_t* wait_cost_stats = nullptr;  // [R] or null
};

// Arguments already checked by Communicator: pointers present, T and K in range, dtype-matched
// scales. Backends check what needs the data itself (expert ids) or the device.
class CommBackend {
 public:
  virtual ~CommBackend() = default;
  virtual int recv_capacity() const = 0;
  // This rank's memory that peers write or read: no caller buffer may overlap it.
  virtual std::vector<MemoryRange> shared_memory() const = 0;
  virtual void set_stream(Stream stream) = 0;
  virtual Stream stream() const = 0;
  virtual void get_dispatch_layout(const void* topk_idx, int num_tokens, int num_topk,
                                   const LayoutOutputs& out) = 0;
  // Throws what would stop a dispatch before anything is issued (a local error: the epoch
  // does not advance). After it returns, dispatch throws only errors every rank sees alike or
  // failures that break the communicator.
  virtual void check_dispatch_issuable(const DispatchOptions& options, bool cached) = 0;
  // The backend fills result.handle with a HandleState carrying comm_id and epoch.
  virtual DispatchResult dispatch(const DispatchInputs& in, const DispatchOptions& options,
                                  uint64_t comm_id, uint64_t epoch) = 0;
  virtual DispatchResult dispatch_cached(const HandleState& handle, const void* x,
                                         const float* x_scales, const DispatchOptions& options,
                                         uint64_t comm_id, uint64_t epoch) = 0;
  virtual void* combine_input() = 0;
  // `repeat`: the dispatch of `handle` was combined before (y is then never combine_input()),
  // so peers may still read this rank's pool for that combine when this one is issued.
  virtual void combine(const void* y, const HandleState& handle, void* out,
                       const CombineOptions& options, bool repeat) = 0;
  virtual void synchronize() = 0;

  // Low-latency mode, one phase per call; Communicator orders the phases of each buffer
  // (send, then receive; dispatch, then combine). The dispatch send returns the views of the
  // buffer's outputs (its handle is filled in by Communicator).
  virtual LowLatencyDispatchResult ll_dispatch_send(const LowLatencyDispatchInputs& in,
                                                    int buffer) = 0;
  virtual void ll_dispatch_receive(int buffer) = 0;
  virtual void ll_combine_send(const LowLatencyCombineArgs& args, int buffer) = 0;
  virtual void ll_combine_receive(int buffer) = 0;
  // Rank masks (Communicator::low_latency_update_mask): rank already checked.
  virtual void ll_update_mask(int rank, bool masked) = 0;
  virtual void ll_query_mask(int32_t* mask_out) = 0;
  virtual void ll_clean_mask() = 0;
};

std::unique_ptr<CommBackend> make_host_backend(std::shared_ptr<Bootstrap> bootstrap,
                                               const Config& config);
// Defined only in builds with CUDA; Communicator reports kUnsupported otherwise.
std::unique_ptr<CommBackend> make_cuda_backend(std::shared_ptr<Bootstrap> bootstrap,
                                               const Config& config, int device);

}  // namespace epcomm::detail
