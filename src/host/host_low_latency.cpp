// Host reference of the low-latency mode (DESIGN section 10): plain loops over every rank's
// inputs. A token goes once to each of its experts, under the first top-k slot naming it. Rows
// of a local expert come from source rank 0 first, then rank 1, ..., each source's tokens in
// ascending order. Combine adds fmaf(w[t][k], y, acc) over k ascending from 0 in fp32 and
// rounds once to bf16. Two ranks exchange nothing when either masks the other: the masked
// rank's tokens are not received and its experts add nothing to the combine.
#include <algorithm>
#include <cstring>
#include <vector>
#include "message_stream.hpp"

#include "host_backend.hpp"
#include "numeric.hpp"

namespace epcomm::host {
namespace {

// The expert of slot k of token t, or -1 when the slot is empty, out of range, or repeats an
// expert an earlier slot of the token already names.
int64_t first_expert(const void* topk_idx, bool is_int64, int t, int k, int num_topk,
                     int num_experts) {
  const size_t row = static_cast<size_t>(t) * num_topk;
  const int64_t e = read_index(topk_idx, is_int64, row + k);
  if (e < 0 || e >= num_experts) return -1;
  for (int j = 0; j < k; ++j) {
    if (read_index(topk_idx, is_int64, row + j) == e) return -1;
  }
  return e;
}

}  // namespace

void HostBackend::ll_agree_on_experts(const void* topk_idx, int num_tokens, int num_topk) {
  const bool is_int64 = config_.index_type == IndexType::kInt64;
  std::string bad;
  for (int t = 0; t < num_tokens && bad.empty(); ++t) {
    for (int k = 0; k < num_topk; ++k) {
      const int64_t e = read_index(topk_idx, is_int64, static_cast<size_t>(t) * num_topk + k);
      if (e < -1 || e >= config_.num_experts) {
        epcomm::detail::MessageStream os;
        os << "topk_idx[" << t << "][" << k << "] = " << e << " is outside [-1, "
           << config_.num_experts << ")";
        bad = os.str();
        break;
      }
    }
  }
  const int32_t mine = bad.empty() ? 0 : 1;
  std::vector<int32_t> all(num_ranks_);
  bootstrap_->allGather(&mine, all.data(), sizeof(mine));
  if (!bad.empty()) {
    bootstrap_->barrier();
    throw Error(ErrorCode::kInvalidExpert, "rank " + std::to_string(rank_) + ": " + bad);
  }
  for (int s = 0; s < num_ranks_; ++s) {
    if (all[s]) {
      bootstrap_->barrier();
      throw Error(ErrorCode::kInvalidExpert, "rank " + std::to_string(rank_) + ": peer rank " +
                                                 std::to_string(s) +
                                                 " had an expert id out of range");
    }
  }
}

LowLatencyDispatchResult HostBackend::ll_dispatch_send(const LowLatencyDispatchInputs& in,
                                                       int buffer) {
  LowLatencyBuffer& buf = ll_[buffer];
  const size_t M = config_.ll_max_tokens_per_rank;
  const size_t rows = static_cast<size_t>(experts_per_rank_) * num_ranks_ * M;
  if (buf.recv_x.empty()) {  // sized once, on first use: most communicators never use the mode
    buf.recv_x.assign(rows * config_.hidden * 2, 0);
    buf.recv_scales.assign(rows * (config_.hidden / kFp8ScaleBlock), 0.f);
    buf.recv_scale_codes.assign(rows * (config_.hidden / kFp8ScaleBlock), 0);
    buf.recv_count.assign(experts_per_rank_, 0);
    buf.recv_src.assign(rows, LowLatencySource{0, 0, 0});
    buf.layout_range.assign(static_cast<size_t>(experts_per_rank_) * num_ranks_ * 2, 0);
  }
  buf.in = in;
  const size_t id_bytes =
      static_cast<size_t>(in.num_tokens) * in.num_topk * index_bytes(config_.index_type);
  const auto* ids = static_cast<const unsigned char*>(in.topk_idx);
  buf.topk_idx.assign(ids, ids + id_bytes);
  buf.in.topk_idx = buf.topk_idx.data();
  LowLatencyDispatchResult r;
  r.recv_x = buf.recv_x.data();
  r.recv_scales = in.use_fp8 && !in.use_ue8m0 ? buf.recv_scales.data() : nullptr;
  r.recv_scale_codes = in.use_ue8m0 ? buf.recv_scale_codes.data() : nullptr;
  r.recv_count = buf.recv_count.data();
  r.recv_src = buf.recv_src.data();
  r.layout_range = buf.layout_range.data();
  r.rows_per_expert = static_cast<int>(num_ranks_ * M);
  return r;
}

void HostBackend::ll_receive_from(const LowLatencyDispatchInputs& from, int source, int e, int le,
                                  LowLatencyBuffer& buf, int& row) {
  const bool is_int64 = config_.index_type == IndexType::kInt64;
  const int H = config_.hidden;
  const bool fp8 = buf.in.use_fp8;
  const size_t first_row = static_cast<size_t>(le) * num_ranks_ * config_.ll_max_tokens_per_rank;
  for (int t = 0; t < from.num_tokens; ++t) {
    for (int k = 0; k < from.num_topk; ++k) {
      if (first_expert(from.topk_idx, is_int64, t, k, from.num_topk, config_.num_experts) != e) {
        continue;
      }
      const size_t out_row = first_row + row;
      const auto* x = static_cast<const uint16_t*>(from.x) + static_cast<size_t>(t) * H;
      if (fp8) {
        // The sender casts (its round_scale); the receiver picks the scale format.
        uint8_t* q = buf.recv_x.data() + out_row * H;
        const size_t first_scale = out_row * (H / kFp8ScaleBlock);
        for (int g = 0; g < H / kFp8ScaleBlock; ++g) {
          const uint16_t* block = x + g * kFp8ScaleBlock;
          uint8_t* q_block = q + g * kFp8ScaleBlock;
          const float scale = from.round_scale
                                  ? cast_block_to_e4m3_pow2(block, q_block, kFp8ScaleBlock)
                                  : cast_block_to_e4m3(block, q_block, kFp8ScaleBlock);
          if (buf.in.use_ue8m0) {
            buf.recv_scale_codes[first_scale + g] = ue8m0_code(scale);
          } else {
            buf.recv_scales[first_scale + g] = scale;
          }
        }
      } else {
        std::memcpy(buf.recv_x.data() + out_row * H * 2, x, static_cast<size_t>(H) * 2);
      }
      buf.recv_src[out_row] = LowLatencySource{source, t, k};
      ++row;
      break;  // once per expert
    }
  }
}

void HostBackend::ll_dispatch_receive(int buffer) {
  LowLatencyBuffer& buf = ll_[buffer];
  ll_agree_on_experts(buf.in.topk_idx, buf.in.num_tokens, buf.in.num_topk);  // all have sent
  for (int s = 0; s < num_ranks_; ++s) {
    // Each rank casts its own rows: with mixed modes receivers could not read them.
    const LowLatencyDispatchInputs& first = peers_[0]->ll_[buffer].in;
    const LowLatencyDispatchInputs& theirs = peers_[s]->ll_[buffer].in;
    const char* differs = theirs.use_fp8 != first.use_fp8           ? "use_fp8"
                          : theirs.round_scale != first.round_scale ? "round_scale"
                                                                    : nullptr;
    if (differs != nullptr) {
      bootstrap_->barrier();
      throw Error(ErrorCode::kInvalidArgument, std::string("low_latency_dispatch: ") + differs +
                                                   " differs between rank 0 and rank " +
                                                   std::to_string(s));
    }
  }
  for (int le = 0; le < experts_per_rank_; ++le) {
    const int e = rank_ * experts_per_rank_ + le;
    int row = 0;
    for (int s = 0; s < num_ranks_; ++s) {
      const int first = row;
      if (ll_reaches(s)) ll_receive_from(peers_[s]->ll_[buffer].in, s, e, le, buf, row);
      int* range = buf.layout_range.data() + (static_cast<size_t>(le) * num_ranks_ + s) * 2;
      range[0] = first;
      range[1] = row - first;
    }
    buf.recv_count[le] = row;
  }
  bootstrap_->barrier();  // peers may reuse x and topk_idx once everyone has read them
}

bool HostBackend::ll_reaches(int peer) const {
  return ll_mask_[peer] == 0 && peers_[peer]->ll_mask_[rank_] == 0;
}

void HostBackend::ll_update_mask(int rank, bool masked) { ll_mask_[rank] = masked ? 1 : 0; }

void HostBackend::ll_query_mask(int32_t* mask_out) {
  std::copy(ll_mask_.begin(), ll_mask_.end(), mask_out);
}

void HostBackend::ll_clean_mask() { std::fill(ll_mask_.begin(), ll_mask_.end(), 0); }

void HostBackend::ll_combine_send(const detail::LowLatencyCombineArgs& args, int buffer) {
  ll_[buffer].combine = args;
}

void HostBackend::ll_combine_receive(int buffer) {
  const LowLatencyBuffer& buf = ll_[buffer];
  const bool is_int64 = config_.index_type == IndexType::kInt64;
  const int H = config_.hidden, T = buf.in.num_tokens, K = buf.in.num_topk;
  const size_t rows_per_expert = static_cast<size_t>(num_ranks_) * config_.ll_max_tokens_per_rank;
  bootstrap_->barrier();  // every rank's y is in place
  // The rows were routed by the dispatch's ids; combine reads them by the same ids and reports
  // other ones given to it at synchronize.
  const void* ids = buf.in.topk_idx;
  for (size_t i = 0; i < static_cast<size_t>(T) * K && pending_error_.empty(); ++i) {
    const int64_t given = read_index(buf.combine.topk_idx, is_int64, i);
    const int64_t dispatched = read_index(ids, is_int64, i);
    if (given != dispatched) {
      epcomm::detail::MessageStream os;
      os << "low_latency_combine: topk_idx[" << i / K << "][" << i % K << "] = " << given
         << " but its dispatch had " << dispatched << "; combined with the dispatch's ids";
      pending_error_ = os.str();
    }
  }

  // position[t * K + k]: position of token t among this rank's tokens sent to the expert
  // of slot k (its first slot naming that expert).
  std::vector<int> sent_to_expert(config_.num_experts, 0);
  std::vector<int> position(static_cast<size_t>(T) * K, -1);
  for (int t = 0; t < T; ++t) {
    for (int k = 0; k < K; ++k) {
      const int64_t e = first_expert(ids, is_int64, t, k, K, config_.num_experts);
      if (e >= 0) position[static_cast<size_t>(t) * K + k] = sent_to_expert[e]++;
    }
  }
  auto* out = static_cast<uint16_t*>(buf.combine.out);
  std::vector<float> acc(H);
  for (int t = 0; t < T; ++t) {
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int k = 0; k < K; ++k) {
      const size_t tk = static_cast<size_t>(t) * K + k;
      const int64_t e = read_index(ids, is_int64, tk);
      if (e < 0 || e >= config_.num_experts) continue;
      int k0 = 0;  // the first slot naming e holds the row's position
      while (read_index(ids, is_int64, static_cast<size_t>(t) * K + k0) != e) ++k0;
      const int d = static_cast<int>(e / experts_per_rank_);
      const int le = static_cast<int>(e % experts_per_rank_);
      if (!ll_reaches(d)) continue;  // a masked rank's experts add nothing
      const LowLatencyBuffer& expert_side = peers_[d]->ll_[buffer];
      const int first =
          expert_side.layout_range[(static_cast<size_t>(le) * num_ranks_ + rank_) * 2];
      const size_t row = le * rows_per_expert + first + position[static_cast<size_t>(t) * K + k0];
      const auto* y = static_cast<const uint16_t*>(expert_side.combine.y) + row * H;
      const float w = buf.combine.topk_weights[tk];
      for (int h = 0; h < H; ++h) acc[h] = std::fma(w, bf16_to_float(y[h]), acc[h]);
    }
    for (int h = 0; h < H; ++h) out[static_cast<size_t>(t) * H + h] = float_to_bf16(acc[h]);
  }
  bootstrap_->barrier();  // no rank reuses y while a peer still reads it
}

}  // namespace epcomm::host
