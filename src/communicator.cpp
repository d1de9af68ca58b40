// Communicator: argument checks common to every backend, epochs, handle checks, forwarding.
#include "epcomm/communicator.hpp"

#include <atomic>
#include <string>

#include "backend.hpp"
#include "config_agreement.hpp"

namespace epcomm {
namespace {

using detail::check_scales;
using detail::check_tokens_and_topk;
using detail::invalid_argument;
using detail::PointerChecker;
using detail::value_of;

std::atomic<uint64_t> g_next_comm_id{1};

size_t bytes_of(long long count, size_t elem_bytes) {
  return count > 0 ? static_cast<size_t>(count) * elem_bytes : 0;
}

// Alignments of the element types (DESIGN section 13): rows move as 16-byte vectors.
constexpr size_t kRowAlign = 16, kWordAlign = 4;

size_t index_align(const Config& config) { return index_bytes(config.index_type); }

// The caller buffers a dispatch writes (each sized for the receive capacity) and the rows and
// scales it reads.
void check_dispatch_buffers(const PointerChecker& check, const Config& config, int capacity,
                            int num_ranks, int num_tokens, int num_topk, const void* x,
                            const float* x_scales, const DispatchOutputs& outs) {
  const size_t scale_bytes = sizeof(float) * config.num_scales();
  check.check("x", x, kRowAlign, bytes_of(num_tokens, config.row_bytes()));
  check.check("x_scales", x_scales, kWordAlign, bytes_of(num_tokens, scale_bytes));
  check.check("outputs.recv_x", outs.recv_x, kRowAlign, bytes_of(capacity, config.row_bytes()));
  check.check("outputs.recv_scales", outs.recv_scales, kWordAlign, bytes_of(capacity, scale_bytes));
  check.check("outputs.recv_topk_idx", outs.recv_topk_idx, index_align(config),
              bytes_of(capacity, num_topk * index_bytes(config.index_type)));
  check.check("outputs.recv_topk_weights", outs.recv_topk_weights, kWordAlign,
              bytes_of(capacity, num_topk * sizeof(float)));
  check.check("outputs.recv_src", outs.recv_src, kWordAlign,
              bytes_of(capacity, sizeof(RecvSource)));
  check.check("outputs.num_recv_per_expert", outs.num_recv_per_expert, kWordAlign,
              bytes_of(config.experts_per_rank(num_ranks), sizeof(int)));
}

// Where a low-latency buffer is in its round: dispatch (send, receive), then combine (send,
// receive). A buffer takes a new dispatch only when idle.
enum LowLatencyPhase {
  kLlIdle = 0,
  kLlDispatchSent = 1,  // send_only dispatch issued, receive pending
  kLlDispatched = 2,    // dispatch received, combine pending
  kLlCombineSent = 3,   // send_only combine issued, receive pending
};

}  // namespace

LowLatencyHandle::LowLatencyHandle(std::shared_ptr<const detail::LowLatencyState> state)
    : state_(std::move(state)) {}
uint64_t LowLatencyHandle::call() const { return state_ ? state_->call : 0; }
int LowLatencyHandle::buffer() const { return state_ ? state_->buffer : 0; }
int LowLatencyHandle::num_tokens() const { return state_ ? state_->num_tokens : 0; }
int LowLatencyHandle::num_topk() const { return state_ ? state_->num_topk : 0; }
bool LowLatencyHandle::use_fp8() const { return state_ && state_->use_fp8; }

DispatchHandle::DispatchHandle(std::shared_ptr<const detail::HandleState> state)
    : state_(std::move(state)) {}
int DispatchHandle::num_tokens() const { return state_ ? state_->num_tokens : 0; }
int DispatchHandle::num_recv() const { return state_ ? state_->num_recv : -1; }
uint64_t DispatchHandle::epoch() const { return state_ ? state_->epoch : 0; }

std::unique_ptr<Communicator> Communicator::create(std::shared_ptr<Bootstrap> bootstrap,
                                                   const Config& config, Backend backend,
                                                   int device) {
  if (!bootstrap) invalid_argument("Communicator::create", "bootstrap is null");
  // First, so that a mismatch (which may also make one rank's Config invalid) fails every rank.
  detail::agree_on_config(*bootstrap, config);
  config.validate(bootstrap->size());
  std::unique_ptr<detail::CommBackend> impl =
      backend == Backend::kHost ? detail::make_host_backend(bootstrap, config)
                                : detail::make_cuda_backend(bootstrap, config, device);
  return std::unique_ptr<Communicator>(
      new Communicator(std::move(bootstrap), config, backend, std::move(impl)));
}

Communicator::Communicator(std::shared_ptr<Bootstrap> bootstrap, const Config& config,
                           Backend backend, std::unique_ptr<detail::CommBackend> impl)
    : bootstrap_(std::move(bootstrap)),
      config_(config),
      backend_(backend),
      impl_(std::move(impl)),
      id_(g_next_comm_id.fetch_add(1)),
      epoch_(config.sequence_start),
      ll_calls_(config.sequence_start) {}

Communicator::~Communicator() = default;

int Communicator::rank() const { return bootstrap_->rank(); }
int Communicator::num_ranks() const { return bootstrap_->size(); }
Backend Communicator::backend() const { return backend_; }
const Config& Communicator::config() const { return config_; }
int Communicator::recv_capacity() const { return impl_->recv_capacity(); }
void Communicator::set_stream(Stream stream) { impl_->set_stream(stream); }
Stream Communicator::stream() const { return impl_->stream(); }
void* Communicator::combine_input() { return impl_->combine_input(); }

void Communicator::check_usable() const {
  if (broken_) {
    throw Error(ErrorCode::kBroken, "rank " + std::to_string(rank()) +
                                        ": an earlier timeout, bootstrap or CUDA failure left "
                                        "this communicator unusable");
  }
}

void Communicator::check_handle(const DispatchHandle& handle, const char* caller) const {
  if (!handle.valid()) invalid_argument(caller, "handle is empty");
  if (handle.state()->comm_id != id_) {
    throw Error(ErrorCode::kStaleHandle, std::string(caller) +
                                             ": handle comes from another communicator (id " +
                                             std::to_string(handle.state()->comm_id) +
                                             ", this is " + std::to_string(id_) + ")");
  }
}

// Runs a collective step; a timeout or bootstrap failure leaves peers in an unknown state.
template <typename Fn>
auto guarded(bool& broken, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const Error& e) {
    if (e.code() == ErrorCode::kTimeout || e.code() == ErrorCode::kBootstrap ||
        e.code() == ErrorCode::kCuda || e.code() == ErrorCode::kBroken) {
      broken = true;
    }
    throw;
  }
}

