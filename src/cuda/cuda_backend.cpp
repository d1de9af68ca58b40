// CudaBackend: allocates the region and local state, and issues the kernels of each call on
// one stream in the order of DESIGN sections 5 and 6.
#include "cuda_backend.hpp"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <vector>

#include "creation_checks.hpp"
#include "cuda_check.hpp"
#include "device_errors.hpp"
#include "kernels/launch.hpp"

namespace epcomm::cuda {
namespace {

constexpr size_t kDefaultSharedLimit = 48 * 1024;

int resolve_device(int device) {
  if (device >= 0) return device;
  int current = 0;
  EPCOMM_CUDA_CHECK(cudaGetDevice(&current));
  return current;
}

template <typename T>
T* device_alloc(size_t count) {
  T* p = nullptr;
  EPCOMM_CUDA_CHECK(cudaMalloc(&p, sizeof(T) * (count ? count : 1)));
  return p;
}

}  // namespace

CudaBackend::CudaBackend(std::shared_ptr<Bootstrap> bootstrap, const Config& config, int device)
    : bootstrap_(std::move(bootstrap)),
      config_(config),
      num_ranks_(bootstrap_->size()),
      rank_(bootstrap_->rank()),
      experts_per_rank_(config.experts_per_rank(num_ranks_)),
      device_(resolve_device(device)),
      timeout_ns_(static_cast<uint64_t>(config.wait_timeout_ms) * 1000000ull) {
  EPCOMM_CUDA_CHECK(cudaSetDevice(device_));
  if (num_ranks_ > kMaxCudaRanks) {
    throw Error(ErrorCode::kUnsupported, "the CUDA backend supports up to " +
                                             std::to_string(kMaxCudaRanks) + " ranks, not " +
                                             std::to_string(num_ranks_));
  }
  check_transport(config_, *bootstrap_);
  const int sharing = ranks_sharing_device(*bootstrap_, device_);
  check_hardware_queues(sharing, device_);
  int sms = 0;
  EPCOMM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device_));
  check_sms("dispatch_sms", config_.dispatch_sms, sms, device_);
  check_sms("combine_sms", config_.combine_sms, sms, device_);
  EPCOMM_CUDA_CHECK(kernels::load_all_kernels());
  check_ring(config_, num_ranks_, sharing, device_, sms);
  if (kernels::layout_shared_bytes(config_.num_experts, num_ranks_) > kDefaultSharedLimit ||
      kernels::notify_shared_bytes(num_ranks_, experts_per_rank_) > kDefaultSharedLimit) {
    throw Error(ErrorCode::kUnsupported, "num_experts = " + std::to_string(config_.num_experts) +
                                             " with " + std::to_string(num_ranks_) +
                                             " ranks needs more shared memory than 48 KB");
  }
  layout_ = RegionLayout::make(num_ranks_, experts_per_rank_, config_.recv_capacity(num_ranks_),
                               config_.row_bytes(), static_cast<size_t>(config_.hidden) * 2,
                               config_.max_topk, config_.num_scales(), ring_channels(config_),
                               config_.ring_slots);

  EPCOMM_CUDA_CHECK(cudaStreamCreateWithFlags(&own_stream_, cudaStreamNonBlocking));
  stream_ = own_stream_;
  EPCOMM_CUDA_CHECK(cudaEventCreateWithFlags(&counts_known_, cudaEventDisableTiming));
  d_state_ = device_alloc<DeviceState>(1);
  EPCOMM_CUDA_CHECK(cudaMemset(d_state_, 0, sizeof(DeviceState)));
  EPCOMM_CUDA_CHECK(cudaHostAlloc(&h_mapped_, sizeof(MappedHostState), cudaHostAllocMapped));
  std::memset(h_mapped_, 0, sizeof(MappedHostState));
  EPCOMM_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&d_mapped_), h_mapped_, 0));

  const int chunks = (config_.max_tokens_per_rank + kLayoutChunkTokens - 1) / kLayoutChunkTokens;
  const size_t cap = static_cast<size_t>(layout_.capacity);
  d_chunk_counts_ = device_alloc<int>(static_cast<size_t>(chunks) * num_ranks_);
  d_expert_counts_ = device_alloc<int>(config_.num_experts);
  d_chunk_expert_counts_ = device_alloc<int>(static_cast<size_t>(chunks) * config_.num_experts);
  d_pair_matrix_ = device_alloc<int>(static_cast<size_t>(num_ranks_) * config_.num_experts);
  d_group_rows_ = device_alloc<int>(config_.num_experts);
  d_recv_topk_slot_ = device_alloc<int32_t>(cap);
  d_recv_weight_ = device_alloc<float>(cap);
  d_recv_topk_idx_ = device_alloc<char>(cap * config_.max_topk * index_bytes(config_.index_type));
  d_recv_topk_weights_ = device_alloc<float>(cap * config_.max_topk);
  d_recv_src_ = device_alloc<RecvSource>(cap);
  d_recv_scales_ = device_alloc<float>(cap * config_.num_scales());
  d_num_recv_per_expert_ = device_alloc<int>(experts_per_rank_);
  const size_t ring_counters = static_cast<size_t>(layout_.ring.channels) * num_ranks_;
  d_ring_sent_ = device_alloc<uint64_t>(ring_counters);
  d_ring_received_ = device_alloc<uint64_t>(ring_counters);
  EPCOMM_CUDA_CHECK(
      cudaMemset(d_ring_sent_, 0, sizeof(uint64_t) * std::max<size_t>(ring_counters, 1)));
  EPCOMM_CUDA_CHECK(
      cudaMemset(d_ring_received_, 0, sizeof(uint64_t) * std::max<size_t>(ring_counters, 1)));
  routing_pool_ =
      std::make_shared<RoutingPool>(device_, config_.max_tokens_per_rank, config_.max_topk,
                                    num_ranks_, experts_per_rank_, layout_.ring.channels, 2);
  // The stream gets its first kernel now, before the barriers that end creation: no peer's
  // kernel waits yet (kernels/stream_prime.cu; the routing pool primes its own stream).
  prime_stream(own_stream_);
  EPCOMM_CUDA_CHECK(cudaDeviceSynchronize());
  domain_ = std::make_unique<MemoryDomain>(*bootstrap_, device_, layout_.total_bytes,
                                           config_.transport, config_.ranks_per_domain);
  int shared_optin = 0;
  EPCOMM_CUDA_CHECK(
      cudaDeviceGetAttribute(&shared_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device_));
  bulk_send_ = domain_->bulk_copies() && kernels::flat_send_shared_bytes(num_ranks_, true) <=
                                             static_cast<size_t>(shared_optin);
  start_sequences();
  if (domain_->ranks_per_domain() < num_ranks_) {
    domains_ = std::make_unique<DomainPaths>(*bootstrap_, config_, device_, layout_, *domain_,
                                             wait_context());
  }
  if (config_.ll_max_tokens_per_rank > 0) {
    ll_ = std::make_unique<LowLatencyEngine>(*bootstrap_, config_, device_, sharing, wait_context(),
                                             domain_->ranks_per_domain());
  }
}

