"""Every public name and keyword of DeepEP V1 (deepseek-ai/DeepEP at 567632d: deep_ep/__init__.py,
buffer.py, utils.py) exists in epcomm with DeepEP's positional order and defaults; Config and its
recommended tables hold DeepEP's values. The lists below are written out from DeepEP's source,
so a name or keyword epcomm lacks fails here."""
import importlib
import inspect

import pytest
import torch

import _epcomm
import epcomm
from epcomm import buffer as epcomm_buffer

REQUIRED = object()  # a parameter without a default in DeepEP

BUFFER_METHODS = {
    "__init__": [("group", REQUIRED), ("num_nvl_bytes", 0), ("num_rdma_bytes", 0),
                 ("low_latency_mode", False), ("num_qps_per_rank", 24),
                 ("allow_nvlink_for_low_latency_mode", True), ("allow_mnnvl", False),
                 ("use_fabric", False), ("explicitly_destroy", False), ("enable_shrink", False),
                 ("comm", None)],
    "destroy": [],
    "is_sm90_compiled": [],
    "set_num_sms": [("new_num_sms", REQUIRED)],
    "capture": [],
    "get_low_latency_rdma_size_hint": [("num_max_dispatch_tokens_per_rank", REQUIRED),
                                       ("hidden", REQUIRED), ("num_ranks", REQUIRED),
                                       ("num_experts", REQUIRED)],
    "get_comm_stream": [],
    "get_local_buffer_tensor": [("dtype", REQUIRED), ("size", None), ("offset", 0),
                                ("use_rdma_buffer", False)],
    "get_dispatch_config": [("num_ranks", REQUIRED)],
    "get_combine_config": [("num_ranks", REQUIRED)],
    "get_dispatch_layout": [("topk_idx", REQUIRED), ("num_experts", REQUIRED),
                            ("previous_event", None), ("async_finish", False),
                            ("allocate_on_comm_stream", False)],
    "clean_low_latency_buffer": [("num_max_dispatch_tokens_per_rank", REQUIRED),
                                 ("hidden", REQUIRED), ("num_experts", REQUIRED)],
    "low_latency_dispatch": [("x", REQUIRED), ("topk_idx", REQUIRED),
                             ("num_max_dispatch_tokens_per_rank", REQUIRED),
                             ("num_experts", REQUIRED),
                             ("cumulative_local_expert_recv_stats", None),
                             ("dispatch_wait_recv_cost_stats", None), ("use_fp8", True),
                             ("round_scale", False), ("use_ue8m0", False),
                             ("async_finish", False), ("return_recv_hook", False)],
    "low_latency_combine": [("x", REQUIRED), ("topk_idx", REQUIRED), ("topk_weights", REQUIRED),
                            ("handle", REQUIRED), ("use_logfmt", False), ("zero_copy", False),
                            ("async_finish", False), ("return_recv_hook", False), ("out", None),
                            ("combine_wait_recv_cost_stats", None)],
    "low_latency_update_mask_buffer": [("rank_to_mask", REQUIRED), ("mask", False)],
    "low_latency_query_mask_buffer": [("mask_status", REQUIRED)],
    "low_latency_clean_mask_buffer": [],
    "get_next_low_latency_combine_buffer": [("handle", REQUIRED)],
}
_DISPATCH = [("x", REQUIRED), ("handle", None), ("num_tokens_per_rank", None),
             ("num_tokens_per_rdma_rank", None), ("is_token_in_rank", None),
             ("num_tokens_per_expert", None), ("topk_idx", None), ("topk_weights", None),
             ("expert_alignment", 1), ("num_worst_tokens", 0), ("config", None),
             ("previous_event", None), ("async_finish", False),
             ("allocate_on_comm_stream", False)]
_COMBINE = [("x", REQUIRED), ("handle", REQUIRED), ("topk_weights", None), ("bias", None),
            ("config", None), ("previous_event", None), ("async_finish", False),
            ("allocate_on_comm_stream", False)]
BUFFER_METHODS.update(dispatch=_DISPATCH, internode_dispatch=_DISPATCH, combine=_COMBINE,
                      internode_combine=_COMBINE)
STATIC_METHODS = ("is_sm90_compiled", "set_num_sms", "capture", "get_low_latency_rdma_size_hint",
                  "get_dispatch_config", "get_combine_config")
BUFFER_ATTRIBUTES = ("rank", "group", "group_size", "num_nvl_bytes", "num_rdma_bytes",
                     "low_latency_mode", "explicitly_destroy", "enable_shrink")

CONFIG_METHODS = {
    "__init__": [("num_sms", 20), ("num_max_nvl_chunked_send_tokens", 6),
                 ("num_max_nvl_chunked_recv_tokens", 256),
                 ("num_max_rdma_chunked_send_tokens", 6),
                 ("num_max_rdma_chunked_recv_tokens", 256)],
    "get_nvl_buffer_size_hint": [("hidden_bytes", REQUIRED), ("num_ranks", REQUIRED)],
    "get_rdma_buffer_size_hint": [("hidden_bytes", REQUIRED), ("num_ranks", REQUIRED)],
}
EVENT_OVERLAP_METHODS = {"__init__": [("event", None), ("extra_tensors", None)],
                         "current_stream_wait": [], "__enter__": [],
                         "__exit__": [("exc_type", REQUIRED), ("exc_val", REQUIRED),
                                      ("exc_tb", REQUIRED)]}