void Communicator::get_dispatch_layout(const void* topk_idx, int num_tokens, int num_topk,
                                       const LayoutOutputs& out) {
  const char* caller = "get_dispatch_layout";
  check_usable();
  check_tokens_and_topk(caller, config_, num_tokens, num_topk);
  if (topk_idx == nullptr && num_tokens > 0) invalid_argument(caller, "topk_idx is null");
  if (!out.num_tokens_per_rank) invalid_argument(caller, "out.num_tokens_per_rank is null");
  if (!out.num_tokens_per_expert) invalid_argument(caller, "out.num_tokens_per_expert is null");
  if (!out.is_token_in_rank && num_tokens > 0)
    invalid_argument(caller, "out.is_token_in_rank is null");
  const PointerChecker check(caller, impl_->shared_memory());
  check.check("topk_idx", topk_idx, index_align(config_),
              bytes_of(num_tokens, num_topk * index_bytes(config_.index_type)));
  check.check("out.num_tokens_per_rank", out.num_tokens_per_rank, kWordAlign,
              bytes_of(num_ranks(), sizeof(int)));
  check.check("out.num_tokens_per_expert", out.num_tokens_per_expert, kWordAlign,
              bytes_of(config_.num_experts, sizeof(int)));
  check.check("out.is_token_in_rank", out.is_token_in_rank, 1,
              bytes_of(num_tokens, num_ranks() * sizeof(bool)));
  guarded(broken_, [&] { impl_->get_dispatch_layout(topk_idx, num_tokens, num_topk, out); });
}