// NOTE: after the region's creation barrier, yet safe: a peer raises ready[] here only in a
// combine, after a count exchange that needs this rank's first count row, which this rank
// posts after these synchronous copies.
void CudaBackend::start_sequences() {
  const uint64_t start = config_.sequence_start;
  if (start == 0) return;  // the region and the state are zeroed already
  EPCOMM_CUDA_CHECK(cudaMemcpy(&d_state_->epoch, &start, sizeof(start), cudaMemcpyHostToDevice));
  EPCOMM_CUDA_CHECK(
      cudaMemcpy(&d_state_->combine_seq, &start, sizeof(start), cudaMemcpyHostToDevice));
  const std::vector<uint64_t> ready(num_ranks_, start);
  EPCOMM_CUDA_CHECK(cudaMemcpy(layout_.ready(domain_->local()), ready.data(),
                               sizeof(uint64_t) * ready.size(), cudaMemcpyHostToDevice));
}

std::vector<detail::MemoryRange> CudaBackend::shared_memory() const {
  std::vector<detail::MemoryRange> ranges{{domain_->local(), domain_->bytes()}};
  if (ll_) ranges.push_back(ll_->shared_memory());
  return ranges;
}

void CudaBackend::check_dispatch_issuable(const DispatchOptions& options, bool cached) {
  check_across_domains(cached ? "dispatch_cached" : "dispatch", config_, options,
                       domain_->ranks_per_domain(), num_ranks_);
  if (options.layout == RecvLayout::kExpertMajor && config_.algorithm == Algorithm::kRing) {
    throw Error(ErrorCode::kUnsupported,
                std::string(cached ? "dispatch_cached" : "dispatch") +
                    ": DispatchOptions.layout = expert_major is built for Config.algorithm = "
                    "flat; the ring baseline delivers token-major rows only");
  }
  EPCOMM_CUDA_CHECK(cudaSetDevice(device_));
  check_not_capturing_exact(options, cached ? "dispatch_cached" : "dispatch");
  if (!cached) routing_pool_->check_acquirable(stream_);
}

