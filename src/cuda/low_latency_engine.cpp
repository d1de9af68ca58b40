// LowLatencyEngine: allocation, the checks that keep its waiting kernels from deadlocking, and
// the launches of each phase on the caller's stream.
#include "low_latency_engine.hpp"

#include <algorithm>
#include <limits>

#include "cuda_check.hpp"
#include "kernels/launch.hpp"

namespace epcomm::cuda {
namespace {

constexpr size_t kDefaultSharedLimit = 48 * 1024;

template <typename T>
T* device_alloc(size_t count) {
  T* p = nullptr;
  EPCOMM_CUDA_CHECK(cudaMalloc(&p, sizeof(T) * (count ? count : 1)));
  return p;
}

// Blocks of an LL kernel given `sms` SMs: one per SM, at most `work`.
int ll_blocks(int sms, int work = std::numeric_limits<int>::max()) {
  return std::max(1, std::min(work, sms));
}

// The receive kernels wait inside their grids. A rank runs one LL kernel at a time (its stream
// orders them) of at most max(dispatch_sms, combine_sms) blocks, and each block takes a whole
// SM; so when the in-process ranks' grids together take no more SMs than the GPU has, every
// rank's current kernel is resident at once, and no waiting grid can keep a peer's send from
// running. Two 512-thread blocks per SM, resident only where blocks of different kernels share
// an SM, deadlocked on the H100 (docs/perf.md). Only ranks of this process are counted (as for
// the ring).
void check_residency(const Config& config, int sharing, int device) {
  int sms = 0;
  EPCOMM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int widest = std::max(config.dispatch_sms, config.combine_sms);
  const int needed = sharing * ll_blocks(widest);
  if (kernels::ll_blocks_per_sm() < 1 || needed > sms) {
    throw Error(
        ErrorCode::kUnsupported,
        "low-latency mode: " + std::to_string(sharing) + " ranks on GPU " + std::to_string(device) +
            " with max(dispatch_sms, combine_sms) = " + std::to_string(widest) + " need " +
            std::to_string(needed) + " resident blocks of " + std::to_string(kernels::kLlThreads) +
            " threads, one per SM, more than the GPU's " + std::to_string(sms) + " SMs");
  }
}

}  // namespace

LowLatencyEngine::LowLatencyEngine(Bootstrap& bootstrap, const Config& config, int device,
                                   int sharing, const WaitContext& wait, int ranks_per_domain)
    : config_(config),
      rank_(bootstrap.rank()),
      num_ranks_(bootstrap.size()),
      experts_per_rank_(config.experts_per_rank(num_ranks_)),
      wait_(wait),
      ranks_per_domain_(ranks_per_domain) {
  check_residency(config_, sharing, device);
  if (kernels::ll_send_shared_bytes(config_.num_experts, num_ranks_) > kDefaultSharedLimit ||
      kernels::ll_recv_shared_bytes(experts_per_rank_, num_ranks_) > kDefaultSharedLimit) {
    throw Error(ErrorCode::kUnsupported,
                "low-latency mode: num_experts = " + std::to_string(config_.num_experts) +
                    " with " + std::to_string(num_ranks_) +
                    " ranks needs more than 48 KB of shared memory per block");
  }
  const int M = config_.ll_max_tokens_per_rank;
  const bool across = ranks_per_domain_ < num_ranks_;
  layout_ = LowLatencyLayout::make(num_ranks_, experts_per_rank_, M, config_.max_topk,
                                   config_.hidden, across);
  d_counters_ = device_alloc<LowLatencyCounters>(1);
  d_mask_ = device_alloc<int32_t>(num_ranks_);
  d_verdicts_ = device_alloc<uint32_t>(4 * static_cast<size_t>(num_ranks_));
  EPCOMM_CUDA_CHECK(cudaMemset(d_mask_, 0, sizeof(int32_t) * num_ranks_));
  EPCOMM_CUDA_CHECK(cudaMemset(d_verdicts_, 0, sizeof(uint32_t) * 4 * num_ranks_));
  LowLatencyCounters start{};
  start.round[0] = start.round[1] = config_.sequence_start;
  EPCOMM_CUDA_CHECK(cudaMemcpy(d_counters_, &start, sizeof(start), cudaMemcpyHostToDevice));
  const size_t rows = static_cast<size_t>(experts_per_rank_) * layout_.rows_per_expert();
  for (BufferCall& call : calls_) {
    call.outputs.recv_x = device_alloc<char>(rows * 2 * config_.hidden);
    call.outputs.recv_scales = device_alloc<float>(rows * (config_.hidden / kFp8ScaleBlock));
    call.outputs.recv_scale_codes = reinterpret_cast<uint8_t*>(call.outputs.recv_scales);
    call.outputs.recv_count = device_alloc<int>(experts_per_rank_);
    call.outputs.recv_src = device_alloc<int32_t>(rows * 3);
    call.outputs.layout_range =
        device_alloc<int>(static_cast<size_t>(experts_per_rank_) * num_ranks_ * 2);
    call.rows_from = device_alloc<uint32_t>(num_ranks_);
    call.dispatch_topk = device_alloc<int64_t>(static_cast<size_t>(M) * config_.max_topk);
    EPCOMM_CUDA_CHECK(cudaMemset(call.rows_from, 0, sizeof(uint32_t) * num_ranks_));
    if (across) {
      call.remote_messages =
          device_alloc<nvshmem::LlRemoteMessage>(static_cast<size_t>(M) * config_.max_topk);
      call.remote_words =
          device_alloc<uint64_t>(static_cast<size_t>(config_.num_experts) + num_ranks_);
    }
  }
  EPCOMM_CUDA_CHECK(cudaDeviceSynchronize());
  domain_ = std::make_unique<MemoryDomain>(bootstrap, device, layout_.total_bytes(),
                                           config_.transport, ranks_per_domain_);
  if (across) module_ = NvshmemModule::load(*domain_->heap());
}

LowLatencyEngine::~LowLatencyEngine() {
  module_.reset();
  domain_.reset();  // the backend has synchronized and passed a barrier with every peer
  for (BufferCall& call : calls_) {
    cudaFree(call.outputs.recv_x);
    cudaFree(call.outputs.recv_scales);
    cudaFree(call.outputs.recv_count);
    cudaFree(call.outputs.recv_src);
    cudaFree(call.outputs.layout_range);
    cudaFree(call.rows_from);
    cudaFree(call.dispatch_topk);
    cudaFree(call.remote_messages);
    cudaFree(call.remote_words);
  }
  cudaFree(d_counters_);
  cudaFree(d_mask_);
  cudaFree(d_verdicts_);
}

LowLatencyParams LowLatencyEngine::params(int buffer, bool combine) const {
  const BufferCall& call = calls_[buffer];
  LowLatencyParams p{};
  p.layout = layout_;
  p.peers = domain_->device_peers();
  p.rank = rank_;
  p.num_ranks = num_ranks_;
  p.experts_per_rank = experts_per_rank_;
  p.num_experts = config_.num_experts;
  p.num_tokens = call.in.num_tokens;
  p.num_topk = call.in.num_topk;
  p.hidden = config_.hidden;
  p.buffer = buffer;
  p.use_fp8 = call.in.use_fp8;
  p.round_scale = call.in.round_scale;
  p.use_ue8m0 = call.in.use_ue8m0;
  p.x = static_cast<const uint16_t*>(call.in.x);
  // The combine reads the ids its dispatch saved (int64), and checks the ones it was given.
  const bool caller_int64 = config_.index_type == IndexType::kInt64;
  p.topk_idx = combine ? call.dispatch_topk : call.in.topk_idx;
  p.idx_int64 = combine || caller_int64;
  p.dispatch_topk = call.dispatch_topk;
  p.combine_topk = call.combine.topk_idx;
  p.combine_topk_int64 = caller_int64;
  p.topk_weights = call.combine.topk_weights;
  p.y = static_cast<const uint16_t*>(call.combine.y);
  p.out = static_cast<uint16_t*>(call.combine.out);
  p.recv = call.outputs;
  p.rows_from = call.rows_from;
  p.counters = d_counters_;
  p.wait = wait_;
  p.mask = d_mask_;
  p.shrink = config_.ll_enable_shrink;
  p.verdicts = d_verdicts_ + (static_cast<size_t>(buffer) * 2 + (combine ? 1 : 0)) * num_ranks_;
  p.wait_cost_stats = combine ? call.combine.wait_cost_stats : call.in.wait_cost_stats;
  p.ranks_per_domain = ranks_per_domain_;
  p.remote_messages = call.remote_messages;
  p.remote_words = call.remote_words == nullptr
                       ? nullptr
                       : call.remote_words + (combine ? config_.num_experts : 0);
  return p;
}

nvshmem::LlPuts LowLatencyEngine::puts(const LowLatencyParams& p, bool combine) const {
  nvshmem::LlPuts a{};
  a.layout = layout_;
  a.region = domain_->local();
  a.rank = rank_;
  a.buffer = p.buffer;
  a.experts_per_rank = experts_per_rank_;
  a.fp8 = p.use_fp8;
  a.messages = p.remote_messages;
  a.num_messages = combine ? 0 : p.num_tokens * p.num_topk;
  a.recv_count = p.recv.recv_count;
  a.recv_src = p.recv.recv_src;
  a.layout_range = p.recv.layout_range;
  a.words = p.remote_words;
  a.num_words = combine ? num_ranks_ : config_.num_experts;
  a.blocks_done = &d_counters_->blocks_done[p.buffer][combine ? kLlCombinePuts : kLlDispatchPuts];
  a.failed = &wait_.state->failed;
  return a;
}

LowLatencyDispatchResult LowLatencyEngine::dispatch_send(const LowLatencyDispatchInputs& in,
                                                         int buffer, cudaStream_t stream) {
  BufferCall& call = calls_[buffer];
  call.in = in;
  call.combine = {};
  const LowLatencyParams p = params(buffer, false);
  kernels::launch_ll_dispatch_send(p, ll_blocks(config_.dispatch_sms, in.num_tokens), stream);
  EPCOMM_LAUNCH_CHECK("ll_dispatch_send_kernel");
  if (module_) module_->ll_puts(puts(p, false), false, ll_blocks(config_.dispatch_sms), stream);
  LowLatencyDispatchResult r;
  r.recv_x = call.outputs.recv_x;
  r.recv_scales = in.use_fp8 && !in.use_ue8m0 ? call.outputs.recv_scales : nullptr;
  r.recv_scale_codes = in.use_ue8m0 ? call.outputs.recv_scale_codes : nullptr;
  r.recv_count = call.outputs.recv_count;
  r.recv_src = reinterpret_cast<LowLatencySource*>(call.outputs.recv_src);
  r.layout_range = call.outputs.layout_range;
  r.rows_per_expert = static_cast<int>(layout_.rows_per_expert());
  return r;
}

void LowLatencyEngine::dispatch_receive(int buffer, cudaStream_t stream) {
  kernels::launch_ll_dispatch_recv(params(buffer, false), ll_blocks(config_.dispatch_sms), stream);
  EPCOMM_LAUNCH_CHECK("ll_dispatch_recv_kernel");
}

void LowLatencyEngine::combine_send(const detail::LowLatencyCombineArgs& args, int buffer,
                                    cudaStream_t stream) {
  calls_[buffer].combine = args;
  const LowLatencyParams p = params(buffer, true);
  kernels::launch_ll_combine_send(p, ll_blocks(config_.combine_sms), stream);
  EPCOMM_LAUNCH_CHECK("ll_combine_send_kernel");
  if (module_) module_->ll_puts(puts(p, true), true, ll_blocks(config_.combine_sms), stream);
}

void LowLatencyEngine::combine_receive(int buffer, cudaStream_t stream) {
  kernels::launch_ll_combine_recv(
      params(buffer, true), ll_blocks(config_.combine_sms, calls_[buffer].in.num_tokens), stream);
  EPCOMM_LAUNCH_CHECK("ll_combine_recv_kernel");
}

void LowLatencyEngine::update_mask(int rank, bool masked, cudaStream_t stream) {
  // The word becomes 0, then its low byte 1 when masked (little-endian): two capturable memsets.
  EPCOMM_CUDA_CHECK(cudaMemsetAsync(d_mask_ + rank, 0, sizeof(int32_t), stream));
  if (masked) EPCOMM_CUDA_CHECK(cudaMemsetAsync(d_mask_ + rank, 1, 1, stream));
}

void LowLatencyEngine::query_mask(int32_t* mask_out, cudaStream_t stream) {
  EPCOMM_CUDA_CHECK(
      cudaMemcpyAsync(mask_out, d_mask_, sizeof(int32_t) * num_ranks_, cudaMemcpyDefault, stream));
}

void LowLatencyEngine::clean_mask(cudaStream_t stream) {
  EPCOMM_CUDA_CHECK(cudaMemsetAsync(d_mask_, 0, sizeof(int32_t) * num_ranks_, stream));
}

}  // namespace epcomm::cuda