DispatchResult Communicator::dispatch(const DispatchInputs& in, const DispatchOptions& options) {
  const char* caller = "dispatch";
  check_usable();
  check_tokens_and_topk(caller, config_, in.num_tokens, in.num_topk);
  if (in.num_tokens > 0) {
    if (in.x == nullptr) invalid_argument(caller, "x is null");
    if (in.topk_idx == nullptr) invalid_argument(caller, "topk_idx is null");
  }
  check_scales(caller, config_, in.x_scales, in.scales_per_token, in.num_tokens);
  const PointerChecker check(caller, impl_->shared_memory());
  check_dispatch_buffers(check, config_, recv_capacity(), num_ranks(), in.num_tokens, in.num_topk,
                         in.x, in.x_scales, options.outputs);
  check.check("topk_idx", in.topk_idx, index_align(config_),
              bytes_of(in.num_tokens, in.num_topk * index_bytes(config_.index_type)));
  check.check("topk_weights", in.topk_weights, kWordAlign,
              bytes_of(in.num_tokens, in.num_topk * sizeof(float)));
  if (options.expert_alignment < 0) {
    invalid_argument(caller, value_of("options.expert_alignment", options.expert_alignment) +
                                 " must be 0 (Config.expert_alignment) or positive");
  }
  if (options.layout == RecvLayout::kExpertMajor &&
      (options.outputs.recv_topk_idx != nullptr || options.outputs.recv_topk_weights != nullptr)) {
    invalid_argument(caller,
                     "outputs.recv_topk_idx and recv_topk_weights are token-major outputs: with "
                     "layout = expert_major each row has recv_topk_slot and recv_weight instead");
  }
  guarded(broken_, [&] { impl_->check_dispatch_issuable(options, /*cached=*/false); });
  const uint64_t epoch = ++epoch_;
  combined_ = false;
  return guarded(broken_, [&] { return impl_->dispatch(in, options, id_, epoch); });
}

DispatchResult Communicator::dispatch_cached(const DispatchHandle& handle, const void* x,
                                             const float* x_scales,
                                             const DispatchOptions& options) {
  const char* caller = "dispatch_cached";
  check_usable();
  check_handle(handle, caller);
  if (x == nullptr && handle.num_tokens() > 0) invalid_argument(caller, "x is null");
  check_scales(caller, config_, x_scales, -1, handle.num_tokens());
  const PointerChecker check(caller, impl_->shared_memory());
  DispatchOutputs rows_only;  // a cached dispatch writes recv_x and recv_scales only
  rows_only.recv_x = options.outputs.recv_x;
  rows_only.recv_scales = options.outputs.recv_scales;
  check_dispatch_buffers(check, config_, recv_capacity(), num_ranks(), handle.num_tokens(), 1, x,
                         x_scales, rows_only);
  if ((options.layout == RecvLayout::kExpertMajor) != handle.state()->expert_major) {
    invalid_argument(caller, std::string("options.layout = ") + to_string(options.layout) +
                                 " but the handle's dispatch was " +
                                 to_string(handle.state()->expert_major ? RecvLayout::kExpertMajor
                                                                        : RecvLayout::kTokenMajor) +
                                 ": a cached dispatch keeps its handle's layout");
  }
  guarded(broken_, [&] { impl_->check_dispatch_issuable(options, /*cached=*/true); });
  const uint64_t epoch = ++epoch_;
  combined_ = false;
  return guarded(broken_, [&] {
    return impl_->dispatch_cached(*handle.state(), x, x_scales, options, id_, epoch);
  });
}