CudaBackend::~CudaBackend() {
  cudaSetDevice(device_);
  if (cudaStreamSynchronize(stream_) != cudaSuccess) {
    std::fprintf(stderr, "epcomm: rank %d: stream failed during teardown\n", rank_);
  }
  try {
    bootstrap_->barrier();  // no peer may still be writing into or reading from our region
  } catch (const std::exception& e) {
    std::fprintf(stderr, "epcomm: rank %d: teardown barrier failed: %s\n", rank_, e.what());
  }
  ll_.reset();
  domains_.reset();
  domain_.reset();
  cudaFree(d_chunk_counts_);
  cudaFree(d_expert_counts_);
  cudaFree(d_chunk_expert_counts_);
  cudaFree(d_pair_matrix_);
  cudaFree(d_group_rows_);
  cudaFree(d_recv_topk_slot_);
  cudaFree(d_recv_weight_);
  cudaFree(d_recv_topk_idx_);
  cudaFree(d_recv_topk_weights_);
  cudaFree(d_recv_src_);
  cudaFree(d_recv_scales_);
  cudaFree(d_num_recv_per_expert_);
  cudaFree(d_ring_sent_);
  cudaFree(d_ring_received_);
  cudaFree(d_state_);
  cudaFreeHost(h_mapped_);
  cudaEventDestroy(counts_known_);
  cudaStreamDestroy(own_stream_);
}

void CudaBackend::set_stream(Stream stream) {
  EPCOMM_CUDA_CHECK(cudaSetDevice(device_));
  cudaStream_t next = stream ? reinterpret_cast<cudaStream_t>(stream) : own_stream_;
  if (next == stream_) return;
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  EPCOMM_CUDA_CHECK(cudaStreamIsCapturing(next, &capturing));
  if (capturing == cudaStreamCaptureStatusNone && next != own_stream_ &&
      std::find(primed_.begin(), primed_.end(), next) == primed_.end()) {
    // A stream's first kernel may be held back while a peer's kernel waits: run it now, while
    // this rank waits for nobody (the caller sets streams before the collectives that use them).
    prime_stream(next);
    EPCOMM_CUDA_CHECK(cudaStreamSynchronize(next));
    // The latest few: a program that makes a stream per step would grow the list forever;
    // a stream forgotten and set again is only primed again.
    if (primed_.size() == kPrimedStreams) primed_.erase(primed_.begin());
    primed_.push_back(next);
  }
  // The new stream starts after everything issued so far (routing buffers are reused in order).
  cudaEvent_t done;
  EPCOMM_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  EPCOMM_CUDA_CHECK(cudaEventRecord(done, stream_));
  EPCOMM_CUDA_CHECK(cudaStreamWaitEvent(next, done, 0));
  EPCOMM_CUDA_CHECK(cudaEventDestroy(done));
  stream_ = next;
}

void CudaBackend::prime_stream(cudaStream_t stream) {
  kernels::launch_stream_prime(stream);
  EPCOMM_LAUNCH_CHECK("stream_prime_kernel");
}

