// The low-latency bench's CUDA pieces: reusable event marks (graph nodes when captured), the
// start gate on mapped host memory, captured graphs, and streams.
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "cuda_timing.hpp"
#include "epcomm/error.hpp"
#include "ll_device.hpp"

namespace epcomm::bench {

cudaError_t launch_gate_wait(cudaStream_t stream, const uint32_t* d_flag, uint32_t ticket,
                             uint64_t timeout_ns, uint32_t* d_gave_up);  // ll_gate.cu
cudaError_t load_gate_kernel();                                          // ll_gate.cu
cudaError_t launch_stamp(cudaStream_t stream, uint64_t* slot);           // ll_gate.cu

namespace {

cudaStream_t native(Stream s) { return reinterpret_cast<cudaStream_t>(s); }

class CudaStepClock final : public StepClock {
 public:
  CudaStepClock(Stream stream, int device, int num_marks)
      : stream_(native(stream)), events_(num_marks) {
    check(cudaSetDevice(device), "cudaSetDevice");
    for (auto& e : events_) check(cudaEventCreate(&e), "cudaEventCreate");
  }
  ~CudaStepClock() override {
    for (auto& e : events_) cudaEventDestroy(e);
  }
  void mark(int i) override {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    check(cudaStreamIsCapturing(stream_, &status), "cudaStreamIsCapturing");
    // NOTE: a plain record during capture only joins streams and leaves no node; the external
    // flag makes it an event-record node that every replay records (and is invalid uncaptured).
    if (status == cudaStreamCaptureStatusActive) {
      check(cudaEventRecordWithFlags(events_.at(i), stream_, cudaEventRecordExternal),
            "cudaEventRecordWithFlags(external)");
    } else {
      check(cudaEventRecord(events_.at(i), stream_), "cudaEventRecord");
    }
  }
  void wait(int i) override { check(cudaEventSynchronize(events_.at(i)), "cudaEventSynchronize"); }
  double ms_between(int a, int b) override {
    float ms = 0;
    check(cudaEventElapsedTime(&ms, events_.at(a), events_.at(b)), "cudaEventElapsedTime");
    return ms;
  }

 private:
  cudaStream_t stream_;
  std::vector<cudaEvent_t> events_;
};

// Mark i: a one-thread kernel writes the global timer into stamps[i] (device memory). wait()
// synchronizes the stream and reads all stamps back on it.
class CudaStampClock final : public StepClock {
 public:
  CudaStampClock(Stream stream, int device, int num_marks)
      : stream_(native(stream)), host_(num_marks, 0) {
    check(cudaSetDevice(device), "cudaSetDevice");
    check(cudaMalloc(reinterpret_cast<void**>(&stamps_), sizeof(uint64_t) * num_marks),
          "cudaMalloc (stamps)");
  }
  ~CudaStampClock() override { cudaFree(stamps_); }
  void mark(int i) override {
    check(launch_stamp(stream_, stamps_ + checked(i)), "launch of a stamp");
  }
  void wait(int) override {
    check(cudaMemcpyAsync(host_.data(), stamps_, sizeof(uint64_t) * host_.size(),
                          cudaMemcpyDeviceToHost, stream_),
          "cudaMemcpyAsync (stamps)");
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (stamps)");
  }
  double ms_between(int a, int b) override {
    return static_cast<double>(static_cast<int64_t>(host_.at(b) - host_.at(a))) * 1e-6;
  }

 private:
  size_t checked(int i) const {
    if (i < 0 || static_cast<size_t>(i) >= host_.size()) {
      throw Error(ErrorCode::kInvalidArgument,
                  "stamp mark " + std::to_string(i) + " of " + std::to_string(host_.size()));
    }
    return static_cast<size_t>(i);
  }

  cudaStream_t stream_;
  uint64_t* stamps_ = nullptr;
  std::vector<uint64_t> host_;
};

// Two words of pinned host memory mapped into every device: [0] the opened ticket, [1] set by
// a hold that gave up. Portable, so the in-process ranks of every GPU can share one gate.
class CudaStartGate final : public StartGate {
 public:
  explicit CudaStartGate(int device) {
    check(cudaSetDevice(device), "cudaSetDevice");
    check(cudaHostAlloc(reinterpret_cast<void**>(&words_), 2 * sizeof(uint32_t),
                        cudaHostAllocMapped | cudaHostAllocPortable),
          "cudaHostAlloc (start gate)");
    words_[0] = 0;
    words_[1] = 0;
    // With unified addressing (every 64-bit CUDA platform) this pointer is valid on all devices.
    check(cudaHostGetDevicePointer(reinterpret_cast<void**>(&d_words_), words_, 0),
          "cudaHostGetDevicePointer (start gate)");
  }
  ~CudaStartGate() override { cudaFreeHost(words_); }
  void prepare(int device) override {
    check(cudaSetDevice(device), "cudaSetDevice");
    check(load_gate_kernel(), "loading the start gate kernel");
  }
  void hold(Stream stream, uint32_t ticket) override {
    check(
        launch_gate_wait(native(stream), d_words_, ticket,
                         static_cast<uint64_t>(kGateTimeoutSeconds) * 1000000000ull, d_words_ + 1),
        "launch of the start gate");
  }
  void open(uint32_t ticket) override { __atomic_store_n(&words_[0], ticket, __ATOMIC_SEQ_CST); }
  bool gave_up() const override { return __atomic_load_n(&words_[1], __ATOMIC_SEQ_CST) != 0; }

 private:
  uint32_t* words_ = nullptr;
  uint32_t* d_words_ = nullptr;
};

class CudaGraph final : public CapturedGraph {
 public:
  explicit CudaGraph(cudaGraphExec_t exec) : exec_(exec) {}
  ~CudaGraph() override { cudaGraphExecDestroy(exec_); }
  void launch(Stream stream) override {
    check(cudaGraphLaunch(exec_, native(stream)), "cudaGraphLaunch");
  }

 private:
  cudaGraphExec_t exec_;
};

}  // namespace

std::unique_ptr<StepClock> make_cuda_step_clock(Stream stream, int device, int num_marks) {
  return std::make_unique<CudaStepClock>(stream, device, num_marks);
}

std::unique_ptr<StepClock> make_cuda_stamp_clock(Stream stream, int device, int num_marks) {
  return std::make_unique<CudaStampClock>(stream, device, num_marks);
}

std::shared_ptr<StartGate> make_cuda_start_gate(int device) {
  return std::make_shared<CudaStartGate>(device);
}

std::unique_ptr<CapturedGraph> capture_cuda_graph(Stream stream, int device,
                                                  const std::function<void()>& issue) {
  check(cudaSetDevice(device), "cudaSetDevice");
  const cudaStream_t s = native(stream);
  check(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  cudaGraph_t graph = nullptr;
  try {
    issue();
  } catch (...) {
    cudaStreamEndCapture(s, &graph);  // leaves the stream usable; the partial graph goes
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    throw;
  }
  check(cudaStreamEndCapture(s, &graph), "cudaStreamEndCapture");
  cudaGraphExec_t exec = nullptr;
  const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);  // the executable graph does not need it
  check(made, "cudaGraphInstantiate");
  return std::make_unique<CudaGraph>(exec);
}

Stream create_cuda_stream(int device) {
  check(cudaSetDevice(device), "cudaSetDevice");
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  return reinterpret_cast<Stream>(s);
}

void destroy_cuda_stream(Stream stream) { cudaStreamDestroy(native(stream)); }

}  // namespace epcomm::bench
