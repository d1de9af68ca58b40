// The host reference backend: the oracle every other backend is compared with byte for byte.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "../backend.hpp"

namespace epcomm::host {

// Sender-side routing of one dispatch: slot[t * R + d] = row of token t on rank d, or -1.
struct HostHandle final : detail::HandleState {
  std::vector<int> slot;
  int rows = 0;  // rows this rank received (num_recv is -1 in worst-case mode)
  // Expert-major: for this rank's token t and top-k slot k, the row of the (t, expert) pair at
  // its destination rank and that rank ([T][K], -1 where k is not the pair's first slot), and
  // the dispatched weights ([T][K], for CombineOptions::apply_weights).
  int num_topk = 0;
  std::vector<int> pair_row, pair_dest;
  std::vector<float> weights;
};

// Ranks are threads of one process; each reads its peers' inputs and pools through pointers
// exchanged once at creation, between bootstrap collectives that order the accesses.
class HostBackend final : public detail::CommBackend {
 public:
  HostBackend(std::shared_ptr<Bootstrap> bootstrap, const Config& config);

  int recv_capacity() const override { return capacity_; }
  std::vector<detail::MemoryRange> shared_memory() const override {
    return {{pool_.data(), pool_.size()}};
  }
  void set_stream(Stream stream) override { stream_ = stream; }
  Stream stream() const override { return stream_; }
  void get_dispatch_layout(const void* topk_idx, int num_tokens, int num_topk,
                           const LayoutOutputs& out) override;
  void check_dispatch_issuable(const DispatchOptions&, bool) override {}
  DispatchResult dispatch(const DispatchInputs& in, const DispatchOptions& options,
                          uint64_t comm_id, uint64_t epoch) override;
  DispatchResult dispatch_cached(const detail::HandleState& handle, const void* x,
                                 const float* x_scales, const DispatchOptions& options,
                                 uint64_t comm_id, uint64_t epoch) override;
  void* combine_input() override { return pool_.data(); }
  // Its barriers order every pool access, so a repeated combine needs nothing more.
  void combine(const void* y, const detail::HandleState& handle, void* out,
               const CombineOptions& options, bool repeat) override;
  // Throws the error a call recorded for it (a low-latency combine given other topk_idx than
  // its dispatch), as the CUDA backend reports device errors.
  void synchronize() override;

  // Low-latency mode (host_low_latency.cpp): the send phases record this rank's arguments;
  // each receive phase does the whole exchange between bootstrap barriers.
  LowLatencyDispatchResult ll_dispatch_send(const LowLatencyDispatchInputs& in,
                                            int buffer) override;
  void ll_dispatch_receive(int buffer) override;
  void ll_combine_send(const detail::LowLatencyCombineArgs& args, int buffer) override;
  void ll_combine_receive(int buffer) override;
  // The masks live in host memory; mask_out is host memory.
  void ll_update_mask(int rank, bool masked) override;
  void ll_query_mask(int32_t* mask_out) override;
  void ll_clean_mask() override;

 private:
  // What this rank offers its peers during one collective call.
  struct Published {
    DispatchInputs in;
    const HostHandle* handle = nullptr;
  };

  bool token_goes_to(const DispatchInputs& in, int token, int dest) const;
  // Expert-major dispatch (host_expert_major.cpp), called by dispatch after the expert check.
  DispatchResult dispatch_expert_major(const DispatchInputs& in, const DispatchOptions& options,
                                       uint64_t comm_id, uint64_t epoch);
  DispatchResult cached_expert_major(const HostHandle& handle, const DispatchOptions& options,
                                     uint64_t comm_id, uint64_t epoch);
  void combine_expert_major(const HostHandle& handle, void* out, const CombineOptions& options);
  // Zeroes received row `row` (x and scales): an expert-major padding row.
  void zero_row(int row, const DispatchOutputs& outs);
  int count_tokens_to(const DispatchInputs& in, int dest) const;
  // Exchanges each rank's status; throws on every rank when any rank failed its local check.
  void agree_or_throw(ErrorCode code, const std::string& local_error);
  void copy_row(const Published& from, int token, int row, const DispatchOutputs& outs);
  DispatchResult result_views(const DispatchOutputs& outs, bool with_meta);
  // The handle of a fresh dispatch that received num_recv_ rows (the layouts add their tables).
  std::shared_ptr<HostHandle> new_handle(const DispatchInputs& in, const DispatchOptions& options,
                                         uint64_t comm_id, uint64_t epoch) const;

  // One of the two low-latency buffers: this rank's latest arguments and its outputs.
  struct LowLatencyBuffer {
    LowLatencyDispatchInputs in;          // in.topk_idx points to topk_idx below
    std::vector<unsigned char> topk_idx;  // the dispatch's [T][K] ids: combine uses these
    detail::LowLatencyCombineArgs combine;
    std::vector<unsigned char> recv_x;       // [Le][R * M][H] bf16 or fp8
    std::vector<float> recv_scales;          // [Le][R * M][H / 128]
    std::vector<uint8_t> recv_scale_codes;   // [Le][R * M][H / 128], use_ue8m0
    std::vector<int> recv_count;             // [Le]
    std::vector<LowLatencySource> recv_src;  // [Le][R * M]
    std::vector<int> layout_range;           // [Le][R][2]
  };
  // Throws kInvalidExpert on every rank when any rank's topk_idx has an id out of range.
  void ll_agree_on_experts(const void* topk_idx, int num_tokens, int num_topk);
  // Appends the tokens of `from` routed to expert `e` to local expert `le`'s rows.
  void ll_receive_from(const LowLatencyDispatchInputs& from, int source, int e, int le,
                       LowLatencyBuffer& buf, int& row);
  // Whether this rank and `peer` exchange low-latency messages: neither masks the other.
  bool ll_reaches(int peer) const;

  std::shared_ptr<Bootstrap> bootstrap_;
  Config config_;
  int num_ranks_;
  int rank_;
  int experts_per_rank_;
  int capacity_;
  Stream stream_ = nullptr;
  std::vector<HostBackend*> peers_;
  Published published_;

  std::vector<unsigned char> pool_;  // [capacity][H] rows: dtype rows after dispatch, bf16 y
  std::vector<float> recv_scales_;
  std::vector<unsigned char> recv_topk_idx_;
  std::vector<float> recv_topk_weights_;
  std::vector<RecvSource> recv_src_;
  std::vector<int> num_recv_per_expert_;
  std::vector<int32_t> recv_topk_slot_;  // [capacity], expert-major
  std::vector<float> recv_weight_;       // [capacity], expert-major
  std::vector<int> expert_offsets_;      // [Le + 1], expert-major
  int num_recv_ = 0;                     // rows in the pool from the latest dispatch
  std::string pending_error_;            // kInvalidArgument for the next synchronize
  LowLatencyBuffer ll_[2];
  std::vector<int32_t> ll_mask_;  // [R]: 1 where this rank masks the rank
};

}  // namespace epcomm::host