WaitContext CudaBackend::wait_context() const {
  return WaitContext{d_state_, error_sink(), timeout_ns_, rank_};
}

ErrorSink CudaBackend::error_sink() const {
  return ErrorSink{&d_state_->error_claimed, &d_mapped_->record};
}

void CudaBackend::raise_device_error() {
  // The stream (or event) the caller synchronised on ordered the device's writes before this.
  std::atomic_thread_fence(std::memory_order_acquire);
  ErrorRecord rec;
  std::memcpy(&rec, &h_mapped_->record, sizeof(rec));
  if (rec.code == kDevNone) return;
  std::memset(&h_mapped_->record, 0, sizeof(ErrorRecord));
  // Later work in the stream may record again.
  EPCOMM_CUDA_CHECK(cudaMemsetAsync(&d_state_->error_claimed, 0, sizeof(int32_t), stream_));
  throw error_from_record(rec, config_.wait_timeout_ms);
}

// The low-latency calls never wait on the host, so without a synchronize a failed round would
// go unnoticed: each call first looks at the mapped error record and throws what it holds if
// that breaks the communicator (a timeout, or a peer's round, count or fp8 flag that does not
// match: the errors that stop this rank's kernels). The record is then left as it is: no CUDA
// call, so this is safe while capturing. A bad expert id leaves the rank working and waits for
// synchronize, so that every rank keeps issuing the same calls.
void CudaBackend::raise_posted_failure() {
  if (*reinterpret_cast<const volatile int32_t*>(&h_mapped_->record.code) == kDevNone) return;
  std::atomic_thread_fence(std::memory_order_acquire);  // the writer stored the code last
  ErrorRecord rec;
  std::memcpy(&rec, &h_mapped_->record, sizeof(rec));
  const Error error = error_from_record(rec, config_.wait_timeout_ms);
  if (error.code() == ErrorCode::kTimeout || error.code() == ErrorCode::kBroken) throw error;
}

void CudaBackend::synchronize() {
  EPCOMM_CUDA_CHECK(cudaSetDevice(device_));
  EPCOMM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  raise_device_error();
}

void CudaBackend::check_not_capturing_exact(const DispatchOptions& options, const char* caller) {
  if (!options.wait_num_recv) return;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  EPCOMM_CUDA_CHECK(cudaStreamIsCapturing(stream_, &status));
  if (status != cudaStreamCaptureStatusNone) {
    throw Error(ErrorCode::kInvalidArgument,
                std::string(caller) +
                    ": wait_num_recv = true blocks the host, which a captured stream cannot do");
  }
}

void CudaBackend::get_dispatch_layout(const void* topk_idx, int num_tokens, int num_topk,
                                      const LayoutOutputs& out) {
  EPCOMM_CUDA_CHECK(cudaSetDevice(device_));
  EPCOMM_CUDA_CHECK(cudaMemsetAsync(out.num_tokens_per_rank, 0, sizeof(int) * num_ranks_, stream_));
  EPCOMM_CUDA_CHECK(
      cudaMemsetAsync(out.num_tokens_per_expert, 0, sizeof(int) * config_.num_experts, stream_));
  LayoutParams p = layout_params(topk_idx, num_tokens, num_topk);
  p.expert_counts = out.num_tokens_per_expert;
  p.tokens_per_rank = out.num_tokens_per_rank;
  p.is_token_in_rank = out.is_token_in_rank;
  kernels::launch_layout(p, stream_);
  EPCOMM_LAUNCH_CHECK("layout_kernel");
  synchronize();
}

CudaBackend::OutputPointers CudaBackend::outputs_for(const DispatchOutputs& o) const {
  OutputPointers p;
  p.recv_x = o.recv_x;
  p.recv_scales = config_.num_scales() ? (o.recv_scales ? o.recv_scales : d_recv_scales_) : nullptr;
  p.recv_topk_idx = o.recv_topk_idx ? o.recv_topk_idx : d_recv_topk_idx_;
  p.recv_topk_weights = o.recv_topk_weights ? o.recv_topk_weights : d_recv_topk_weights_;
  p.recv_src = o.recv_src ? o.recv_src : d_recv_src_;
  p.num_recv_per_expert = o.num_recv_per_expert ? o.num_recv_per_expert : d_num_recv_per_expert_;
  return p;
}

