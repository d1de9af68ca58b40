// Host clock timeline for the reference backend.
#include <chrono>
#include <vector>

#include "device_support.hpp"

namespace epcomm::bench {
namespace {
class HostTimeline final : public Timeline {
 public:
  explicit HostTimeline(int capacity) { marks_.reserve(capacity); }
  void mark() override { marks_.push_back(std::chrono::steady_clock::now()); }
  void finish() override {}
  double ms_between(int a, int b) override {
    return std::chrono::duration<double, std::milli>(marks_[b] - marks_[a]).count();
  }

 private:
  std::vector<std::chrono::steady_clock::time_point> marks_;
};
}  // namespace

std::unique_ptr<Timeline> make_host_timeline(int capacity) {
  return std::make_unique<HostTimeline>(capacity);
}

}  // namespace epcomm::bench
