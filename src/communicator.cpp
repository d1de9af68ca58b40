// Communicator: argument checks common to every backend, epochs, handle checks, forwarding.
#include "epcomm/communicator.hpp"

#include <atomic>
#include <sstream>

#include "backend.hpp"

namespace epcomm {
namespace {

std::atomic<uint64_t> g_next_comm_id{1};

[[noreturn]] void invalid(const char* caller, const std::string& what) {
  throw Error(ErrorCode::kInvalidArgument, std::string(caller) + ": " + what);
}

std::string value_of(const char* name, long long value) {
  std::ostringstream os;
  os << name << " = " << value;
  return os.str();
}

void check_tokens_and_topk(const char* caller, const Config& config, int num_tokens,
                           int num_topk) {
  if (num_tokens < 0 || num_tokens > config.max_tokens_per_rank) {
    invalid(caller, value_of("num_tokens", num_tokens) + " is outside [0, max_tokens_per_rank = " +
                        std::to_string(config.max_tokens_per_rank) + "]");
  }
  if (num_topk < 1 || num_topk > config.max_topk) {
    invalid(caller, value_of("num_topk", num_topk) + " is outside [1, max_topk = " +
                        std::to_string(config.max_topk) + "]");
  }
}

void check_scales(const char* caller, const Config& config, const float* x_scales,
                  int scales_per_token, int num_tokens) {
  if (config.dtype == DType::kBF16) {
    if (x_scales != nullptr) invalid(caller, "x_scales is given but Config.dtype is bf16");
    return;
  }
  if (x_scales == nullptr && num_tokens > 0) invalid(caller, "x_scales is null but dtype is fp8");
  if (scales_per_token >= 0 && scales_per_token != config.num_scales()) {
    invalid(caller, value_of("scales_per_token", scales_per_token) + " but fp8 rows of hidden " +
                        std::to_string(config.hidden) + " need " +
                        std::to_string(config.num_scales()));
  }
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
  if (!bootstrap) invalid("Communicator::create", "bootstrap is null");
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
      id_(g_next_comm_id.fetch_add(1)) {}

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
  if (!handle.valid()) invalid(caller, "handle is empty");
  if (handle.state()->comm_id != id_) {
    throw Error(ErrorCode::kStaleHandle,
                std::string(caller) + ": handle comes from another communicator (id " +
                    std::to_string(handle.state()->comm_id) + ", this is " +
                    std::to_string(id_) + ")");
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
  if (topk_idx == nullptr && num_tokens > 0) invalid(caller, "topk_idx is null");
  if (!out.num_tokens_per_rank) invalid(caller, "out.num_tokens_per_rank is null");
  if (!out.num_tokens_per_expert) invalid(caller, "out.num_tokens_per_expert is null");
  if (!out.is_token_in_rank && num_tokens > 0) invalid(caller, "out.is_token_in_rank is null");
  guarded(broken_, [&] { impl_->get_dispatch_layout(topk_idx, num_tokens, num_topk, out); });
}

DispatchResult Communicator::dispatch(const DispatchInputs& in, const DispatchOptions& options) {
  const char* caller = "dispatch";
  check_usable();
  check_tokens_and_topk(caller, config_, in.num_tokens, in.num_topk);
  if (in.num_tokens > 0) {
    if (in.x == nullptr) invalid(caller, "x is null");
    if (in.topk_idx == nullptr) invalid(caller, "topk_idx is null");
  }
  check_scales(caller, config_, in.x_scales, in.scales_per_token, in.num_tokens);
  const uint64_t epoch = ++epoch_;
  return guarded(broken_, [&] { return impl_->dispatch(in, options, id_, epoch); });
}

DispatchResult Communicator::dispatch_cached(const DispatchHandle& handle, const void* x,
                                             const float* x_scales,
                                             const DispatchOptions& options) {
  const char* caller = "dispatch_cached";
  check_usable();
  check_handle(handle, caller);
  if (x == nullptr && handle.num_tokens() > 0) invalid(caller, "x is null");
  check_scales(caller, config_, x_scales, -1, handle.num_tokens());
  const uint64_t epoch = ++epoch_;
  return guarded(broken_, [&] {
    return impl_->dispatch_cached(*handle.state(), x, x_scales, options, id_, epoch);
  });
}

void Communicator::combine(const void* y, const DispatchHandle& handle, void* out) {
  const char* caller = "combine";
  check_usable();
  check_handle(handle, caller);
  if (handle.epoch() != epoch_) {
    throw Error(ErrorCode::kStaleHandle,
                "combine: handle is from dispatch #" + std::to_string(handle.epoch()) +
                    " but the latest dispatch on this communicator is #" +
                    std::to_string(epoch_) + "; its received rows are overwritten");
  }
  if (y == nullptr && handle.num_recv() != 0) invalid(caller, "y is null");
  if (out == nullptr && handle.num_tokens() > 0) invalid(caller, "out is null");
  guarded(broken_, [&] { impl_->combine(y, *handle.state(), out); });
}

LowLatencyDispatchResult Communicator::low_latency_dispatch(const LowLatencyDispatchInputs& in,
                                                           bool send_only) {
  const char* caller = "low_latency_dispatch";
  check_usable();
  const int M = config_.ll_max_tokens_per_rank;
  if (M == 0) invalid(caller, "Config.ll_max_tokens_per_rank is 0: the low-latency mode is off");
  if (in.num_tokens < 0 || in.num_tokens > M) {
    invalid(caller, value_of("num_tokens", in.num_tokens) +
                        " is outside [0, ll_max_tokens_per_rank = " + std::to_string(M) + "]");
  }
  if (in.num_topk < 1 || in.num_topk > config_.max_topk) {
    invalid(caller, value_of("num_topk", in.num_topk) + " is outside [1, max_topk = " +
                        std::to_string(config_.max_topk) + "]");
  }
  if (in.num_tokens > 0 && in.x == nullptr) invalid(caller, "x is null");
  if (in.num_tokens > 0 && in.topk_idx == nullptr) invalid(caller, "topk_idx is null");
  const uint64_t call = ll_calls_ + 1;
  const int buffer = static_cast<int>((call - 1) % 2);
  LowLatencyBuffer& slot = ll_buffers_[buffer];
  if (slot.phase != kLlIdle) {
    invalid(caller, "call #" + std::to_string(call) + " needs buffer " + std::to_string(buffer) +
                        ", which still holds dispatch #" + std::to_string(slot.call) +
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
  if (!handle.valid()) invalid(caller, "handle is empty");
  if (handle.state()->comm_id != id_) {
    throw Error(ErrorCode::kStaleHandle,
                std::string(caller) + ": handle comes from another communicator");
  }
  const LowLatencyBuffer& slot = ll_buffers_[handle.buffer()];
  if (slot.call != handle.call()) {
    throw Error(ErrorCode::kStaleHandle,
                std::string(caller) + ": handle is from low-latency dispatch #" +
                    std::to_string(handle.call()) + " but its buffer " +
                    std::to_string(handle.buffer()) + " now holds dispatch #" +
                    std::to_string(slot.call));
  }
  if (slot.phase != phase) {
    static const char* const kNames[] = {"finished (combined)", "sent, waiting for its receive",
                                         "dispatched, waiting for its combine",
                                         "combine sent, waiting for its receive"};
    throw Error(ErrorCode::kStaleHandle,
                std::string(caller) + ": low-latency dispatch #" + std::to_string(slot.call) +
                    " is " + kNames[slot.phase]);
  }
  return handle.buffer();
}

void Communicator::low_latency_combine(const void* y, const void* topk_idx,
                                       const float* topk_weights, const LowLatencyHandle& handle,
                                       void* out, bool send_only) {
  const char* caller = "low_latency_combine";
  check_usable();
  const int buffer = low_latency_buffer(handle, kLlDispatched, caller);
  if (y == nullptr) invalid(caller, "y is null");
  if (handle.num_tokens() > 0) {
    if (topk_idx == nullptr) invalid(caller, "topk_idx is null");
    if (topk_weights == nullptr) invalid(caller, "topk_weights is null");
    if (out == nullptr) invalid(caller, "out is null");
  }
  ll_buffers_[buffer].phase = kLlCombineSent;
  guarded(broken_, [&] {
    impl_->ll_combine_send(detail::LowLatencyCombineArgs{y, topk_idx, topk_weights, out}, buffer);
  });
  if (!send_only) {
    guarded(broken_, [&] { impl_->ll_combine_receive(buffer); });
    ll_buffers_[buffer].phase = kLlIdle;
  }
}

void Communicator::low_latency_receive(const LowLatencyHandle& handle) {
  const char* caller = "low_latency_receive";
  check_usable();
  if (!handle.valid()) invalid(caller, "handle is empty");
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

void Communicator::synchronize() {
  check_usable();
  guarded(broken_, [&] { impl_->synchronize(); });
}

}  // namespace epcomm
