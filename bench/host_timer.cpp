// Host clock timer for the reference backend (its calls return when the work is done).
#include <chrono>

#include "device_support.hpp"

namespace epcomm::bench {
namespace {
class HostTimer final : public OpTimer {
 public:
  void start() override { begin_ = std::chrono::steady_clock::now(); }
  double stop_ms() override {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - begin_)
        .count();
  }

 private:
  std::chrono::steady_clock::time_point begin_;
};
}  // namespace

std::unique_ptr<OpTimer> make_host_timer() { return std::make_unique<HostTimer>(); }

}  // namespace epcomm::bench