void Communicator::combine(const void* y, const DispatchHandle& handle, void* out,
                           const CombineOptions& options) {
  const char* caller = "combine";
  check_usable();
  check_handle(handle, caller);
  if (handle.epoch() != epoch_) {
    throw Error(ErrorCode::kStaleHandle,
                "combine: handle is from dispatch #" + std::to_string(handle.epoch()) +
                    " but the latest dispatch on this communicator is #" + std::to_string(epoch_) +
                    "; its received rows are overwritten");
  }
  if (y == nullptr && handle.num_recv() != 0) invalid_argument(caller, "y is null");
  if (out == nullptr && handle.num_tokens() > 0) invalid_argument(caller, "out is null");
  const bool zero_copy = y == combine_input();
  if (combined_ && zero_copy) {
    invalid_argument(caller,
                     "dispatch #" + std::to_string(epoch_) +
                         " was combined already and peers may still read that combine's rows in "
                         "this rank's pool: a repeated combine takes y from a buffer of its own, "
                         "not combine_input()");
  }
  const PointerChecker check(caller, impl_->shared_memory());
  // Worst-case mode leaves num_recv on the device, and y may hold no row at all: then only
  // its first byte is checked (a y that starts before the pool and runs into it goes unseen).
  const size_t row_bytes = 2 * static_cast<size_t>(config_.hidden);  // bf16
  const size_t y_bytes = handle.num_recv() >= 0 ? bytes_of(handle.num_recv(), row_bytes) : 1;
  if (zero_copy) {
    check.check_alignment("y", y, kRowAlign);
  } else {
    check.check("y", y, kRowAlign, y_bytes);
  }
  const size_t out_bytes = bytes_of(handle.num_tokens(), row_bytes);
  check.check("out", out, kRowAlign, out_bytes);
  if (options.apply_weights && !handle.state()->expert_major) {
    invalid_argument(caller,
                     "apply_weights = true needs an expert-major dispatch (a token-major "
                     "combine adds the rows as they come back)");
  }
  // A dispatch of no tokens has every weight it needs (an empty topk_weights may be null).
  if (options.apply_weights && !handle.state()->has_weights && handle.num_tokens() > 0) {
    invalid_argument(caller, "apply_weights = true, but the handle's dispatch had no topk_weights");
  }
  if (options.bias != nullptr) check.check("bias", options.bias, kRowAlign, out_bytes);
  if (options.bias2 != nullptr) check.check("bias2", options.bias2, kRowAlign, out_bytes);
  guarded(broken_, [&] { impl_->combine(y, *handle.state(), out, options, combined_); });
  combined_ = true;
}

