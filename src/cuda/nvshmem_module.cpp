// NvshmemModule: the embedded NVSHMEM module through the driver API, resolved through the
// runtime (libepcomm does not link libcuda).
#include "nvshmem_module.hpp"

#include <cuda.h>

#include <algorithm>
#include <string>

#include "driver_entry.hpp"
#include "epcomm/error.hpp"
#include "nvshmem_heap.hpp"

#if EPCOMM_NVSHMEM_MODULE
namespace epcomm::embedded {
extern const unsigned char nvshmem_module[];  // cmake/EmbedBytes.cmake
}  // namespace epcomm::embedded
#endif

namespace epcomm::cuda {

struct NvshmemModule::Handles {
  CUmodule module = nullptr;
  CUfunction put_signal = nullptr;
  CUfunction wait_signals = nullptr;
  CUfunction ll_dispatch_puts = nullptr;
  CUfunction ll_combine_puts = nullptr;
  CUfunction ht_puts[3] = {};  // indexed by HtPutKind
  decltype(&cuModuleUnload) unload = nullptr;
  decltype(&cuLaunchKernel) launch = nullptr;
  const NvshmemHeap* bound = nullptr;  // the job the module is bound to
};

#if EPCOMM_NVSHMEM_MODULE

namespace {

template <typename F>
F driver_call(const char* name) {
  F fn = nullptr;
  if (!resolve_driver_call(name, &fn)) {
    throw Error(ErrorCode::kCuda, std::string("NVSHMEM module: the CUDA driver has no ") + name);
  }
  return fn;
}

void check(CUresult result, const char* call) {
  if (result != CUDA_SUCCESS) {
    throw Error(ErrorCode::kCuda, std::string("NVSHMEM module: ") + call + " returned CUresult " +
                                      std::to_string(static_cast<int>(result)));
  }
}

void launch(const NvshmemModule::Handles& h, CUfunction f, unsigned blocks, unsigned threads,
            void** args, cudaStream_t stream, const char* name) {
  check(h.launch(f, blocks, 1, 1, threads, 1, 1, 0, reinterpret_cast<CUstream>(stream), args,
                 nullptr),
        name);
}

const char* ht_kernel_name(HtPutKind kind) {
  switch (kind) {
    case HtPutKind::kCounts:
      return nvshmem::kHtCountPutsKernel;
    case HtPutKind::kForward:
      return nvshmem::kHtForwardPutsKernel;
    case HtPutKind::kPartials:
      return nvshmem::kHtPartialPutsKernel;
  }
  return "";
}

}  // namespace

std::unique_ptr<NvshmemModule> NvshmemModule::load(const NvshmemHeap& heap) {
  auto h = std::make_unique<Handles>();
  auto load_data = driver_call<decltype(&cuModuleLoadData)>("cuModuleLoadData");
  auto get_function = driver_call<decltype(&cuModuleGetFunction)>("cuModuleGetFunction");
  h->unload = driver_call<decltype(&cuModuleUnload)>("cuModuleUnload");
  h->launch = driver_call<decltype(&cuLaunchKernel)>("cuLaunchKernel");
  // The runtime makes the device's primary context current for the driver calls below.
  if (cudaFree(nullptr) != cudaSuccess) {
    cudaGetLastError();
    throw Error(ErrorCode::kCuda, "NVSHMEM module: no CUDA context on this thread's device");
  }
  check(load_data(&h->module, embedded::nvshmem_module), "cuModuleLoadData");
  std::unique_ptr<NvshmemModule> module(new NvshmemModule(std::move(h)));
  Handles& m = *module->handles_;
  check(get_function(&m.put_signal, m.module, nvshmem::kPutSignalKernel), "cuModuleGetFunction");
  check(get_function(&m.wait_signals, m.module, nvshmem::kWaitSignalsKernel),
        "cuModuleGetFunction");
  check(get_function(&m.ll_dispatch_puts, m.module, nvshmem::kLlDispatchPutsKernel),
        "cuModuleGetFunction");
  check(get_function(&m.ll_combine_puts, m.module, nvshmem::kLlCombinePutsKernel),
        "cuModuleGetFunction");
  for (const HtPutKind kind : {HtPutKind::kCounts, HtPutKind::kForward, HtPutKind::kPartials}) {
    check(get_function(&m.ht_puts[static_cast<int>(kind)], m.module, ht_kernel_name(kind)),
          "cuModuleGetFunction");
  }
  heap.bind_module(m.module);
  m.bound = &heap;
  return module;
}

void NvshmemModule::put_signal(const nvshmem::PutSignalOp* ops, int n, int blocks,
                               cudaStream_t stream) const {
  if (n <= 0) return;
  const auto grid = static_cast<unsigned>(std::clamp(blocks, 1, n));
  void* args[] = {&ops, &n};
  launch(*handles_, handles_->put_signal, grid, 256, args, stream, nvshmem::kPutSignalKernel);
}

void NvshmemModule::wait_signals(nvshmem::SignalWait* waits, int n, unsigned long long timeout_ns,
                                 cudaStream_t stream) const {
  if (n <= 0) return;
  uint64_t ns = timeout_ns;
  void* args[] = {&waits, &n, &ns};
  const unsigned threads = 128, grid = static_cast<unsigned>((n + threads - 1) / threads);
  launch(*handles_, handles_->wait_signals, grid, threads, args, stream,
         nvshmem::kWaitSignalsKernel);
}

void NvshmemModule::ll_puts(const nvshmem::LlPuts& puts, bool combine, int blocks,
                            cudaStream_t stream) const {
  nvshmem::LlPuts copy = puts;
  void* args[] = {&copy};
  launch(*handles_, combine ? handles_->ll_combine_puts : handles_->ll_dispatch_puts,
         static_cast<unsigned>(std::max(blocks, 1)), 512, args, stream,
         combine ? nvshmem::kLlCombinePutsKernel : nvshmem::kLlDispatchPutsKernel);
}

void NvshmemModule::ht_puts(const nvshmem::HtPuts& puts, HtPutKind kind, int blocks,
                            cudaStream_t stream) const {
  nvshmem::HtPuts copy = puts;
  void* args[] = {&copy};
  const unsigned grid = kind == HtPutKind::kCounts ? 1 : static_cast<unsigned>(std::max(blocks, 1));
  launch(*handles_, handles_->ht_puts[static_cast<int>(kind)], grid, 512, args, stream,
         ht_kernel_name(kind));
}

#else  // no NVSHMEM in this build

std::unique_ptr<NvshmemModule> NvshmemModule::load(const NvshmemHeap&) {
  throw Error(ErrorCode::kUnsupported,
              "NVSHMEM module: this epcomm build has no NVSHMEM (configure with "
              "EPCOMM_NVSHMEM_HOME or NVSHMEM_HOME pointing at an NVSHMEM install)");
}
void NvshmemModule::put_signal(const nvshmem::PutSignalOp*, int, int, cudaStream_t) const {}
void NvshmemModule::wait_signals(nvshmem::SignalWait*, int, unsigned long long,
                                 cudaStream_t) const {}
void NvshmemModule::ll_puts(const nvshmem::LlPuts&, bool, int, cudaStream_t) const {}
void NvshmemModule::ht_puts(const nvshmem::HtPuts&, HtPutKind, int, cudaStream_t) const {}

#endif

NvshmemModule::NvshmemModule(std::unique_ptr<Handles> handles) : handles_(std::move(handles)) {}

NvshmemModule::~NvshmemModule() {
  if (!handles_ || handles_->module == nullptr) return;
  if (handles_->bound != nullptr) handles_->bound->unbind_module(handles_->module);
  handles_->unload(handles_->module);
}

}  // namespace epcomm::cuda
