// Bootstrap for Python: the in-process bootstraps (ranks as threads), and a base class a Python
// subclass completes with all_gather(bytes) -> bytes and barrier(), e.g. over torch.distributed.
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bindings.hpp"
#include "epcomm/epcomm.hpp"

namespace epcomm::python {
namespace {

// The C++ side of a Python subclass. rank, size and in_process are fixed at construction, so
// only the two collectives call into Python (taking the GIL: epcomm calls them from threads
// that released it).
class PyBootstrap final : public Bootstrap {
 public:
  PyBootstrap(int rank, int size, bool in_process)
      : rank_(rank), size_(size), in_process_(in_process) {
    if (size < 1 || rank < 0 || rank >= size) {
      throw Error(ErrorCode::kInvalidArgument, "Bootstrap: rank = " + std::to_string(rank) +
                                                   " and size = " + std::to_string(size) +
                                                   ": need 0 <= rank < size");
    }
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  bool in_process() const override { return in_process_; }

  void allGather(const void* send, void* recv, size_t bytes) override {
    py::gil_scoped_acquire gil;
    const py::object result =
        call_python("all_gather", py::bytes(static_cast<const char*>(send), bytes));
    if (!py::isinstance<py::bytes>(result)) {
      throw Error(ErrorCode::kBootstrap, "Bootstrap.all_gather must return bytes, not " +
                                             std::string(py::str(result.get_type())));
    }
    const std::string gathered = result.cast<std::string>();
    const size_t expected = bytes * static_cast<size_t>(size_);
    if (gathered.size() != expected) {
      throw Error(ErrorCode::kBootstrap,
                  "Bootstrap.all_gather returned " + std::to_string(gathered.size()) +
                      " bytes; expected size() * len(data) = " + std::to_string(expected));
    }
    if (expected > 0) std::memcpy(recv, gathered.data(), expected);
  }

  void barrier() override {
    py::gil_scoped_acquire gil;
    call_python("barrier");
  }

 private:
  // Calls the subclass's method; a Python exception becomes Error(kBootstrap), which marks the
  // communicator broken (its peers may be anywhere in the protocol now).
  template <typename... Args>
  py::object call_python(const char* name, Args&&... args) {
    py::function method = py::get_override(static_cast<const Bootstrap*>(this), name);
    if (!method) {
      throw Error(ErrorCode::kBootstrap,
                  std::string("the Bootstrap subclass does not define ") + name + "()");
    }
    try {
      return method(std::forward<Args>(args)...);
    } catch (py::error_already_set& e) {
      throw Error(ErrorCode::kBootstrap,
                  "rank " + std::to_string(rank_) + ": Bootstrap." + name + " raised " + e.what());
    }
  }

  int rank_, size_;
  bool in_process_;
};

// All-gathers `data` through the bootstrap's C++ interface, as epcomm itself calls it.
py::bytes gather_bytes(Bootstrap& bootstrap, const py::bytes& data) {
  const std::string send = data;
  std::string recv(send.size() * static_cast<size_t>(bootstrap.size()), '\0');
  {
    py::gil_scoped_release release;
    bootstrap.allGather(send.data(), recv.data(), send.size());
  }
  return py::bytes(recv);
}

}  // namespace

void bind_bootstrap(py::module_& m) {
  py::class_<Bootstrap, PyBootstrap, std::shared_ptr<Bootstrap>>(
      m, "Bootstrap",
      "epcomm::Bootstrap. Subclass it in Python: call Bootstrap.__init__(self, rank, size, "
      "in_process) and define all_gather(data: bytes) -> bytes (every rank's data, in rank "
      "order) and barrier().")
      .def(py::init_alias<int, int, bool>(), py::arg("rank"), py::arg("size"),
           py::arg("in_process") = false)
      .def("rank", &Bootstrap::rank)
      .def("size", &Bootstrap::size)
      .def("in_process", &Bootstrap::in_process)
      .def("gather_bytes", &gather_bytes, py::arg("data"),
           "Collective: every rank's `data` (all of one length) concatenated in rank order, "
           "through the C++ allGather (a Python subclass's all_gather).")
      .def(
          "barrier", [](Bootstrap& b) { b.barrier(); }, py::call_guard<py::gil_scoped_release>());

  m.def(
      "make_in_process_bootstraps",
      [](int num_ranks, int timeout_ms) {
        std::vector<std::shared_ptr<Bootstrap>> out;
        for (auto& b : make_in_process_bootstraps(num_ranks, timeout_ms)) out.push_back(std::move(b));
        return out;
      },
      py::arg("num_ranks"), py::arg("timeout_ms") = 30000,
      "Bootstraps for num_ranks ranks that are threads of this process; one per thread.");
}

}  // namespace epcomm::python
