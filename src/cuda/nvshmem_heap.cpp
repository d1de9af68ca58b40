// NvshmemHeap: NVSHMEM's host library through dlopen (EPCOMM_NVSHMEM_HEAP builds only).
#include "nvshmem_heap.hpp"

#include <cuda.h>
#include <cuda_runtime.h>

#include <mutex>
#include <string>
#include <vector>

#include "epcomm/error.hpp"

#if EPCOMM_NVSHMEM_HEAP
#include <device_host/nvshmem_types.h>
#include <dlfcn.h>
#include <host/nvshmemx_api.h>
#endif

namespace epcomm::cuda {

#if EPCOMM_NVSHMEM_HEAP

struct NvshmemHeap::Api {
  int (*get_uniqueid)(nvshmemx_uniqueid_t*);
  int (*set_attr_uniqueid_args)(int, int, const nvshmemx_uniqueid_t*, nvshmemx_init_attr_t*);
  int (*hostlib_init_attr)(unsigned int, nvshmemx_init_attr_t*);
  int (*my_pe)();
  int (*n_pes)();
  void* (*calloc)(size_t, size_t);
  void (*free)(void*);
  void* (*ptr)(const void*, int);
  int (*cumodule_init)(CUmodule);      // null where the library lacks it
  int (*cumodule_finalize)(CUmodule);  // likewise
};

namespace {

template <typename F>
void resolve(void* library, const char* name, F* out) {
  void* symbol = dlsym(library, name);
  if (symbol == nullptr) {
    throw Error(ErrorCode::kUnsupported, std::string("Config.transport = nvshmem: ") + name +
                                             " is missing from libnvshmem_host.so.3");
  }
  *out = reinterpret_cast<F>(symbol);
}

// The library: through LD_LIBRARY_PATH first, else the NVSHMEM this build compiled against.
const NvshmemHeap::Api& load_api() {
  static NvshmemHeap::Api api{};
  static std::string failure;
  static std::once_flag once;
  std::call_once(once, [] {
    void* library = dlopen("libnvshmem_host.so.3", RTLD_NOW | RTLD_GLOBAL);
    const std::string built = std::string(EPCOMM_NVSHMEM_LIB_DIR) + "/libnvshmem_host.so.3";
    if (library == nullptr) library = dlopen(built.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (library == nullptr) {
      failure =
          "Config.transport = nvshmem: libnvshmem_host.so.3 was not found on "
          "LD_LIBRARY_PATH nor at " +
          built + " (" + dlerror() + ")";
      return;
    }
    try {
      resolve(library, "nvshmemx_get_uniqueid", &api.get_uniqueid);
      resolve(library, "nvshmemx_set_attr_uniqueid_args", &api.set_attr_uniqueid_args);
      resolve(library, "nvshmemx_hostlib_init_attr", &api.hostlib_init_attr);
      resolve(library, "nvshmem_my_pe", &api.my_pe);
      resolve(library, "nvshmem_n_pes", &api.n_pes);
      resolve(library, "nvshmem_calloc", &api.calloc);
      resolve(library, "nvshmem_free", &api.free);
      resolve(library, "nvshmem_ptr", &api.ptr);
      api.cumodule_init =
          reinterpret_cast<int (*)(CUmodule)>(dlsym(library, "nvshmemx_cumodule_init"));
      api.cumodule_finalize =
          reinterpret_cast<int (*)(CUmodule)>(dlsym(library, "nvshmemx_cumodule_finalize"));
    } catch (const Error& e) {
      failure = e.what();
    }
  });
  if (!failure.empty()) throw Error(ErrorCode::kUnsupported, failure);
  return api;
}

void check(int status, const char* call) {
  if (status != 0) {
    throw Error(ErrorCode::kCuda,
                std::string("NVSHMEM: ") + call + " returned " + std::to_string(status));
  }
}

}  // namespace

std::shared_ptr<NvshmemHeap> NvshmemHeap::join(Bootstrap& bootstrap) {
  if (bootstrap.in_process()) {
    throw Error(ErrorCode::kInvalidArgument,
                "Config.transport = nvshmem: the bootstrap's ranks are threads of one process, "
                "but NVSHMEM has one PE per process (use one rank per process, e.g. MpiBootstrap)");
  }
  static std::mutex mutex;
  static std::shared_ptr<NvshmemHeap> heap;  // kept until the process ends (see join)
  std::lock_guard<std::mutex> lock(mutex);
  if (heap != nullptr) {
    if (heap->pe_ != bootstrap.rank() || heap->num_pes_ != bootstrap.size()) {
      throw Error(ErrorCode::kInvalidArgument,
                  "Config.transport = nvshmem: NVSHMEM runs here as PE " +
                      std::to_string(heap->pe_) + " of " + std::to_string(heap->num_pes_) +
                      ", but this communicator's bootstrap is rank " +
                      std::to_string(bootstrap.rank()) + " of " + std::to_string(bootstrap.size()) +
                      "; one NVSHMEM job per process");
    }
    return heap;
  }
  const Api& api = load_api();
  nvshmemx_uniqueid_t id = NVSHMEMX_UNIQUEID_INITIALIZER;
  if (bootstrap.rank() == 0) check(api.get_uniqueid(&id), "nvshmemx_get_uniqueid");
  std::vector<nvshmemx_uniqueid_t> ids(bootstrap.size());
  bootstrap.allGather(&id, ids.data(), sizeof(id));
  nvshmemx_init_attr_t attr = NVSHMEMX_INIT_ATTR_INITIALIZER;
  check(api.set_attr_uniqueid_args(bootstrap.rank(), bootstrap.size(), &ids[0], &attr),
        "nvshmemx_set_attr_uniqueid_args");
  check(api.hostlib_init_attr(NVSHMEMX_INIT_WITH_UNIQUEID, &attr), "nvshmemx_hostlib_init_attr");
  const int pe = api.my_pe(), num_pes = api.n_pes();
  if (pe != bootstrap.rank() || num_pes != bootstrap.size()) {
    throw Error(ErrorCode::kBootstrap, "Config.transport = nvshmem: NVSHMEM made rank " +
                                           std::to_string(bootstrap.rank()) + " of " +
                                           std::to_string(bootstrap.size()) + " PE " +
                                           std::to_string(pe) + " of " + std::to_string(num_pes));
  }
  heap.reset(new NvshmemHeap(&api, pe, num_pes));
  return heap;
}

void* NvshmemHeap::allocate(size_t bytes) {
  void* p = api_->calloc(1, bytes);
  if (p == nullptr) {
    throw Error(ErrorCode::kCuda, "NVSHMEM: nvshmem_calloc of " + std::to_string(bytes) +
                                      " bytes failed (the symmetric heap holds "
                                      "NVSHMEM_SYMMETRIC_SIZE bytes per PE)");
  }
  return p;
}

void NvshmemHeap::release(void* symmetric) { api_->free(symmetric); }

void* NvshmemHeap::peer(void* symmetric, int pe) const { return api_->ptr(symmetric, pe); }

void NvshmemHeap::bind_module(void* cu_module) const {
  if (api_->cumodule_init == nullptr) {
    throw Error(ErrorCode::kUnsupported,
                "NVSHMEM: nvshmemx_cumodule_init is missing from libnvshmem_host.so.3");
  }
  check(api_->cumodule_init(static_cast<CUmodule>(cu_module)), "nvshmemx_cumodule_init");
}

void NvshmemHeap::unbind_module(void* cu_module) const noexcept {
  if (api_->cumodule_finalize != nullptr) {
    api_->cumodule_finalize(static_cast<CUmodule>(cu_module));
  }
}

#else  // no NVSHMEM in this build

struct NvshmemHeap::Api {};

std::shared_ptr<NvshmemHeap> NvshmemHeap::join(Bootstrap&) {
  throw Error(ErrorCode::kUnsupported,
              "Config.transport = nvshmem: this epcomm build has no NVSHMEM (configure with "
              "EPCOMM_NVSHMEM_HOME or NVSHMEM_HOME pointing at an NVSHMEM install)");
}

void* NvshmemHeap::allocate(size_t) { return nullptr; }
void NvshmemHeap::release(void*) {}
void* NvshmemHeap::peer(void*, int) const { return nullptr; }
void NvshmemHeap::bind_module(void*) const {}
void NvshmemHeap::unbind_module(void*) const noexcept {}

#endif

}  // namespace epcomm::cuda
