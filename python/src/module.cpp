// The _epcomm extension: epcomm's C++ API for the epcomm Python package. Arrays cross as
// addresses, shapes and dtypes; nothing here knows PyTorch.
#include "bindings.hpp"
#include "epcomm/version.hpp"

PYBIND11_MODULE(_epcomm, m) {
  m.doc() = "epcomm C++ API (arrays by address); use the epcomm package instead";
  // The library's version (from CMake's project()), which epcomm.__version__ re-exports.
  m.attr("__version__") = epcomm::version();
  epcomm::python::bind_types(m);
  epcomm::python::bind_bootstrap(m);
  epcomm::python::bind_communicator(m);
}