DispatchResult CudaBackend::dispatch(const DispatchInputs& in, const DispatchOptions& options,
                                     uint64_t comm_id, uint64_t epoch) {
  EPCOMM_CUDA_CHECK(cudaSetDevice(device_));
  auto handle = std::make_shared<CudaHandle>();
  handle->comm_id = comm_id;
  handle->epoch = epoch;
  handle->num_tokens = in.num_tokens;
  handle->num_topk = in.num_topk;
  handle->expert_major = options.layout == RecvLayout::kExpertMajor;
  handle->has_weights = in.topk_weights != nullptr;
  handle->routing = routing_pool_->acquire(stream_);
  const Routing& routing = handle->routing->tables;
  const OutputPointers outs = outputs_for(options.outputs);

  // 1. Layout: positions within chunks, per-chunk and per-expert counts (of tokens per
  // destination, or expert-major of pairs per expert).
  EPCOMM_CUDA_CHECK(
      cudaMemsetAsync(d_expert_counts_, 0, sizeof(int) * config_.num_experts, stream_));
  LayoutParams lp = layout_params(in.topk_idx, in.num_tokens, in.num_topk);
  lp.expert_counts = d_expert_counts_;
  lp.invalid_flag = &d_state_->invalid_input;
  if (handle->expert_major) {
    lp.pair_pos = routing.pair_row;
    lp.chunk_expert_counts = d_chunk_expert_counts_;
    kernels::launch_pair_layout(lp, stream_);
    EPCOMM_LAUNCH_CHECK("pair_layout_kernel");
  } else {
    lp.slot = routing.slot;
    lp.chunk_counts = d_chunk_counts_;
    kernels::launch_layout(lp, stream_);
    EPCOMM_LAUNCH_CHECK("layout_kernel");
  }

  // 2-3. Count exchange (the pool-reuse barrier) and final slots.
  NotifyParams np = notify_params(*handle, options);
  np.cached = false;
  np.chunk_counts = d_chunk_counts_;
  np.num_chunks = (in.num_tokens + kLayoutChunkTokens - 1) / kLayoutChunkTokens;
  np.expert_counts = d_expert_counts_;
  np.num_recv_per_expert = outs.num_recv_per_expert;
  np.expert_alignment = config_.expert_alignment;
  if (handle->expert_major && options.expert_alignment > 0) {
    np.expert_alignment = options.expert_alignment;
  }
  np.chunk_expert_counts = d_chunk_expert_counts_;
  exchange_counts(np);
  if (options.wait_num_recv) EPCOMM_CUDA_CHECK(cudaEventRecord(counts_known_, stream_));

  send_and_receive(*handle, in.x, in.x_scales, &in, outs);
  return finish_dispatch(std::move(handle), options, outs, true);
}

DispatchResult CudaBackend::dispatch_cached(const detail::HandleState& handle_state, const void* x,
                                            const float* x_scales, const DispatchOptions& options,
                                            uint64_t comm_id, uint64_t epoch) {
  EPCOMM_CUDA_CHECK(cudaSetDevice(device_));
  const auto& old = static_cast<const CudaHandle&>(handle_state);
  auto handle = std::make_shared<CudaHandle>(old);
  handle->comm_id = comm_id;
  handle->epoch = epoch;
  const OutputPointers outs = outputs_for(options.outputs);

  NotifyParams np = notify_params(*handle, options);
  np.cached = true;
  np.handle_epoch = old.epoch;
  exchange_counts(np);
  if (options.wait_num_recv) EPCOMM_CUDA_CHECK(cudaEventRecord(counts_known_, stream_));

  send_and_receive(*handle, x, x_scales, nullptr, outs);
  return finish_dispatch(std::move(handle), options, outs, false);
}

