// Shared declarations of the _epcomm extension: one bind_* function per source file.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

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

void bind_types(py::module_& m);        // enums, Config, the Error exception, copy_bytes
void bind_bootstrap(py::module_& m);    // Bootstrap (subclassable from Python), in-process ones
void bind_communicator(py::module_& m); // Communicator, DispatchHandle, DispatchResult

}  // namespace epcomm::python
