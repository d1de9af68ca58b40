// The CUDA backend: flat all-sender dispatch and gather combine on one or more GPUs.
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <vector>

#include "../backend.hpp"
#include "domain_paths.hpp"
#include "low_latency_engine.hpp"
#include "memory_domain.hpp"
#include "region_layout.hpp"
#include "routing_pool.hpp"

namespace epcomm::cuda {

struct CudaHandle final : detail::HandleState {
  std::shared_ptr<RoutingBuffer> routing;
  int num_topk = 0;
};

// Host memory the device writes and the host reads: the error record and num_recv.
struct MappedHostState {
  ErrorRecord record;
  int num_recv;
};

class CudaBackend final : public detail::CommBackend {
 public:
  CudaBackend(std::shared_ptr<Bootstrap> bootstrap, const Config& config, int device);
  ~CudaBackend() override;

  int recv_capacity() const override { return layout_.capacity; }
  std::vector<detail::MemoryRange> shared_memory() const override;
  void set_stream(Stream stream) override;
  Stream stream() const override { return reinterpret_cast<Stream>(stream_); }
  void get_dispatch_layout(const void* topk_idx, int num_tokens, int num_topk,
                           const LayoutOutputs& out) override;
  void check_dispatch_issuable(const DispatchOptions& options, bool cached) override;
  DispatchResult dispatch(const DispatchInputs& in, const DispatchOptions& options,
                          uint64_t comm_id, uint64_t epoch) override;
  DispatchResult dispatch_cached(const detail::HandleState& handle, const void* x,
                                 const float* x_scales, const DispatchOptions& options,
                                 uint64_t comm_id, uint64_t epoch) override;
  void* combine_input() override { return layout_.combine_row(domain_->local(), 0); }
  void combine(const void* y, const detail::HandleState& handle, void* out,
               const CombineOptions& options, bool repeat) override;
  void synchronize() override;

  // Low-latency mode: forwarded to LowLatencyEngine on this backend's stream.
  LowLatencyDispatchResult ll_dispatch_send(const LowLatencyDispatchInputs& in,
                                            int buffer) override;
  void ll_dispatch_receive(int buffer) override;
  void ll_combine_send(const detail::LowLatencyCombineArgs& args, int buffer) override;
  void ll_combine_receive(int buffer) override;
  void ll_update_mask(int rank, bool masked) override;
  void ll_query_mask(int32_t* mask_out) override;
  void ll_clean_mask() override;

 private:
  // Outputs go to the caller's buffer where one is given, else to this backend's own.
  struct OutputPointers {
    void* recv_x;  // null: zero-copy view
    float* recv_scales;
    void* recv_topk_idx;
    float* recv_topk_weights;
    RecvSource* recv_src;
    int* num_recv_per_expert;
  };
  OutputPointers outputs_for(const DispatchOutputs& outs) const;
  WaitContext wait_context() const;
  ErrorSink error_sink() const;
  // Issues a stream's first kernel (an empty one): see kernels/stream_prime.cu.
  void prime_stream(cudaStream_t stream);
  // Sends rows (and meta), waits for arrivals, drains meta, copies recv_x when asked.
  void send_and_receive(const CudaHandle& handle, const void* x, const float* x_scales,
                        const DispatchInputs* fresh, const OutputPointers& outs);
  // Kernel parameters every call of that kind shares; callers add the rest.
  LayoutParams layout_params(const void* topk_idx, int num_tokens, int num_topk) const;
  NotifyParams notify_params(const CudaHandle& handle, const DispatchOptions& options) const;
  RingParams ring_params(const CudaHandle& handle) const;
  DomainKernelParams domain_kernel_params(const CudaHandle& handle) const;
  // The count exchange: one notify kernel, or across domains its post, the module's puts of
  // the rows for ranks outside the domain, and its collect.
  void exchange_counts(NotifyParams p);
  // Copies num_rows (a device count) rows of row_bytes, same stride on both sides.
  void copy_rows(const char* src, char* dst, size_t row_bytes, const int* num_rows, int num_blocks);
  DispatchResult finish_dispatch(std::shared_ptr<CudaHandle> handle, const DispatchOptions& opts,
                                 const OutputPointers& outs, bool with_meta);
  void check_not_capturing_exact(const DispatchOptions& options, const char* caller);
  // Config::sequence_start: the counters a sequence number is compared with start there.
  void start_sequences();
  // Throws the first error the device recorded since the last check, and clears it.
  void raise_device_error();
  // Throws a failure a kernel has posted (one that stops this rank's kernels), without a sync.
  void raise_posted_failure();

  std::shared_ptr<Bootstrap> bootstrap_;
  Config config_;
  int num_ranks_, rank_, experts_per_rank_, device_;
  uint64_t timeout_ns_;
  RegionLayout layout_;
  std::unique_ptr<MemoryDomain> domain_;
  bool bulk_send_ = false;  // flat send rows by bulk copies (SendParams::bulk)
  std::shared_ptr<RoutingPool> routing_pool_;
  cudaStream_t own_stream_ = nullptr;
  cudaStream_t stream_ = nullptr;
  static constexpr size_t kPrimedStreams = 64;
  std::vector<cudaStream_t> primed_;  // callers' streams set_stream has primed (the latest)
  cudaEvent_t counts_known_ = nullptr;
  DeviceState* d_state_ = nullptr;
  MappedHostState* h_mapped_ = nullptr;  // host view
  MappedHostState* d_mapped_ = nullptr;  // device view of the same memory
  int* d_chunk_counts_ = nullptr;        // [chunks][R]
  int* d_expert_counts_ = nullptr;       // [E]
  // Expert-major dispatch scratch (notify.cu) and default outputs.
  int* d_chunk_expert_counts_ = nullptr;  // [chunks][E]
  int* d_pair_matrix_ = nullptr;          // [R][E]
  int* d_group_rows_ = nullptr;           // [E]
  int32_t* d_recv_topk_slot_ = nullptr;   // [capacity]
  float* d_recv_weight_ = nullptr;        // [capacity]
  // Default outputs, sized for the receive capacity.
  void* d_recv_topk_idx_ = nullptr;
  float* d_recv_topk_weights_ = nullptr;
  RecvSource* d_recv_src_ = nullptr;
  float* d_recv_scales_ = nullptr;
  int* d_num_recv_per_expert_ = nullptr;
  uint64_t* d_ring_sent_ = nullptr;       // [channels][R] ring path: rows pushed per ring
  uint64_t* d_ring_received_ = nullptr;   // [channels][R] ring path: rows consumed per ring
  std::unique_ptr<LowLatencyEngine> ll_;  // only with Config::ll_max_tokens_per_rank > 0
  std::unique_ptr<DomainPaths> domains_;  // only when the region found smaller domains
};

}  // namespace epcomm::cuda