void CudaBackend::exchange_counts(NotifyParams p) {
  if (!domains_) {
    p.phase = kNotifyAll;
    kernels::launch_notify(p, stream_);
    EPCOMM_LAUNCH_CHECK("notify_kernel");
    return;
  }
  p.domains = domains_->params();
  p.phase = kNotifyPost;
  kernels::launch_notify(p, stream_);
  EPCOMM_LAUNCH_CHECK("notify_kernel (post)");
  domains_->exchange_counts(stream_);
  p.phase = kNotifyCollect;
  kernels::launch_notify(p, stream_);
  EPCOMM_LAUNCH_CHECK("notify_kernel (collect)");
}

DomainKernelParams CudaBackend::domain_kernel_params(const CudaHandle& handle) const {
  DomainKernelParams p{};
  p.layout = layout_;
  p.peers = domain_->device_peers();
  p.domains = domains_->params();
  p.rank = rank_;
  p.num_ranks = num_ranks_;
  p.experts_per_rank = experts_per_rank_;
  p.num_topk = handle.num_topk;
  p.num_tokens = handle.num_tokens;
  p.hidden = config_.hidden;
  p.slot = handle.routing->tables.slot;
  p.wait = wait_context();
  return p;
}

void CudaBackend::send_and_receive(const CudaHandle& handle, const void* x, const float* x_scales,
                                   const DispatchInputs* fresh, const OutputPointers& outs) {
  const Routing& routing = handle.routing->tables;
  SendParams sp{};
  sp.layout = layout_;
  sp.peers = domain_->device_peers();
  sp.rank = rank_;
  sp.num_ranks = num_ranks_;
  sp.experts_per_rank = experts_per_rank_;
  sp.num_tokens = handle.num_tokens;
  sp.num_topk = handle.num_topk;
  sp.cached = fresh == nullptr;
  sp.x = x;
  sp.x_scales = x_scales;
  sp.topk_idx = fresh ? fresh->topk_idx : nullptr;
  sp.idx_int64 = config_.index_type == IndexType::kInt64;
  sp.topk_weights = fresh ? fresh->topk_weights : nullptr;
  sp.slot = routing.slot;
  sp.chunk_offsets = fresh ? d_chunk_counts_ : nullptr;
  sp.state = d_state_;
  sp.expert_major = handle.expert_major;
  sp.routing = routing;
  sp.chunk_expert_offsets = fresh ? d_chunk_expert_counts_ : nullptr;
  sp.bulk = bulk_send_;
  if (domains_) sp.domains = domains_->params();
  if (config_.algorithm == Algorithm::kRing) {
    RingParams rp = ring_params(handle);
    rp.cached = sp.cached;
    rp.x = x;
    rp.x_scales = x_scales;
    rp.topk_idx = sp.topk_idx;
    rp.idx_int64 = sp.idx_int64;
    rp.topk_weights = sp.topk_weights;
    rp.chunk_offsets = sp.chunk_offsets;
    kernels::launch_ring_dispatch(rp, stream_);
    EPCOMM_LAUNCH_CHECK("ring_dispatch_kernel");
  } else {
    kernels::launch_flat_send(sp, config_.dispatch_sms, stream_);
    EPCOMM_LAUNCH_CHECK("flat_send_kernel");
    if (domains_) {
      DomainKernelParams kp = domain_kernel_params(handle);
      kp.cached = sp.cached;
      domains_->forward(kp, config_.dispatch_sms, stream_);
    }
    ArrivalWaitParams wp{layout_, domain_->local(), num_ranks_, wait_context()};
    kernels::launch_wait_arrivals(wp, stream_);
    EPCOMM_LAUNCH_CHECK("wait_arrivals_kernel");
  }

  if (fresh || outs.recv_scales || handle.expert_major) {  // expert-major: padding again
    DrainParams dp{};
    dp.layout = layout_;
    dp.local = domain_->local();
    dp.num_topk = handle.num_topk;
    dp.cached = fresh == nullptr;
    dp.num_recv = routing.num_recv;
    dp.recv_topk_idx = outs.recv_topk_idx;
    dp.idx_int64 = sp.idx_int64;
    dp.recv_topk_weights = outs.recv_topk_weights;
    dp.recv_src = reinterpret_cast<int*>(outs.recv_src);
    dp.recv_scales = outs.recv_scales;
    dp.state = d_state_;
    dp.expert_major = handle.expert_major;
    dp.experts_per_rank = experts_per_rank_;
    dp.expert_offsets = routing.expert_offsets;
    dp.group_pairs = routing.group_pairs;
    dp.recv_topk_slot = d_recv_topk_slot_;
    dp.recv_weight = d_recv_weight_;
    kernels::launch_drain(dp, config_.dispatch_sms, stream_);
    EPCOMM_LAUNCH_CHECK("drain_kernel");
  }
  if (outs.recv_x) {
    copy_rows(layout_.row(domain_->local(), 0), static_cast<char*>(outs.recv_x), layout_.row_bytes,
              routing.num_recv, config_.dispatch_sms);
  }
}