LowLatencyDispatchResult Communicator::low_latency_dispatch(const LowLatencyDispatchInputs& in,
                                                            bool send_only) {
  const char* caller = "low_latency_dispatch";
  check_usable();
  const int M = config_.ll_max_tokens_per_rank, H = config_.hidden;
  if (M == 0)
    invalid_argument(caller, "Config.ll_max_tokens_per_rank is 0: the low-latency mode is off");
  if (in.num_tokens < 0 || in.num_tokens > M) {
    invalid_argument(caller, value_of("num_tokens", in.num_tokens) +
                                 " is outside [0, ll_max_tokens_per_rank = " + std::to_string(M) +
                                 "]");
  }
  if (in.num_topk < 1 || in.num_topk > config_.max_topk) {
    invalid_argument(caller, value_of("num_topk", in.num_topk) + " is outside [1, max_topk = " +
                                 std::to_string(config_.max_topk) + "]");
  }
  if (in.round_scale && !in.use_fp8) {
    invalid_argument(caller, "round_scale = true needs use_fp8 = true (it shapes the fp8 scales)");
  }
  if (in.use_ue8m0 && !in.round_scale) {
    invalid_argument(caller,
                     "use_ue8m0 = true needs round_scale = true (UE8M0 holds powers of two only)");
  }
  if (in.num_tokens > 0 && in.x == nullptr) invalid_argument(caller, "x is null");
  if (in.num_tokens > 0 && in.topk_idx == nullptr) invalid_argument(caller, "topk_idx is null");
  const PointerChecker check(caller, impl_->shared_memory());
  check.check("x", in.x, kRowAlign, bytes_of(in.num_tokens, 2 * static_cast<size_t>(H)));
  check.check("topk_idx", in.topk_idx, index_align(config_),
              bytes_of(in.num_tokens, in.num_topk * index_bytes(config_.index_type)));
  check.check("wait_cost_stats", in.wait_cost_stats, sizeof(int64_t),
              sizeof(int64_t) * static_cast<size_t>(num_ranks()));
  const uint64_t call = ll_calls_ + 1;
  const int buffer = static_cast<int>((call - 1) % 2);
  LowLatencyBuffer& slot = ll_buffers_[buffer];
  if (slot.phase != kLlIdle) {
    invalid_argument(caller, "call #" + std::to_string(call) + " needs buffer " +
                                 std::to_string(buffer) + ", which still holds dispatch #" +
                                 std::to_string(slot.call) +
                                 " whose combine has not been issued to the end; at most two "
                                 "low-latency calls may be in flight");
  }
  ll_calls_ = call;
  auto state = std::make_shared<detail::LowLatencyState>();
  state->comm_id = id_;
  state->call = call;
  state->buffer = buffer;
  state->num_tokens = in.num_tokens;
  state->num_topk = in.num_topk;
  state->use_fp8 = in.use_fp8;
  const LowLatencyBuffer before = slot;
  slot.call = call;
  slot.phase = kLlDispatchSent;
  try {
    LowLatencyDispatchResult result =
        guarded(broken_, [&] { return impl_->ll_dispatch_send(in, buffer); });
    result.handle = LowLatencyHandle(std::move(state));
    if (!send_only) {
      guarded(broken_, [&] { impl_->ll_dispatch_receive(buffer); });
      slot.phase = kLlDispatched;
    }
    return result;
  } catch (const Error&) {
    // A rejected input (the host reference rejects on every rank at once) leaves the buffer as
    // it was, so the ranks stay in step; anything worse has marked the communicator broken.
    slot = before;
    ll_calls_ = call - 1;
    throw;
  }
}

int Communicator::low_latency_buffer(const LowLatencyHandle& handle, int phase,
                                     const char* caller) const {
  if (!handle.valid()) invalid_argument(caller, "handle is empty");
  if (handle.state()->comm_id != id_) {
    throw Error(ErrorCode::kStaleHandle,
                std::string(caller) + ": handle comes from another communicator");
  }
  const LowLatencyBuffer& slot = ll_buffers_[handle.buffer()];
  if (slot.call != handle.call()) {
    throw Error(ErrorCode::kStaleHandle, std::string(caller) +
                                             ": handle is from low-latency dispatch #" +
                                             std::to_string(handle.call()) + " but its buffer " +
                                             std::to_string(handle.buffer()) +
                                             " now holds dispatch #" + std::to_string(slot.call));
  }
  if (slot.phase != phase) {
    static const char* const kNames[] = {"finished (combined)", "sent, waiting for its receive",
                                         "dispatched, waiting for its combine",
                                         "combine sent, waiting for its receive"};
    throw Error(ErrorCode::kStaleHandle, std::string(caller) + ": low-latency dispatch #" +
                                             std::to_string(slot.call) + " is " +
                                             kNames[slot.phase]);
  }
  return handle.buffer();
}

