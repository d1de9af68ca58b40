// Bootstrap for ranks that are threads of one process: a shared table guarded by a mutex.
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include "message_stream.hpp"
#include <vector>

#include "epcomm/bootstrap.hpp"
#include "epcomm/error.hpp"

namespace epcomm {
namespace {

// One collective call. Rank i's k-th call joins round k; a round lives until all have left.
struct Round {
  std::vector<unsigned char> data;
  std::vector<bool> present;
  size_t bytes = 0;
  int arrived = 0;
  int departed = 0;
};

struct SharedState {
  explicit SharedState(int n, int timeout_ms) : num_ranks(n), timeout_ms(timeout_ms) {}
  const int num_ranks;
  const int timeout_ms;
  std::mutex mutex;
  std::condition_variable cv;
  std::map<uint64_t, Round> rounds;
};

class InProcessBootstrap final : public Bootstrap {
 public:
  InProcessBootstrap(std::shared_ptr<SharedState> shared, int rank)
      : shared_(std::move(shared)), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return shared_->num_ranks; }
  bool in_process() const override { return true; }
  void barrier() override {
    unsigned char byte = 0;
    std::vector<unsigned char> all(size());
    allGather(&byte, all.data(), 1);
  }

  void allGather(const void* send, void* recv, size_t bytes) override {
    SharedState& s = *shared_;
    const uint64_t round_idx = next_round_++;
    std::unique_lock<std::mutex> lock(s.mutex);
    Round& round = s.rounds[round_idx];
    if (round.arrived == 0) {
      round.bytes = bytes;
      round.data.assign(bytes * s.num_ranks, 0);
      round.present.assign(s.num_ranks, false);
    } else if (round.bytes != bytes) {
      epcomm::detail::MessageStream os;
      os << "allGather: rank " << rank_ << " contributes " << bytes << " bytes, others "
         << round.bytes;
      throw Error(ErrorCode::kBootstrap, os.str());
    }
    if (bytes > 0) std::memcpy(round.data.data() + bytes * rank_, send, bytes);
    round.present[rank_] = true;
    ++round.arrived;
    s.cv.notify_all();
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::milliseconds(s.timeout_ms);
    if (!s.cv.wait_until(lock, deadline, [&] { return round.arrived == s.num_ranks; })) {
      epcomm::detail::MessageStream os;
      os << "in-process bootstrap: rank " << rank_ << " waited " << s.timeout_ms
         << " ms in collective #" << round_idx << " for rank(s)";
      for (int i = 0; i < s.num_ranks; ++i) {
        if (!round.present[i]) os << " " << i;
      }
      throw Error(ErrorCode::kTimeout, os.str());
    }
    if (bytes > 0) std::memcpy(recv, round.data.data(), bytes * s.num_ranks);
    if (++round.departed == s.num_ranks) s.rounds.erase(round_idx);
  }

 private:
  std::shared_ptr<SharedState> shared_;
  int rank_;
  uint64_t next_round_ = 0;
};

}  // namespace

std::vector<std::unique_ptr<Bootstrap>> make_in_process_bootstraps(int num_ranks,
                                                                   int timeout_ms) {
  if (num_ranks < 1) {
    throw Error(ErrorCode::kInvalidArgument,
                "make_in_process_bootstraps: num_ranks = " + std::to_string(num_ranks) +
                    ": must be positive");
  }
  if (timeout_ms < 1) {
    throw Error(ErrorCode::kInvalidArgument,
                "make_in_process_bootstraps: timeout_ms = " + std::to_string(timeout_ms) +
                    ": must be positive");
  }
  auto shared = std::make_shared<SharedState>(num_ranks, timeout_ms);
  std::vector<std::unique_ptr<Bootstrap>> out;
  for (int r = 0; r < num_ranks; ++r) out.push_back(std::make_unique<InProcessBootstrap>(shared, r));
  return out;
}

}  // namespace epcomm