DispatchResult CudaBackend::finish_dispatch(std::shared_ptr<CudaHandle> handle,
                                            const DispatchOptions& options,
                                            const OutputPointers& outs, bool with_meta) {
  DispatchResult r;
  if (options.wait_num_recv) {
    EPCOMM_CUDA_CHECK(cudaEventSynchronize(counts_known_));
    raise_device_error();
    handle->num_recv = *const_cast<const volatile int*>(&h_mapped_->num_recv);
  } else {
    handle->num_recv = with_meta ? -1 : handle->num_recv;
  }
  r.num_recv = options.wait_num_recv ? handle->num_recv : -1;
  r.num_recv_device = handle->routing->tables.num_recv;
  r.recv_x = outs.recv_x ? outs.recv_x : layout_.row(domain_->local(), 0);
  r.recv_scales = outs.recv_scales;
  if (with_meta) {
    const bool em = handle->expert_major;
    r.recv_topk_idx = em ? nullptr : outs.recv_topk_idx;
    r.recv_topk_weights = em ? nullptr : outs.recv_topk_weights;
    r.recv_src = outs.recv_src;
    r.num_recv_per_expert = outs.num_recv_per_expert;
    if (em) {
      r.recv_topk_slot = d_recv_topk_slot_;
      r.recv_weight = d_recv_weight_;
      r.expert_offsets = handle->routing->tables.expert_offsets;
    }
  }
  r.handle = DispatchHandle(std::move(handle));
  return r;
}

LayoutParams CudaBackend::layout_params(const void* topk_idx, int num_tokens, int num_topk) const {
  LayoutParams p{};
  p.topk_idx = topk_idx;
  p.idx_int64 = config_.index_type == IndexType::kInt64;
  p.num_tokens = num_tokens;
  p.num_topk = num_topk;
  p.num_experts = config_.num_experts;
  p.num_ranks = num_ranks_;
  p.experts_per_rank = experts_per_rank_;
  p.errors = error_sink();
  p.rank = rank_;
  return p;
}

NotifyParams CudaBackend::notify_params(const CudaHandle& handle,
                                        const DispatchOptions& options) const {
  NotifyParams p{};
  p.layout = layout_;
  p.peers = domain_->device_peers();
  p.rank = rank_;
  p.num_ranks = num_ranks_;
  p.experts_per_rank = experts_per_rank_;
  p.num_topk = handle.num_topk;
  p.routing = handle.routing->tables;
  p.mapped_num_recv = options.wait_num_recv ? &d_mapped_->num_recv : nullptr;
  p.wait = wait_context();
  p.expert_major = handle.expert_major;
  p.pair_matrix = d_pair_matrix_;
  p.group_rows = d_group_rows_;
  return p;
}

void CudaBackend::copy_rows(const char* src, char* dst, size_t row_bytes, const int* num_rows,
                            int num_blocks) {
  RowCopyParams p{};
  p.src = src;
  p.dst = dst;
  p.src_stride = p.dst_stride = p.row_bytes = row_bytes;
  p.num_rows = num_rows;
  p.state = d_state_;
  kernels::launch_copy_rows(p, num_blocks, stream_);
  EPCOMM_LAUNCH_CHECK("copy_rows_kernel");
}

