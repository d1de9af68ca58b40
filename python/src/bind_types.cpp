// Enums, Config, the Error exception and a stream-ordered byte copy.
#include <pybind11/stl.h>

#include <cstring>
#include <string>

#include "bindings.hpp"
#include "epcomm/epcomm.hpp"

#ifdef EPCOMM_PYTHON_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace epcomm::python {
namespace {

// epcomm::Error becomes _epcomm.Error (a RuntimeError) carrying the ErrorCode as `.code`, so
// callers can tell a stale handle from a timeout without parsing the message.
PyObject* g_error_type = nullptr;

void bind_error(py::module_& m) {
  py::enum_<ErrorCode>(m, "ErrorCode")
      .value("invalid_argument", ErrorCode::kInvalidArgument)
      .value("capacity_exceeded", ErrorCode::kCapacityExceeded)
      .value("timeout", ErrorCode::kTimeout)
      .value("stale_handle", ErrorCode::kStaleHandle)
      .value("invalid_expert", ErrorCode::kInvalidExpert)
      .value("unsupported", ErrorCode::kUnsupported)
      .value("cuda", ErrorCode::kCuda)
      .value("bootstrap", ErrorCode::kBootstrap)
      .value("broken", ErrorCode::kBroken);
  g_error_type = PyErr_NewExceptionWithDoc(
      "_epcomm.Error", "An epcomm::Error; `code` is its ErrorCode.", PyExc_RuntimeError, nullptr);
  m.attr("Error") = py::reinterpret_borrow<py::object>(g_error_type);
  py::register_exception_translator([](std::exception_ptr thrown) {
    try {
      if (thrown) std::rethrow_exception(thrown);
    } catch (const Error& e) {
      py::object error = py::reinterpret_borrow<py::object>(g_error_type)(e.what());
      error.attr("code") = py::cast(e.code());
      PyErr_SetObject(g_error_type, error.ptr());
    }
  });
}

void bind_enums(py::module_& m) {
  py::enum_<DType>(m, "DType").value("bf16", DType::kBF16).value("fp8_e4m3", DType::kFP8E4M3);
  py::enum_<IndexType>(m, "IndexType")
      .value("int32", IndexType::kInt32)
      .value("int64", IndexType::kInt64);
  py::enum_<Algorithm>(m, "Algorithm")
      .value("flat", Algorithm::kFlat)
      .value("ring", Algorithm::kRing);
  py::enum_<Transport>(m, "Transport")
      .value("ipc", Transport::kIpc)
      .value("nvshmem", Transport::kNvshmem);
  py::enum_<Backend>(m, "Backend").value("host", Backend::kHost).value("cuda", Backend::kCuda);
  py::enum_<RecvLayout>(m, "RecvLayout")
      .value("token_major", RecvLayout::kTokenMajor)
      .value("expert_major", RecvLayout::kExpertMajor);
  m.attr("FP8_SCALE_BLOCK") = kFp8ScaleBlock;
}

void bind_config(py::module_& m) {
  py::class_<Config>(m, "Config", "epcomm::Config: the sizes a communicator is built for")
      .def(py::init<>())
      .def_readwrite("num_experts", &Config::num_experts)
      .def_readwrite("hidden", &Config::hidden)
      .def_readwrite("max_tokens_per_rank", &Config::max_tokens_per_rank)
      .def_readwrite("max_topk", &Config::max_topk)
      .def_readwrite("dtype", &Config::dtype)
      .def_readwrite("index_type", &Config::index_type)
      .def_readwrite("algorithm", &Config::algorithm)
      .def_readwrite("dispatch_sms", &Config::dispatch_sms)
      .def_readwrite("combine_sms", &Config::combine_sms)
      .def_readwrite("expert_alignment", &Config::expert_alignment)
      .def_readwrite("max_recv_rows", &Config::max_recv_rows)
      .def_readwrite("wait_timeout_ms", &Config::wait_timeout_ms)
      .def_readwrite("ring_slots", &Config::ring_slots)
      .def_readwrite("ring_chunk", &Config::ring_chunk)
      .def_readwrite("ll_max_tokens_per_rank", &Config::ll_max_tokens_per_rank)
      .def_readwrite("ll_enable_shrink", &Config::ll_enable_shrink)
      .def_readwrite("transport", &Config::transport)
      .def_readwrite("ranks_per_domain", &Config::ranks_per_domain)
      .def("validate", &Config::validate, py::arg("num_ranks"))
      .def("recv_capacity", &Config::recv_capacity, py::arg("num_ranks"))
      .def("num_scales", &Config::num_scales);
}

// Copies nbytes from src to dst: memcpy for host memory; for device memory (either side) a
// cudaMemcpyAsync ordered on `stream` (0: the legacy default stream).
void copy_bytes(Address dst, Address src, size_t nbytes, Address stream, bool on_device) {
  if (nbytes == 0) return;
  if (dst == 0 || src == 0) {
    throw Error(ErrorCode::kInvalidArgument,
                "copy_bytes: a null address with nbytes = " + std::to_string(nbytes));
  }
  if (!on_device) {
    std::memcpy(from_address<void>(dst), from_address<const void>(src), nbytes);
    return;
  }
#ifdef EPCOMM_PYTHON_WITH_CUDA
  const cudaError_t status =
      cudaMemcpyAsync(from_address<void>(dst), from_address<const void>(src), nbytes,
                      cudaMemcpyDefault, from_address<CUstream_st>(stream));
  if (status != cudaSuccess) {
    throw Error(ErrorCode::kCuda,
                std::string("copy_bytes: cudaMemcpyAsync: ") + cudaGetErrorString(status));
  }
#else
  (void)stream;
  throw Error(ErrorCode::kUnsupported, "copy_bytes: this _epcomm was built without CUDA");
#endif
}

}  // namespace

void bind_types(py::module_& m) {
  bind_error(m);
  bind_enums(m);
  bind_config(m);
#ifdef EPCOMM_PYTHON_WITH_CUDA
  m.attr("BUILT_WITH_CUDA") = true;
  // The CUDA backend's CUDA_ARCHITECTURES, comma-separated (Buffer.is_sm90_compiled reads it).
  m.attr("CUDA_ARCHITECTURES") = EPCOMM_PYTHON_CUDA_ARCHITECTURES;
#else
  m.attr("BUILT_WITH_CUDA") = false;
  m.attr("CUDA_ARCHITECTURES") = "";
#endif
  m.def("copy_bytes", &copy_bytes, py::arg("dst"), py::arg("src"), py::arg("nbytes"),
        py::arg("stream") = 0, py::arg("on_device") = false,
        py::call_guard<py::gil_scoped_release>(),
        "Copy nbytes between addresses; on_device: cudaMemcpyAsync on `stream`.");
}

}  // namespace epcomm::python