void Communicator::low_latency_combine(const void* y, const void* topk_idx,
                                       const float* topk_weights, const LowLatencyHandle& handle,
                                       void* out, bool send_only,
                                       const LowLatencyCombineOptions& options) {
  const char* caller = "low_latency_combine";
  check_usable();
  const int buffer = low_latency_buffer(handle, kLlDispatched, caller);
  if (y == nullptr) invalid_argument(caller, "y is null");
  if (handle.num_tokens() > 0) {
    if (topk_idx == nullptr) invalid_argument(caller, "topk_idx is null");
    if (topk_weights == nullptr) invalid_argument(caller, "topk_weights is null");
    if (out == nullptr) invalid_argument(caller, "out is null");
  }
  const PointerChecker check(caller, impl_->shared_memory());
  const int T = handle.num_tokens(), K = handle.num_topk();
  const size_t row_bytes = 2 * static_cast<size_t>(config_.hidden);
  const size_t y_rows = static_cast<size_t>(config_.num_experts) * config_.ll_max_tokens_per_rank;
  check.check("y", y, kRowAlign, y_rows * row_bytes);  // [Le][R * M] rows
  check.check("topk_idx", topk_idx, index_align(config_),
              bytes_of(T, K * index_bytes(config_.index_type)));
  check.check("topk_weights", topk_weights, kWordAlign, bytes_of(T, K * sizeof(float)));
  check.check("out", out, kRowAlign, bytes_of(T, row_bytes));
  check.check("wait_cost_stats", options.wait_cost_stats, sizeof(int64_t),
              sizeof(int64_t) * static_cast<size_t>(num_ranks()));
  ll_buffers_[buffer].phase = kLlCombineSent;
  guarded(broken_, [&] {
    impl_->ll_combine_send(
        detail::LowLatencyCombineArgs{y, topk_idx, topk_weights, out, options.wait_cost_stats},
        buffer);
  });
  if (!send_only) {
    guarded(broken_, [&] { impl_->ll_combine_receive(buffer); });
    ll_buffers_[buffer].phase = kLlIdle;
  }
}

void Communicator::low_latency_receive(const LowLatencyHandle& handle) {
  const char* caller = "low_latency_receive";
  check_usable();
  if (!handle.valid()) invalid_argument(caller, "handle is empty");
  const int phase = ll_buffers_[handle.buffer()].phase;
  const int buffer = low_latency_buffer(
      handle, phase == kLlCombineSent ? kLlCombineSent : kLlDispatchSent, caller);
  if (phase == kLlCombineSent) {
    guarded(broken_, [&] { impl_->ll_combine_receive(buffer); });
    ll_buffers_[buffer].phase = kLlIdle;
  } else {
    try {
      guarded(broken_, [&] { impl_->ll_dispatch_receive(buffer); });
    } catch (const Error&) {
      ll_buffers_[buffer].phase = kLlIdle;  // rejected on every rank alike: the buffer is free
      throw;
    }
    ll_buffers_[buffer].phase = kLlDispatched;
  }
}

void Communicator::low_latency_update_mask(int rank, bool masked) {
  const char* caller = "low_latency_update_mask";
  check_usable();
  if (config_.ll_max_tokens_per_rank == 0)
    invalid_argument(caller, "Config.ll_max_tokens_per_rank is 0: the low-latency mode is off");
  if (rank < 0 || rank >= num_ranks()) {
    invalid_argument(
        caller, value_of("rank", rank) + " is outside [0, " + std::to_string(num_ranks()) + ")");
  }
  guarded(broken_, [&] { impl_->ll_update_mask(rank, masked); });
}

void Communicator::low_latency_query_mask(int32_t* mask_out) {
  const char* caller = "low_latency_query_mask";
  check_usable();
  if (config_.ll_max_tokens_per_rank == 0)
    invalid_argument(caller, "Config.ll_max_tokens_per_rank is 0: the low-latency mode is off");
  if (mask_out == nullptr) invalid_argument(caller, "mask_out is null");
  const PointerChecker check(caller, impl_->shared_memory());
  check.check("mask_out", mask_out, sizeof(int32_t),
              sizeof(int32_t) * static_cast<size_t>(num_ranks()));
  guarded(broken_, [&] { impl_->ll_query_mask(mask_out); });
}

void Communicator::low_latency_clean_mask() {
  const char* caller = "low_latency_clean_mask";
  check_usable();
  if (config_.ll_max_tokens_per_rank == 0)
    invalid_argument(caller, "Config.ll_max_tokens_per_rank is 0: the low-latency mode is off");
  guarded(broken_, [&] { impl_->ll_clean_mask(); });
}

void Communicator::synchronize() {
  check_usable();
  guarded(broken_, [&] { impl_->synchronize(); });
}

}  // namespace epcomm