EVENT_HANDLE_METHODS = {"__init__": [], "current_stream_wait": []}

# Names a DeepEP program imports: from the package, deep_ep.buffer and deep_ep.utils.
MODULE_NAMES = {"epcomm": ("Buffer", "Config", "EventOverlap", "topk_idx_t"),
                "epcomm.buffer": ("Buffer",), "epcomm.utils": ("EventOverlap", "EventHandle")}


def check_parameters(where: str, function, deepep) -> None:
    """DeepEP's parameters come first, in DeepEP's order, each positional-or-keyword with
    DeepEP's default (epcomm may add a default where DeepEP has none); anything after them
    must be optional, so every DeepEP call binds. Names of __exit__'s arguments are free."""
    params = [p for p in inspect.signature(function).parameters.values() if p.name != "self"]
    assert len(params) >= len(deepep), f"{where}: {len(params)} parameters, DeepEP has {len(deepep)}"
    for index, ((name, default), param) in enumerate(zip(deepep, params)):
        if where.endswith("__exit__"):
            continue
        assert param.name == name, f"{where}: parameter {index} is {param.name}, DeepEP's is {name}"
        assert param.kind == param.POSITIONAL_OR_KEYWORD, f"{where}: {name} is {param.kind}"
        if default is not REQUIRED:
            assert param.default is not param.empty and param.default == default, (
                f"{where}: {name} defaults to {param.default!r}, DeepEP's to {default!r}")
    for param in params[len(deepep):]:
        assert param.default is not param.empty or param.kind == param.VAR_KEYWORD, (
            f"{where}: extra parameter {param.name} has no default")


@pytest.mark.parametrize("name", sorted(BUFFER_METHODS))
def test_buffer_methods_take_deepeps_parameters(name):
    check_parameters(f"Buffer.{name}", getattr(epcomm.Buffer, name), BUFFER_METHODS[name])


@pytest.mark.parametrize("cls, methods", [(epcomm.Config, CONFIG_METHODS),
                                          (epcomm.EventOverlap, EVENT_OVERLAP_METHODS),
                                          (epcomm.EventHandle, EVENT_HANDLE_METHODS)],
                         ids=["Config", "EventOverlap", "EventHandle"])
def test_other_classes_take_deepeps_parameters(cls, methods):
    for name, deepep in methods.items():
        check_parameters(f"{cls.__name__}.{name}", getattr(cls, name), deepep)


def test_the_parameter_check_catches_a_missing_or_moved_keyword():
    def missing(self, x, handle=None):
        pass

    def moved(self, x, num_tokens_per_rank=None, handle=None):
        pass

    def other_default(self, x, handle=0, num_tokens_per_rank=None):
        pass

    def required_extra(self, x, handle=None, num_tokens_per_rank=None, *, more):
        pass

    deepep = [("x", REQUIRED), ("handle", None), ("num_tokens_per_rank", None)]
    for function, message in ((missing, "2 parameters"), (moved, "parameter 1 is"),
                              (other_default, "defaults to 0"),
                              (required_extra, "extra parameter more")):
        with pytest.raises(AssertionError, match=message):
            check_parameters(function.__name__, function, deepep)


def test_static_methods_are_static():
    for name in STATIC_METHODS:
        assert isinstance(inspect.getattr_static(epcomm.Buffer, name), staticmethod), name


def test_module_names():
    for module_name, names in MODULE_NAMES.items():
        module = importlib.import_module(module_name)
        for name in names:
            assert hasattr(module, name), f"{module_name}.{name}"
    assert epcomm.utils.EventOverlap is epcomm.EventOverlap
    assert epcomm.topk_idx_t is torch.int64  # DeepEP's default TOPK_IDX_BITS = 64


def test_buffer_attributes():
    group = epcomm.make_thread_groups(1)[0]
    buffer = epcomm.Buffer(group, 4096, 128, low_latency_mode=True, explicitly_destroy=True)
    for name in BUFFER_ATTRIBUTES:
        assert hasattr(buffer, name), name
    assert (buffer.rank, buffer.group_size, buffer.group) == (0, 1, group)
    assert (buffer.num_nvl_bytes, buffer.num_rdma_bytes) == (4096, 128)
    assert (buffer.low_latency_mode, buffer.explicitly_destroy, buffer.enable_shrink) == (
        True, True, False)
    assert isinstance(epcomm.Buffer.num_sms, int)
    buffer.destroy()


# ---- is_sm90_compiled -------------------------------------------------------------------------

def test_is_sm90_compiled_reads_the_built_architectures():
    want = bool(_epcomm.BUILT_WITH_CUDA) and epcomm_buffer._sm90_in(_epcomm.CUDA_ARCHITECTURES)
    assert epcomm.Buffer.is_sm90_compiled() is want
    for archs, sm90 in (("90", True), ("90a", True), ("80,90-real", True), ("90-virtual", True),
                        ("all", True), ("all-major", True), ("80", False), ("100", False),
                        ("", False), ("89,100a", False)):
        assert epcomm_buffer._sm90_in(archs) is sm90, archs
