"""A dispatch's received rows as new tensors.

Exact sizes: the C++ call returns views into the communicator's receive pool, valid until its
next dispatch; they are copied (on the communication stream) into tensors of num_recv rows.
Worst-case sizes: the tensors (num_worst_tokens rows, which is the pool's capacity) are passed
to the C++ call as its outputs and written in place, with no host sync.
"""
from dataclasses import dataclass, field
from typing import List, Optional

import torch

import _epcomm

from . import _tensors
from ._endpoint import Endpoint
from ._streams import CallStreams


@dataclass
class ReceivedRows:
    native_handle: "_epcomm.DispatchHandle"
    num_recv: Optional[int]  # None when only the device knows it
    x: torch.Tensor
    scales: Optional[torch.Tensor]
    topk_idx: Optional[torch.Tensor] = None  # None for a cached dispatch (num_topk = 0)
    topk_weights: Optional[torch.Tensor] = None
    per_expert: List[int] = field(default_factory=list)  # exact fresh dispatch only
    # Expert-major fresh dispatch only: per row (source rank, token) [n, 2] int32, top-k slot
    # [n] int32, weight [n] fp32; each group's first row, then n: [Le + 1] int32.
    pair_src: Optional[torch.Tensor] = None
    pair_slot: Optional[torch.Tensor] = None
    pair_weight: Optional[torch.Tensor] = None
    expert_offsets: Optional[torch.Tensor] = None


def _allocate(endpoint: Endpoint, streams: CallStreams, rows: int, x_dtype: torch.dtype,
              num_topk: int, device: torch.device) -> ReceivedRows:
    hidden = endpoint.kind.hidden
    with streams.allocating():
        x = torch.empty(rows, hidden, dtype=x_dtype, device=device)
        scales = None
        if endpoint.kind.dtype == _epcomm.DType.fp8_e4m3:
            scales = torch.empty(rows, hidden // _epcomm.FP8_SCALE_BLOCK, dtype=torch.float32,
                                 device=device)
        received = ReceivedRows(None, None, x, scales)
        if num_topk:
            index_dtype = _tensors.TORCH_INDEX_DTYPES[endpoint.kind.index_type]
            received.topk_idx = torch.empty(rows, num_topk, dtype=index_dtype, device=device)
            received.topk_weights = torch.empty(rows, num_topk, dtype=torch.float32, device=device)
    return received


def receive_exact(endpoint: Endpoint, streams: CallStreams, args: dict, x_dtype: torch.dtype,
                  num_topk: int, device: torch.device, native=None,
                  expert_major: bool = False, expert_alignment: int = 0) -> ReceivedRows:
    """Dispatches with exact sizes (a fresh dispatch when native is None, else a cached one
    along `native`) and copies the received rows out of the pool. A fresh dispatch also reads
    the per-expert counts, which makes the host wait for the whole dispatch, and its
    per-row meta: the token-major top-k ids and weights, or with `expert_major` (RecvLayout:
    one row per (token, local expert) pair, grouped by expert, groups aligned to
    `expert_alignment`, padding zeroed) each row's pair data and the group offsets."""
    comm = endpoint.comm
    layout = _epcomm.RecvLayout.expert_major if expert_major else _epcomm.RecvLayout.token_major
    if native is None:
        result = comm.dispatch(**args, wait_num_recv=True, layout=layout,
                               expert_alignment=expert_alignment)
    else:
        result = comm.dispatch_cached(native, args["x"], args["x_scales"], wait_num_recv=True,
                                      layout=layout)
    n, num_local = result.num_recv, endpoint.experts_per_rank
    received = _allocate(endpoint, streams, n, x_dtype, 0 if expert_major else num_topk, device)
    received.native_handle = result.handle
    received.num_recv = n
    copies = [(received.x, result.recv_x), (received.scales, result.recv_scales)]
    if native is None and expert_major:
        _allocate_pairs(received, streams, n, num_local, device)
        copies += [(received.pair_src, result.recv_src),
                   (received.pair_slot, result.recv_topk_slot),
                   (received.pair_weight, result.recv_weight),
                   (received.expert_offsets, result.expert_offsets)]
    elif native is None:
        copies += [(received.topk_idx, result.recv_topk_idx),
                   (received.topk_weights, result.recv_topk_weights)]
    stream = streams.address
    for tensor, address in copies:
        if tensor is not None:
            _tensors.copy_from_address(tensor, address, stream)
    if native is None:
        counts = torch.empty(num_local, dtype=torch.int32)
        _epcomm.copy_bytes(counts.data_ptr(), result.num_recv_per_expert, _tensors.nbytes(counts),
                           stream, device.type == "cuda")
        comm.synchronize()  # the counts are final, and device-side errors surface here
        received.per_expert = counts.tolist()
    return received


