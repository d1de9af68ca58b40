// Shared declarations of the _epcomm extension: one bind_* function per source file.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <utility>

#include "epcomm/communicator.hpp"
#include "epcomm/error.hpp"

namespace epcomm::python {

namespace py = pybind11;

// Python passes addresses (tensor.data_ptr(), stream.cuda_stream) as plain integers; 0 is null.
using Address = std::uintptr_t;

template <typename T>
T* from_address(Address address) {
  return reinterpret_cast<T*>(address);
}

template <typename T>
Address to_address(T* pointer) {
  return reinterpret_cast<Address>(pointer);
}

// Binds a pointer member of Class as an integer address property.
template <typename Class, typename Pointee>
void def_address(py::class_<Class>& cls, const char* name, Pointee* Class::*member,
                 bool writable) {
  auto getter = [member](const Class& object) { return to_address(object.*member); };
  if (!writable) {
    cls.def_property_readonly(name, getter);
    return;
  }
  cls.def_property(name, getter, [member](Class& object, Address address) {
    object.*member = from_address<Pointee>(address);
  });
}

// Owns a Communicator that Python may close before garbage collection: the CUDA backend's
// destructor is collective (a barrier), so with ranks as threads it must run with the GIL
// released, or a peer thread could never reach its own.
class PyCommunicator {
 public:
  explicit PyCommunicator(std::unique_ptr<Communicator> comm) : comm_(std::move(comm)) {}

  Communicator& get() const {
    if (!comm_) throw Error(ErrorCode::kInvalidArgument, "the communicator is closed");
    return *comm_;
  }
  bool closed() const { return comm_ == nullptr; }
  // Collective for the CUDA backend; call with the GIL released.
  void close() { comm_.reset(); }

 private:
  std::unique_ptr<Communicator> comm_;
};

void bind_types(py::module_& m);        // enums, Config, the Error exception, copy_bytes
void bind_bootstrap(py::module_& m);    // Bootstrap (subclassable from Python), in-process ones
void bind_communicator(py::module_& m); // Communicator, DispatchHandle, DispatchResult
// The low-latency calls on Communicator, LowLatencyHandle and LowLatencyDispatchResult.
void bind_low_latency(py::module_& m, py::class_<PyCommunicator>& communicator);

}  // namespace epcomm::python
