"""epcomm: expert-parallel dispatch and combine for Mixture-of-Experts layers.

`epcomm.Buffer` follows DeepEP's V1 API (high-throughput and low-latency), so a DeepEP caller
switches with `import epcomm as deep_ep`; each method's docstring lists where epcomm's semantics
differ.
docs/python.md explains the design. The C++ library does the work, through the extension
module _epcomm (arrays cross as addresses; the C++ side never sees PyTorch).
"""
import torch
from _epcomm import Error as EpcommError
from _epcomm import ErrorCode
from _epcomm import __version__  # the C++ library's, set by project(VERSION) in CMakeLists.txt

from . import utils  # noqa: F401  (deep_ep.utils is there after `import deep_ep` too)
from .buffer import Buffer
from .config import Config
from .event import EventHandle, EventOverlap
from .groups import ThreadGroup, TorchGroupBootstrap, make_thread_groups
from .handle import DispatchHandle, LowLatencyHandle

# DeepEP's topk_idx_t: the dtype of topk_idx in DeepEP's default build (TOPK_IDX_BITS = 64).
# epcomm takes torch.int32 ids as well.
topk_idx_t = torch.int64

__all__ = [
    "Buffer",
    "Config",
    "DispatchHandle",
    "EpcommError",
    "ErrorCode",
    "EventHandle",
    "EventOverlap",
    "LowLatencyHandle",
    "ThreadGroup",
    "TorchGroupBootstrap",
    "make_thread_groups",
    "topk_idx_t",
]