def receive_into_worst_case(endpoint: Endpoint, streams: CallStreams, args: dict, rows: int,
                            x_dtype: torch.dtype, num_topk: int, device: torch.device,
                            native=None, expert_major: bool = False,
                            expert_alignment: int = 0) -> ReceivedRows:
    """Dispatches with worst-case sizes into new tensors of `rows` rows; nothing waits on the
    host. Rows past the received ones keep recv_topk_idx -1 and weight 0. With `expert_major`
    (a fresh dispatch) the rows are pairs and padding, and the pair data is filled on the
    device: past the received rows recv_src and recv_topk_slot hold -1 and recv_weight 0;
    expert_offsets [Le + 1] ends with the number of rows received."""
    received = _allocate(endpoint, streams, rows, x_dtype, 0 if expert_major else num_topk,
                         device)
    outputs = _epcomm.DispatchOutputs()
    outputs.recv_x = _tensors.address(received.x)
    outputs.recv_scales = _tensors.address(received.scales)
    if num_topk and not expert_major:
        with streams.working():  # before the dispatch's own writes, on the same stream
            received.topk_idx.fill_(-1)
            received.topk_weights.zero_()
        outputs.recv_topk_idx = _tensors.address(received.topk_idx)
        outputs.recv_topk_weights = _tensors.address(received.topk_weights)
    pairs = expert_major and native is None
    if pairs:
        _allocate_pairs(received, streams, rows, endpoint.experts_per_rank, device)
        with streams.working():
            received.pair_src.fill_(-1)
        outputs.recv_src = _tensors.address(received.pair_src)
    layout = _epcomm.RecvLayout.expert_major if expert_major else _epcomm.RecvLayout.token_major
    if native is None:
        result = endpoint.comm.dispatch(**args, wait_num_recv=False, outputs=outputs,
                                        layout=layout, expert_alignment=expert_alignment)
    else:
        result = endpoint.comm.dispatch_cached(native, args["x"], args["x_scales"],
                                               wait_num_recv=False, outputs=outputs,
                                               layout=layout)
    received.native_handle = result.handle
    if pairs:
        _fill_pairs_on_device(received, result, streams, rows, device)
    return received


def _allocate_pairs(received: ReceivedRows, streams: CallStreams, rows: int, num_local: int,
                    device: torch.device) -> None:
    with streams.allocating():
        received.pair_src = torch.empty(rows, 2, dtype=torch.int32, device=device)
        received.pair_slot = torch.empty(rows, dtype=torch.int32, device=device)
        received.pair_weight = torch.empty(rows, dtype=torch.float32, device=device)
        received.expert_offsets = torch.empty(num_local + 1, dtype=torch.int32, device=device)


def _fill_pairs_on_device(received: ReceivedRows, result, streams: CallStreams, rows: int,
                          device: torch.device) -> None:
    """The pool's slot, weight and offsets views after a worst-case dispatch, copied on the
    communication stream; rows at or past the received count (only the device knows it) are
    marked."""
    stream = streams.address
    with streams.working():  # owned by the communication stream, which alone uses it
        num_recv = torch.empty(1, dtype=torch.int32, device=device)
    for tensor, address in ((received.pair_slot, result.recv_topk_slot),
                            (received.pair_weight, result.recv_weight),
                            (received.expert_offsets, result.expert_offsets),
                            (num_recv, result.num_recv_device)):
        _tensors.copy_from_address(tensor, address, stream)
    with streams.working():
        past = torch.arange(rows, dtype=torch.int32, device=device) >= num_recv
        received.pair_slot.masked_fill_(past, -1)
        received.pair_weight.masked_fill_(past, 0.0)
