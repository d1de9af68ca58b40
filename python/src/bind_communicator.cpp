// Communicator for Python: every array is an address (host memory for Backend.host, device
// memory for Backend.cuda); shapes and dtypes are checked by the C++ API against its Config.
// Blocking calls release the GIL, so ranks that are Python threads can meet in a collective.
#include <memory>
#include <string>
#include <utility>

#include "bindings.hpp"
#include "epcomm/epcomm.hpp"

namespace epcomm::python {
namespace {

void bind_handle_and_results(py::module_& m) {
  py::class_<DispatchHandle>(m, "DispatchHandle", "Routing of one dispatch (opaque).")
      .def_property_readonly("valid", &DispatchHandle::valid)
      .def_property_readonly("num_tokens", &DispatchHandle::num_tokens)
      .def_property_readonly("num_recv", &DispatchHandle::num_recv)
      .def_property_readonly("epoch", &DispatchHandle::epoch);

  py::class_<DispatchOutputs> outputs(
      m, "DispatchOutputs", "Caller-owned output addresses, each sized for recv_capacity rows.");
  outputs.def(py::init<>());
  def_address(outputs, "recv_x", &DispatchOutputs::recv_x, true);
  def_address(outputs, "recv_scales", &DispatchOutputs::recv_scales, true);
  def_address(outputs, "recv_topk_idx", &DispatchOutputs::recv_topk_idx, true);
  def_address(outputs, "recv_topk_weights", &DispatchOutputs::recv_topk_weights, true);
  def_address(outputs, "recv_src", &DispatchOutputs::recv_src, true);
  def_address(outputs, "num_recv_per_expert", &DispatchOutputs::num_recv_per_expert, true);

  py::class_<DispatchResult> result(m, "DispatchResult", "Addresses of a dispatch's outputs.");
  result.def_readonly("handle", &DispatchResult::handle)
      .def_readonly("num_recv", &DispatchResult::num_recv);
  def_address(result, "num_recv_device", &DispatchResult::num_recv_device, false);
  def_address(result, "recv_x", &DispatchResult::recv_x, false);
  def_address(result, "recv_scales", &DispatchResult::recv_scales, false);
  def_address(result, "recv_topk_idx", &DispatchResult::recv_topk_idx, false);
  def_address(result, "recv_topk_weights", &DispatchResult::recv_topk_weights, false);
  def_address(result, "recv_src", &DispatchResult::recv_src, false);
  def_address(result, "num_recv_per_expert", &DispatchResult::num_recv_per_expert, false);
  def_address(result, "recv_topk_slot", &DispatchResult::recv_topk_slot, false);
  def_address(result, "recv_weight", &DispatchResult::recv_weight, false);
  def_address(result, "expert_offsets", &DispatchResult::expert_offsets, false);
}

DispatchResult dispatch(const PyCommunicator& self, Address x, Address x_scales,
                        int scales_per_token, Address topk_idx, Address topk_weights,
                        int num_tokens, int num_topk, bool wait_num_recv,
                        const DispatchOutputs& outputs, RecvLayout layout, int expert_alignment) {
  DispatchInputs in;
  in.x = from_address<const void>(x);
  in.x_scales = from_address<const float>(x_scales);
  in.scales_per_token = scales_per_token;
  in.topk_idx = from_address<const void>(topk_idx);
  in.topk_weights = from_address<const float>(topk_weights);
  in.num_tokens = num_tokens;
  in.num_topk = num_topk;
  DispatchOptions options;
  options.wait_num_recv = wait_num_recv;
  options.outputs = outputs;
  options.layout = layout;
  options.expert_alignment = expert_alignment;
  return self.get().dispatch(in, options);
}

DispatchResult dispatch_cached(const PyCommunicator& self, const DispatchHandle& handle, Address x,
                               Address x_scales, bool wait_num_recv, const DispatchOutputs& outputs,
                               RecvLayout layout) {
  DispatchOptions options;
  options.wait_num_recv = wait_num_recv;
  options.outputs = outputs;
  options.layout = layout;
  return self.get().dispatch_cached(handle, from_address<const void>(x),
                                    from_address<const float>(x_scales), options);
}

void get_dispatch_layout(const PyCommunicator& self, Address topk_idx, int num_tokens, int num_topk,
                         Address num_tokens_per_rank, Address num_tokens_per_expert,
                         Address is_token_in_rank) {
  LayoutOutputs out;
  out.num_tokens_per_rank = from_address<int>(num_tokens_per_rank);
  out.num_tokens_per_expert = from_address<int>(num_tokens_per_expert);
  out.is_token_in_rank = from_address<bool>(is_token_in_rank);
  self.get().get_dispatch_layout(from_address<const void>(topk_idx), num_tokens, num_topk, out);
}

}  // namespace

void bind_communicator(py::module_& m) {
  bind_handle_and_results(m);
  using release_gil = py::call_guard<py::gil_scoped_release>;
  py::class_<PyCommunicator> communicator(
      m, "Communicator",
      "epcomm::Communicator, one rank's endpoint. See include/epcomm/communicator.hpp for every "
      "call's contract.");
  communicator
      .def_static(
          "create",
          [](std::shared_ptr<Bootstrap> bootstrap, const Config& config, Backend backend,
             int device) {
            return std::make_unique<PyCommunicator>(
                Communicator::create(std::move(bootstrap), config, backend, device));
          },
          py::arg("bootstrap"), py::arg("config"), py::arg("backend"), py::arg("device") = -1,
          // The communicator calls the bootstrap (maybe a Python object) until it is destroyed.
          py::keep_alive<0, 1>(), release_gil(), "Collective: every rank calls it alike.")
      .def_property_readonly("closed", &PyCommunicator::closed)
      .def("close", &PyCommunicator::close, release_gil(),
           "Destroys the communicator now (collective for the CUDA backend).")
      .def("rank", [](const PyCommunicator& c) { return c.get().rank(); })
      .def("num_ranks", [](const PyCommunicator& c) { return c.get().num_ranks(); })
      .def("backend", [](const PyCommunicator& c) { return c.get().backend(); })
      .def("config", [](const PyCommunicator& c) { return c.get().config(); })
      .def("recv_capacity", [](const PyCommunicator& c) { return c.get().recv_capacity(); })
      .def(
          "set_stream",
          [](const PyCommunicator& c, Address stream) {
            c.get().set_stream(from_address<CUstream_st>(stream));
          },
          py::arg("stream"), release_gil())
      .def("stream", [](const PyCommunicator& c) { return to_address(c.get().stream()); })
      .def("get_dispatch_layout", &get_dispatch_layout, py::arg("topk_idx"), py::arg("num_tokens"),
           py::arg("num_topk"), py::arg("num_tokens_per_rank"), py::arg("num_tokens_per_expert"),
           py::arg("is_token_in_rank"), release_gil())
      .def("dispatch", &dispatch, py::arg("x"), py::arg("x_scales"), py::arg("scales_per_token"),
           py::arg("topk_idx"), py::arg("topk_weights"), py::arg("num_tokens"), py::arg("num_topk"),
           py::arg("wait_num_recv") = true, py::arg("outputs") = DispatchOutputs{},
           py::arg("layout") = RecvLayout::kTokenMajor, py::arg("expert_alignment") = 0,
           release_gil())
      .def("dispatch_cached", &dispatch_cached, py::arg("handle"), py::arg("x"),
           py::arg("x_scales"), py::arg("wait_num_recv") = true,
           py::arg("outputs") = DispatchOutputs{}, py::arg("layout") = RecvLayout::kTokenMajor,
           release_gil())
      .def("combine_input",
           [](const PyCommunicator& c) { return to_address(c.get().combine_input()); })
      .def(
          "combine",
          [](const PyCommunicator& c, Address y, const DispatchHandle& handle, Address out,
             Address bias, Address bias2, bool apply_weights) {
            CombineOptions options;
            options.bias = from_address<const void>(bias);
            options.bias2 = from_address<const void>(bias2);
            options.apply_weights = apply_weights;
            c.get().combine(from_address<const void>(y), handle, from_address<void>(out), options);
          },
          py::arg("y"), py::arg("handle"), py::arg("out"), py::arg("bias") = Address{0},
          py::arg("bias2") = Address{0}, py::arg("apply_weights") = false, release_gil())
      .def(
          "synchronize", [](const PyCommunicator& c) { c.get().synchronize(); }, release_gil());
  bind_low_latency(m, communicator);
}

}  // namespace epcomm::python
