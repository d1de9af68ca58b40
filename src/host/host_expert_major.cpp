// Host reference of the expert-major receive layout (RecvLayout::kExpertMajor): one row per
// (token, local expert) pair, under the first top-k slot naming the expert; groups by local
// expert, each starting at a multiple of Config::expert_alignment, pairs by source rank then
// token, padding rows zeroed and marked. Combine sums each token's pairs in ascending order of
// their slots in fp32 (weighted by fmaf, or added), then the biases, rounding once.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "combine_order.hpp"
#include "host_backend.hpp"
#include "numeric.hpp"

namespace epcomm::host {
namespace {

// The expert of slot k of token t when k is its first slot naming it, else -1.
int64_t pair_expert(const DispatchInputs& in, bool is_int64, int t, int k) {
  const size_t row = static_cast<size_t>(t) * in.num_topk;
  const int64_t e = read_index(in.topk_idx, is_int64, row + k);
  if (e < 0) return -1;
  for (int j = 0; j < k; ++j) {
    if (read_index(in.topk_idx, is_int64, row + j) == e) return -1;
  }
  return e;
}

// pairs[e]: how many tokens of `in` name expert e.
std::vector<int> pairs_per_expert(const DispatchInputs& in, bool is_int64, int num_experts) {
  std::vector<int> pairs(num_experts, 0);
  for (int t = 0; t < in.num_tokens; ++t) {
    for (int k = 0; k < in.num_topk; ++k) {
      const int64_t e = pair_expert(in, is_int64, t, k);
      if (e >= 0) ++pairs[e];
    }
  }
  return pairs;
}

}  // namespace

void HostBackend::zero_row(int row, const DispatchOutputs& outs) {
  const size_t row_bytes = config_.row_bytes();
  auto* x_dst = static_cast<unsigned char*>(outs.recv_x ? outs.recv_x : pool_.data());
  std::memset(x_dst + row * row_bytes, 0, row_bytes);
  const int num_scales = config_.num_scales();
  if (num_scales > 0) {
    float* scales_dst = outs.recv_scales ? outs.recv_scales : recv_scales_.data();
    std::fill(scales_dst + static_cast<size_t>(row) * num_scales,
              scales_dst + static_cast<size_t>(row + 1) * num_scales, 0.f);
  }
}

DispatchResult HostBackend::dispatch_expert_major(const DispatchInputs& in,
                                                  const DispatchOptions& options, uint64_t comm_id,
                                                  uint64_t epoch) {
  const bool is_int64 = config_.index_type == IndexType::kInt64;
  const int R = num_ranks_, Le = experts_per_rank_, E = config_.num_experts;
  const int align =
      options.expert_alignment > 0 ? options.expert_alignment : config_.expert_alignment;
  // pairs[s][e] for every rank: every rank sees every count, so all reach the same verdict.
  std::vector<std::vector<int>> pairs(R);
  for (int s = 0; s < R; ++s) pairs[s] = pairs_per_expert(peers_[s]->published_.in, is_int64, E);
  // offsets[d][le]: the first row of each group at every rank d; offsets[d][Le]: its rows.
  std::vector<std::vector<int>> offsets(R, std::vector<int>(Le + 1, 0));
  for (int d = 0; d < R; ++d) {
    for (int le = 0; le < Le; ++le) {
      int n = 0;
      for (int s = 0; s < R; ++s) n += pairs[s][d * Le + le];
      offsets[d][le + 1] = offsets[d][le] + (n + align - 1) / align * align;
    }
    if (offsets[d][Le] > capacity_) {
      bootstrap_->barrier();
      throw Error(ErrorCode::kCapacityExceeded,
                  "rank " + std::to_string(d) + " would receive " + std::to_string(offsets[d][Le]) +
                      " expert-major rows (pairs and padding) but its pool holds " +
                      std::to_string(capacity_));
    }
  }

  const DispatchOutputs& outs = options.outputs;
  RecvSource* src_dst = outs.recv_src ? outs.recv_src : recv_src_.data();
  int* per_expert =
      outs.num_recv_per_expert ? outs.num_recv_per_expert : num_recv_per_expert_.data();
  for (int le = 0; le < Le; ++le) {
    int row = offsets[rank_][le];
    const int e = rank_ * Le + le;
    for (int s = 0; s < R; ++s) {
      const DispatchInputs& from = peers_[s]->published_.in;
      for (int t = 0; t < from.num_tokens; ++t) {
        for (int k = 0; k < from.num_topk; ++k) {
          if (pair_expert(from, is_int64, t, k) != e) continue;
          copy_row(peers_[s]->published_, t, row, outs);
          src_dst[row] = RecvSource{s, t};
          recv_topk_slot_[row] = k;
          recv_weight_[row] = from.topk_weights
                                  ? from.topk_weights[static_cast<size_t>(t) * from.num_topk + k]
                                  : 0.f;
          ++row;
        }
      }
    }
    for (; row < offsets[rank_][le + 1]; ++row) {  // padding up to the next group
      zero_row(row, outs);
      src_dst[row] = RecvSource{-1, -1};
      recv_topk_slot_[row] = -1;
      recv_weight_[row] = 0.f;
    }
    per_expert[le] = offsets[rank_][le + 1] - offsets[rank_][le];
  }
  std::copy(offsets[rank_].begin(), offsets[rank_].end(), expert_offsets_.begin());
  num_recv_ = offsets[rank_][Le];

  // Sender side: the row of each of this rank's pairs at its destination.
  auto handle = new_handle(in, options, comm_id, epoch);
  handle->expert_major = true;
  handle->num_topk = in.num_topk;
  const size_t TK = static_cast<size_t>(in.num_tokens) * in.num_topk;
  handle->pair_row.assign(TK, -1);
  handle->pair_dest.assign(TK, -1);
  if (in.topk_weights) handle->weights.assign(in.topk_weights, in.topk_weights + TK);
  std::vector<int> next(E);
  for (int e = 0; e < E; ++e) {
    next[e] = offsets[e / Le][e % Le];
    for (int s = 0; s < rank_; ++s) next[e] += pairs[s][e];
  }
  for (int t = 0; t < in.num_tokens; ++t) {
    for (int k = 0; k < in.num_topk; ++k) {
      const int64_t e = pair_expert(in, is_int64, t, k);
      if (e < 0) continue;
      const size_t i = static_cast<size_t>(t) * in.num_topk + k;
      handle->pair_row[i] = next[e]++;
      handle->pair_dest[i] = static_cast<int>(e / Le);
    }
  }
  bootstrap_->barrier();  // peers may reuse their inputs once everyone has read them

  DispatchResult result = result_views(outs, /*with_meta=*/false);  // no token-major meta
  if (!options.wait_num_recv) result.num_recv = -1;
  result.recv_src = src_dst;
  result.num_recv_per_expert = per_expert;
  result.recv_topk_slot = recv_topk_slot_.data();
  result.recv_weight = recv_weight_.data();
  result.expert_offsets = expert_offsets_.data();
  result.num_recv_device = &handle->rows;  // lives as long as the handle
  result.handle = DispatchHandle(std::move(handle));
  return result;
}

DispatchResult HostBackend::cached_expert_major(const HostHandle& handle,
                                                const DispatchOptions& options, uint64_t comm_id,
                                                uint64_t epoch) {
  const DispatchOutputs& outs = options.outputs;
  for (int row = 0; row < handle.rows; ++row) zero_row(row, outs);  // the padding stays zero
  for (int s = 0; s < num_ranks_; ++s) {
    const Published& from = peers_[s]->published_;
    const HostHandle& theirs = *from.handle;
    for (int t = 0; t < theirs.num_tokens; ++t) {
      for (int k = 0; k < theirs.num_topk; ++k) {
        const size_t i = static_cast<size_t>(t) * theirs.num_topk + k;
        if (theirs.pair_dest[i] == rank_) copy_row(from, t, theirs.pair_row[i], outs);
      }
    }
  }
  num_recv_ = handle.rows;
  bootstrap_->barrier();

  auto next = std::make_shared<HostHandle>(handle);
  next->comm_id = comm_id;
  next->epoch = epoch;
  next->num_recv = options.wait_num_recv ? handle.rows : -1;
  DispatchResult result = result_views(outs, /*with_meta=*/false);
  if (!options.wait_num_recv) result.num_recv = -1;
  result.num_recv_device = &next->rows;
  result.handle = DispatchHandle(std::move(next));
  return result;
}

// Across NVLink domains of L ranks (DESIGN section 11, docs/design.md section 24): per domain in
// ascending order, the token's pairs at its ranks in ascending slot order from 0 in fp32, that
// partial rounded to bf16 (what the domain's forwarder sends back once), the partials added in
// fp32; with one domain the sum is rounded only at the end.
void HostBackend::combine_expert_major(const HostHandle& handle, void* out,
                                       const CombineOptions& options) {
  const size_t H = config_.hidden;
  const int K = handle.num_topk;
  const int L = config_.ranks_per_domain > 0 ? config_.ranks_per_domain : num_ranks_;
  const bool one_domain = L == num_ranks_;
  std::vector<float> acc(H), partial(H);
  auto* out_bits = static_cast<uint16_t*>(out);
  for (int t = 0; t < handle.num_tokens; ++t) {
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int first = 0; first < num_ranks_; first += L) {
      std::fill(partial.begin(), partial.end(), 0.f);
      bool any = false;
      for (int k = 0; k < K; ++k) {
        const size_t i = static_cast<size_t>(t) * K + k;
        const int row = handle.pair_row[i], dest = handle.pair_dest[i];
        if (row < 0 || dest < first || dest >= first + L) continue;
        any = true;
        const auto* y_row = reinterpret_cast<const uint16_t*>(peers_[dest]->pool_.data()) + row * H;
        if (options.apply_weights) {
          const float w = handle.weights[i];
          for (size_t h = 0; h < H; ++h) {
            partial[h] = std::fma(w, bf16_to_float(y_row[h]), partial[h]);
          }
        } else {
          for (size_t h = 0; h < H; ++h) partial[h] += bf16_to_float(y_row[h]);
        }
      }
      if (any) add_domain_partial(acc, partial, one_domain);  // else the domain sends nothing
    }
    finish_token(acc, options, t, out_bits);
  }
}

}  // namespace epcomm::host
