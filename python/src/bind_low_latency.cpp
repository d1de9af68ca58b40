// The low-latency (decode) calls for Python: arrays by address, as for the high-throughput
// calls. The result's addresses are the communicator's own buffers (views, valid until the
// low-latency dispatch two calls later); blocking calls release the GIL.
#include "bindings.hpp"
#include "epcomm/epcomm.hpp"

namespace epcomm::python {
namespace {

void bind_handle_and_result(py::module_& m) {
  py::class_<LowLatencyHandle>(m, "LowLatencyHandle",
                               "One low-latency dispatch and its combine (opaque).")
      .def_property_readonly("valid", &LowLatencyHandle::valid)
      .def_property_readonly("call", &LowLatencyHandle::call)
      .def_property_readonly("buffer", &LowLatencyHandle::buffer)
      .def_property_readonly("num_tokens", &LowLatencyHandle::num_tokens)
      .def_property_readonly("num_topk", &LowLatencyHandle::num_topk)
      .def_property_readonly("use_fp8", &LowLatencyHandle::use_fp8);

  py::class_<LowLatencyDispatchResult> result(
      m, "LowLatencyDispatchResult",
      "Addresses of a low-latency dispatch's outputs: recv_x [Le][R*M][H] (bf16, or fp8 bytes), "
      "recv_scales [Le][R*M][H/128] fp32 (fp8 without use_ue8m0, else 0), recv_scale_codes "
      "[Le][R*M][H/128] uint8 UE8M0 (use_ue8m0 only, else 0), recv_count [Le] int32, recv_src "
      "[Le][R*M][3] int32 (rank, token, top-k slot), layout_range [Le][R][2] int32.");
  result.def_readonly("handle", &LowLatencyDispatchResult::handle)
      .def_readonly("rows_per_expert", &LowLatencyDispatchResult::rows_per_expert);
  def_address(result, "recv_x", &LowLatencyDispatchResult::recv_x, false);
  def_address(result, "recv_scales", &LowLatencyDispatchResult::recv_scales, false);
  def_address(result, "recv_scale_codes", &LowLatencyDispatchResult::recv_scale_codes, false);
  def_address(result, "recv_count", &LowLatencyDispatchResult::recv_count, false);
  def_address(result, "recv_src", &LowLatencyDispatchResult::recv_src, false);
  def_address(result, "layout_range", &LowLatencyDispatchResult::layout_range, false);
}

LowLatencyDispatchResult dispatch(const PyCommunicator& self, Address x, Address topk_idx,
                                  int num_tokens, int num_topk, bool use_fp8, bool send_only,
                                  bool round_scale, bool use_ue8m0, Address wait_cost_stats) {
  LowLatencyDispatchInputs in;
  in.x = from_address<const void>(x);
  in.topk_idx = from_address<const void>(topk_idx);
  in.num_tokens = num_tokens;
  in.num_topk = num_topk;
  in.use_fp8 = use_fp8;
  in.round_scale = round_scale;
  in.use_ue8m0 = use_ue8m0;
  in.wait_cost_stats = from_address<int64_t>(wait_cost_stats);
  return self.get().low_latency_dispatch(in, send_only);
}

void combine(const PyCommunicator& self, Address y, Address topk_idx, Address topk_weights,
             const LowLatencyHandle& handle, Address out, bool send_only,
             Address wait_cost_stats) {
  LowLatencyCombineOptions options;
  options.wait_cost_stats = from_address<int64_t>(wait_cost_stats);
  self.get().low_latency_combine(from_address<const void>(y), from_address<const void>(topk_idx),
                                 from_address<const float>(topk_weights), handle,
                                 from_address<void>(out), send_only, options);
}

}  // namespace

void bind_low_latency(py::module_& m, py::class_<PyCommunicator>& communicator) {
  bind_handle_and_result(m);
  using release_gil = py::call_guard<py::gil_scoped_release>;
  communicator
      .def("low_latency_dispatch", &dispatch, py::arg("x"), py::arg("topk_idx"),
           py::arg("num_tokens"), py::arg("num_topk"), py::arg("use_fp8") = false,
           py::arg("send_only") = false, py::arg("round_scale") = false,
           py::arg("use_ue8m0") = false, py::arg("wait_cost_stats") = 0, release_gil(),
           "Collective. x: [T][H] bf16, topk_idx: [T][K] of the Config's index type, "
           "wait_cost_stats: [R] int64 or 0.")
      .def("low_latency_combine", &combine, py::arg("y"), py::arg("topk_idx"),
           py::arg("topk_weights"), py::arg("handle"), py::arg("out"), py::arg("send_only") = false,
           py::arg("wait_cost_stats") = 0, release_gil(),
           "Collective. y: [Le][R*M][H] bf16 in the dispatch's row order, topk_idx as given to "
           "the dispatch, topk_weights: [T][K] fp32, out: [T][H] bf16, wait_cost_stats: [R] "
           "int64 or 0.")
      .def(
          "low_latency_update_mask",
          [](const PyCommunicator& c, int rank, bool masked) {
            c.get().low_latency_update_mask(rank, masked);
          },
          py::arg("rank"), py::arg("masked"), "Local, ordered on the stream.")
      .def(
          "low_latency_query_mask",
          [](const PyCommunicator& c, Address mask_out) {
            c.get().low_latency_query_mask(from_address<int32_t>(mask_out));
          },
          py::arg("mask_out"), "Local: writes [R] int32 (1 masked) in the backend's memory.")
      .def(
          "low_latency_clean_mask",
          [](const PyCommunicator& c) { c.get().low_latency_clean_mask(); },
          "Local: unmasks every rank.")
      .def(
          "low_latency_receive",
          [](const PyCommunicator& c, const LowLatencyHandle& handle) {
            c.get().low_latency_receive(handle);
          },
          py::arg("handle"), release_gil(),
          "Finishes the send_only dispatch or combine pending on the handle's buffer.");
}

}  // namespace epcomm::python