RingParams CudaBackend::ring_params(const CudaHandle& handle) const {
  RingParams p{};
  p.layout = layout_;
  p.peers = domain_->device_peers();
  p.rank = rank_;
  p.num_ranks = num_ranks_;
  p.experts_per_rank = experts_per_rank_;
  p.num_tokens = handle.num_tokens;
  p.num_topk = handle.num_topk;
  p.num_chunks = (handle.num_tokens + kLayoutChunkTokens - 1) / kLayoutChunkTokens;
  p.hidden = config_.hidden;
  p.chunk_rows = config_.ring_chunk;
  p.slot = handle.routing->tables.slot;
  p.routing = handle.routing->tables;
  p.sent = d_ring_sent_;
  p.received = d_ring_received_;
  p.wait = wait_context();
  return p;
}

void CudaBackend::combine(const void* y, const detail::HandleState& handle_state, void* out,
                          const CombineOptions& options, bool repeat) {
  EPCOMM_CUDA_CHECK(cudaSetDevice(device_));
  const auto& handle = static_cast<const CudaHandle&>(handle_state);
  const Routing& routing = handle.routing->tables;
  char* pool = layout_.combine_row(domain_->local(), 0);
  const CombineReadyParams ready{layout_, domain_->device_peers(), rank_, num_ranks_,
                                 wait_context()};
  // NOTE: peers gather the previous combine of this dispatch from this pool; a ready round
  // first proves they all finished (each raises it after its gather, in stream order). A first
  // combine needs none: the dispatch's count exchange proved every earlier gather done.
  if (repeat && config_.algorithm == Algorithm::kFlat) {
    kernels::launch_combine_ready(ready, stream_);
    EPCOMM_LAUNCH_CHECK("combine_ready_kernel (pool free)");
  }
  if (y != pool) {
    copy_rows(static_cast<const char*>(y), pool, layout_.combine_row_bytes, routing.num_recv,
              config_.combine_sms);
  }
  if (config_.algorithm == Algorithm::kRing) {
    RingParams ring = ring_params(handle);
    ring.out = static_cast<uint16_t*>(out);
    ring.bias = static_cast<const uint16_t*>(options.bias);
    ring.bias2 = static_cast<const uint16_t*>(options.bias2);
    kernels::launch_ring_combine(ring, stream_);
    EPCOMM_LAUNCH_CHECK("ring_combine_kernel");
    return;
  }
  kernels::launch_combine_ready(ready, stream_);
  EPCOMM_LAUNCH_CHECK("combine_ready_kernel");
  if (domains_) {
    DomainKernelParams kp = domain_kernel_params(handle);
    kp.out = static_cast<uint16_t*>(out);
    kp.bias = static_cast<const uint16_t*>(options.bias);
    kp.bias2 = static_cast<const uint16_t*>(options.bias2);
    domains_->combine(kp, config_.combine_sms, stream_);
    return;
  }
  GatherParams gp{};
  gp.layout = layout_;
  gp.peers = domain_->device_peers();
  gp.num_ranks = num_ranks_;
  gp.num_tokens = handle.num_tokens;
  gp.hidden = config_.hidden;
  gp.slot = routing.slot;
  gp.out = static_cast<uint16_t*>(out);
  gp.bias = static_cast<const uint16_t*>(options.bias);
  gp.bias2 = static_cast<const uint16_t*>(options.bias2);
  gp.state = d_state_;
  gp.expert_major = handle.expert_major;
  gp.apply_weights = options.apply_weights;
  gp.num_topk = handle.num_topk;
  gp.routing = routing;
  kernels::launch_gather(gp, config_.combine_sms, stream_);
  EPCOMM_LAUNCH_CHECK("gather_kernel");
}

}  // namespace epcomm::cuda

namespace epcomm::detail {
std::unique_ptr<CommBackend> make_cuda_backend(std::shared_ptr<Bootstrap> bootstrap,
                                               const Config& config, int device) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    throw Error(ErrorCode::kUnsupported, "the CUDA backend needs a GPU and none is present");
  }
  return std::make_unique<cuda::CudaBackend>(std::move(bootstrap), config, device);
}
}  // namespace epcomm::detail
