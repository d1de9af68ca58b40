// Host reference backend. Plain loops over every rank's inputs, in the order the contract
// states: rows by source rank ascending, then source token ascending; combine sums in fp32 over
// destination ranks ascending and rounds once to bf16.
#include "host_backend.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include "combine_order.hpp"
#include "message_stream.hpp"
#include "numeric.hpp"

namespace epcomm::host {
namespace {

// What every rank tells the others at the start of a collective call.
struct Status {
  int32_t failed = 0;    // the rank's local check threw
  int32_t num_topk = 0;  // K of this dispatch; all ranks must agree
  uint64_t epoch = 0;    // dispatch_cached: the handle's epoch; all ranks must agree
};

std::string expert_error(const void* topk_idx, bool is_int64, int num_tokens, int num_topk,
                         int num_experts) {
  for (int t = 0; t < num_tokens; ++t) {
    for (int k = 0; k < num_topk; ++k) {
      const int64_t e = read_index(topk_idx, is_int64, static_cast<size_t>(t) * num_topk + k);
      if (e < -1 || e >= num_experts) {
        epcomm::detail::MessageStream os;
        os << "topk_idx[" << t << "][" << k << "] = " << e << " is outside [-1, " << num_experts
           << ")";
        return os.str();
      }
    }
  }
  return {};
}

}  // namespace

HostBackend::HostBackend(std::shared_ptr<Bootstrap> bootstrap, const Config& config)
    : bootstrap_(std::move(bootstrap)),
      config_(config),
      num_ranks_(bootstrap_->size()),
      rank_(bootstrap_->rank()),
      experts_per_rank_(config.experts_per_rank(num_ranks_)),
      capacity_(config.recv_capacity(num_ranks_)) {
  if (!bootstrap_->in_process()) {
    throw Error(ErrorCode::kUnsupported,
                "the host backend needs ranks that are threads of one process");
  }
  const size_t rows = static_cast<size_t>(capacity_);
  pool_.assign(rows * config_.hidden * 2, 0);
  recv_scales_.assign(rows * config_.num_scales(), 0.f);
  recv_topk_idx_.assign(rows * config_.max_topk * index_bytes(config_.index_type), 0);
  recv_topk_weights_.assign(rows * config_.max_topk, 0.f);
  recv_src_.assign(rows, RecvSource{0, 0});
  num_recv_per_expert_.assign(experts_per_rank_, 0);
  recv_topk_slot_.assign(rows, -1);
  recv_weight_.assign(rows, 0.f);
  expert_offsets_.assign(experts_per_rank_ + 1, 0);
  ll_mask_.assign(num_ranks_, 0);

  HostBackend* self = this;
  peers_.resize(num_ranks_);
  bootstrap_->allGather(&self, peers_.data(), sizeof(self));
}

bool HostBackend::token_goes_to(const DispatchInputs& in, int token, int dest) const {
  const bool is_int64 = config_.index_type == IndexType::kInt64;
  for (int k = 0; k < in.num_topk; ++k) {
    const int64_t e =
        read_index(in.topk_idx, is_int64, static_cast<size_t>(token) * in.num_topk + k);
    if (e >= 0 && e / experts_per_rank_ == dest) return true;
  }
  return false;
}

int HostBackend::count_tokens_to(const DispatchInputs& in, int dest) const {
  int n = 0;
  for (int t = 0; t < in.num_tokens; ++t) n += token_goes_to(in, t, dest) ? 1 : 0;
  return n;
}

void HostBackend::agree_or_throw(ErrorCode code, const std::string& local_error) {
  Status mine;
  mine.failed = local_error.empty() ? 0 : 1;
  mine.num_topk = published_.in.num_topk;
  mine.epoch = published_.handle ? published_.handle->epoch : 0;
  std::vector<Status> all(num_ranks_);
  bootstrap_->allGather(&mine, all.data(), sizeof(Status));
  if (!local_error.empty()) throw Error(code, "rank " + std::to_string(rank_) + ": " + local_error);
  for (int s = 0; s < num_ranks_; ++s) {
    if (all[s].failed) {
      throw Error(code, "rank " + std::to_string(rank_) + ": peer rank " + std::to_string(s) +
                            " rejected its input, so no rank dispatched");
    }
    if (all[s].num_topk != mine.num_topk || all[s].epoch != mine.epoch) {
      epcomm::detail::MessageStream os;
      os << "rank " << rank_ << " has num_topk " << mine.num_topk << " and handle epoch "
         << mine.epoch << ", rank " << s << " has " << all[s].num_topk << " and " << all[s].epoch
         << ": every rank must dispatch alike";
      throw Error(
          all[s].epoch != mine.epoch ? ErrorCode::kStaleHandle : ErrorCode::kInvalidArgument,
          os.str());
    }
  }
}

void HostBackend::get_dispatch_layout(const void* topk_idx, int num_tokens, int num_topk,
                                      const LayoutOutputs& out) {
  const bool is_int64 = config_.index_type == IndexType::kInt64;
  const std::string bad =
      expert_error(topk_idx, is_int64, num_tokens, num_topk, config_.num_experts);
  if (!bad.empty()) throw Error(ErrorCode::kInvalidExpert, "get_dispatch_layout: " + bad);
  std::fill(out.num_tokens_per_rank, out.num_tokens_per_rank + num_ranks_, 0);
  std::fill(out.num_tokens_per_expert, out.num_tokens_per_expert + config_.num_experts, 0);
  for (int t = 0; t < num_tokens; ++t) {
    bool* in_rank = out.is_token_in_rank + static_cast<size_t>(t) * num_ranks_;
    std::fill(in_rank, in_rank + num_ranks_, false);
    for (int k = 0; k < num_topk; ++k) {
      const int64_t e = read_index(topk_idx, is_int64, static_cast<size_t>(t) * num_topk + k);
      if (e < 0) continue;
      ++out.num_tokens_per_expert[e];
      in_rank[e / experts_per_rank_] = true;
    }
    for (int d = 0; d < num_ranks_; ++d) out.num_tokens_per_rank[d] += in_rank[d] ? 1 : 0;
  }
}

// Copies token `token` of a peer's published input into received row `row` of this rank.
void HostBackend::copy_row(const Published& from, int token, int row, const DispatchOutputs& outs) {
  const size_t row_bytes = config_.row_bytes();
  auto* x_dst = static_cast<unsigned char*>(outs.recv_x ? outs.recv_x : pool_.data());
  std::memcpy(x_dst + row * row_bytes,
              static_cast<const unsigned char*>(from.in.x) + token * row_bytes, row_bytes);
  const int num_scales = config_.num_scales();
  if (num_scales > 0) {
    float* scales_dst = outs.recv_scales ? outs.recv_scales : recv_scales_.data();
    std::memcpy(scales_dst + static_cast<size_t>(row) * num_scales,
                from.in.x_scales + static_cast<size_t>(token) * num_scales,
                num_scales * sizeof(float));
  }
}

DispatchResult HostBackend::result_views(const DispatchOutputs& outs, bool with_meta) {
  DispatchResult r;
  r.num_recv = num_recv_;
  r.recv_x = outs.recv_x ? outs.recv_x : pool_.data();
  if (config_.num_scales() > 0)
    r.recv_scales = outs.recv_scales ? outs.recv_scales : recv_scales_.data();
  if (!with_meta) return r;
  r.recv_topk_idx = outs.recv_topk_idx ? outs.recv_topk_idx : recv_topk_idx_.data();
  r.recv_topk_weights = outs.recv_topk_weights ? outs.recv_topk_weights : recv_topk_weights_.data();
  r.recv_src = outs.recv_src ? outs.recv_src : recv_src_.data();
  r.num_recv_per_expert =
      outs.num_recv_per_expert ? outs.num_recv_per_expert : num_recv_per_expert_.data();
  return r;
}

std::shared_ptr<HostHandle> HostBackend::new_handle(const DispatchInputs& in,
                                                    const DispatchOptions& options,
                                                    uint64_t comm_id, uint64_t epoch) const {
  auto handle = std::make_shared<HostHandle>();
  handle->comm_id = comm_id;
  handle->epoch = epoch;
  handle->num_tokens = in.num_tokens;
  handle->num_recv = options.wait_num_recv ? num_recv_ : -1;
  handle->rows = num_recv_;
  handle->has_weights = in.topk_weights != nullptr;
  return handle;
}

DispatchResult HostBackend::dispatch(const DispatchInputs& in, const DispatchOptions& options,
                                     uint64_t comm_id, uint64_t epoch) {
  const bool is_int64 = config_.index_type == IndexType::kInt64;
  published_ = Published{in, nullptr};
  agree_or_throw(ErrorCode::kInvalidExpert, expert_error(in.topk_idx, is_int64, in.num_tokens,
                                                         in.num_topk, config_.num_experts));
  if (options.layout == RecvLayout::kExpertMajor) {
    return dispatch_expert_major(in, options, comm_id, epoch);
  }

  // counts[s][d] = tokens rank s sends to rank d. Every rank sees every count, so all ranks
  // reach the same verdict on capacity before anyone writes.
  std::vector<std::vector<int>> counts(num_ranks_, std::vector<int>(num_ranks_));
  for (int s = 0; s < num_ranks_; ++s) {
    for (int d = 0; d < num_ranks_; ++d)
      counts[s][d] = count_tokens_to(peers_[s]->published_.in, d);
  }
  for (int d = 0; d < num_ranks_; ++d) {
    int total = 0;
    for (int s = 0; s < num_ranks_; ++s) total += counts[s][d];
    if (total > capacity_) {
      bootstrap_->barrier();
      throw Error(ErrorCode::kCapacityExceeded,
                  "rank " + std::to_string(d) + " would receive " + std::to_string(total) +
                      " rows but its pool holds " + std::to_string(capacity_));
    }
  }

  // Receive: every peer's tokens that have an expert here, source rank then token order.
  const DispatchOutputs& outs = options.outputs;
  const int K = in.num_topk;
  void* topk_dst = outs.recv_topk_idx ? outs.recv_topk_idx : recv_topk_idx_.data();
  float* weights_dst = outs.recv_topk_weights ? outs.recv_topk_weights : recv_topk_weights_.data();
  RecvSource* src_dst = outs.recv_src ? outs.recv_src : recv_src_.data();
  int* per_expert =
      outs.num_recv_per_expert ? outs.num_recv_per_expert : num_recv_per_expert_.data();
  std::fill(per_expert, per_expert + experts_per_rank_, 0);
  const int64_t first_expert = static_cast<int64_t>(rank_) * experts_per_rank_;
  int row = 0;
  for (int s = 0; s < num_ranks_; ++s) {
    const Published& from = peers_[s]->published_;
    for (int t = 0; t < from.in.num_tokens; ++t) {
      if (!token_goes_to(from.in, t, rank_)) continue;
      copy_row(from, t, row, outs);
      src_dst[row] = RecvSource{s, t};
      for (int k = 0; k < K; ++k) {
        const size_t i = static_cast<size_t>(t) * K + k;
        const int64_t e = read_index(from.in.topk_idx, is_int64, i);
        const bool local = e >= 0 && e / experts_per_rank_ == rank_;
        const size_t o = static_cast<size_t>(row) * K + k;
        write_index(topk_dst, is_int64, o, local ? e - first_expert : -1);
        weights_dst[o] = local && from.in.topk_weights ? from.in.topk_weights[i] : 0.f;
        if (local) ++per_expert[e - first_expert];
      }
      ++row;
    }
  }
  num_recv_ = row;
  const int align = config_.expert_alignment;
  for (int e = 0; e < experts_per_rank_; ++e)
    per_expert[e] = (per_expert[e] + align - 1) / align * align;

  // Sender-side routing: where each of this rank's tokens landed on each destination.
  auto handle = new_handle(in, options, comm_id, epoch);
  handle->slot.assign(static_cast<size_t>(in.num_tokens) * num_ranks_, -1);
  for (int d = 0; d < num_ranks_; ++d) {
    int next = 0;
    for (int s = 0; s < rank_; ++s) next += counts[s][d];
    for (int t = 0; t < in.num_tokens; ++t) {
      if (token_goes_to(in, t, d)) handle->slot[static_cast<size_t>(t) * num_ranks_ + d] = next++;
    }
  }
  bootstrap_->barrier();  // peers may reuse their inputs once everyone has read them

  DispatchResult result = result_views(outs, true);
  result.num_recv_device = &handle->rows;            // lives as long as the handle
  if (!options.wait_num_recv) result.num_recv = -1;  // the contract of worst-case mode
  result.handle = DispatchHandle(std::move(handle));
  return result;
}

DispatchResult HostBackend::dispatch_cached(const detail::HandleState& handle_state, const void* x,
                                            const float* x_scales, const DispatchOptions& options,
                                            uint64_t comm_id, uint64_t epoch) {
  const auto& handle = static_cast<const HostHandle&>(handle_state);
  DispatchInputs in;
  in.x = x;
  in.x_scales = x_scales;
  in.num_tokens = handle.num_tokens;
  published_ = Published{in, &handle};
  agree_or_throw(ErrorCode::kInvalidArgument, {});
  if (handle.expert_major) return cached_expert_major(handle, options, comm_id, epoch);

  const DispatchOutputs& outs = options.outputs;
  for (int s = 0; s < num_ranks_; ++s) {
    const Published& from = peers_[s]->published_;
    for (int t = 0; t < from.in.num_tokens; ++t) {
      const int row = from.handle->slot[static_cast<size_t>(t) * num_ranks_ + rank_];
      if (row >= 0) copy_row(from, t, row, outs);
    }
  }
  num_recv_ = handle.rows;
  bootstrap_->barrier();

  auto next = std::make_shared<HostHandle>(handle);
  next->comm_id = comm_id;
  next->epoch = epoch;
  DispatchResult result = result_views(outs, false);
  result.num_recv_device = &next->rows;
  next->num_recv = options.wait_num_recv ? handle.rows : -1;
  if (!options.wait_num_recv) result.num_recv = -1;
  result.handle = DispatchHandle(std::move(next));
  return result;
}

void HostBackend::synchronize() {
  if (pending_error_.empty()) return;
  const std::string message = std::move(pending_error_);
  pending_error_.clear();
  throw Error(ErrorCode::kInvalidArgument, "rank " + std::to_string(rank_) + ": " + message);
}

void HostBackend::combine(const void* y, const detail::HandleState& handle_state, void* out,
                          const CombineOptions& options, bool /*repeat*/) {
  const auto& handle = static_cast<const HostHandle&>(handle_state);
  const size_t H = config_.hidden;
  if (y != pool_.data() && handle.rows > 0) {
    std::memcpy(pool_.data(), y, static_cast<size_t>(handle.rows) * H * 2);
  }
  bootstrap_->barrier();  // every rank's y is in its pool
  if (handle.expert_major) {
    combine_expert_major(handle, out, options);
    bootstrap_->barrier();  // no rank restages its pool while a peer still reads it
    return;
  }

  // DESIGN section 11: with several NVLink domains of L ranks, each domain's rows are summed in
  // fp32 in ascending rank order and rounded to bf16 (the partial a domain sends back once),
  // and the partials are added in fp32 in ascending domain order; with one domain the sum is
  // never rounded before the end.
  const int L = config_.ranks_per_domain > 0 ? config_.ranks_per_domain : num_ranks_;
  const bool one_domain = L == num_ranks_;
  std::vector<float> acc(H), partial(H);
  auto* out_bits = static_cast<uint16_t*>(out);
  for (int t = 0; t < handle.num_tokens; ++t) {
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int first = 0; first < num_ranks_; first += L) {
      std::fill(partial.begin(), partial.end(), 0.f);
      bool any = false;
      for (int d = first; d < first + L; ++d) {
        const int row = handle.slot[static_cast<size_t>(t) * num_ranks_ + d];
        if (row < 0) continue;
        any = true;
        const auto* y_row = reinterpret_cast<const uint16_t*>(peers_[d]->pool_.data()) + row * H;
        for (size_t h = 0; h < H; ++h) partial[h] += bf16_to_float(y_row[h]);
      }
      if (any) add_domain_partial(acc, partial, one_domain);  // else the domain sends nothing
    }
    finish_token(acc, options, t, out_bits);
  }
  bootstrap_->barrier();  // no rank restages its pool while a peer still reads it
}

}  // namespace epcomm::host

namespace epcomm::detail {
std::unique_ptr<CommBackend> make_host_backend(std::shared_ptr<Bootstrap> bootstrap,
                                               const Config& config) {
  return std::make_unique<host::HostBackend>(std::move(bootstrap), config);
}
}  // namespace epcomm::detail
