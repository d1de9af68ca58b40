"""The low-latency (decode) mode of Buffer: argument checks, the dispatch's outputs as views of
the communicator's buffers, and the receive hook (the calls themselves: _low_latency_calls.py)."""
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch

import _epcomm

from . import _args, _tensors, _views
from ._endpoint import Endpoint, EndpointKind
from ._streams import CallStreams


def check_cast_options(use_fp8: bool, round_scale: bool, use_ue8m0: bool, hidden: int) -> None:
    """DeepEP's rules for the fp8 cast options: use_ue8m0 needs round_scale (DeepEP asserts),
    and both shape the cast only, so with use_fp8=False they change nothing (DeepEP does not
    cast then either). UE8M0 codes are packed four to an int32, so hidden must be a multiple
    of 512 (DeepEP asserts that for every fp8 dispatch)."""
    if use_ue8m0 and not round_scale:
        raise ValueError("use_ue8m0=True needs round_scale=True (as in DeepEP): UE8M0 holds "
                         "power-of-two scales only")
    if use_fp8 and use_ue8m0 and hidden % (4 * _epcomm.FP8_SCALE_BLOCK):
        raise ValueError(f"use_ue8m0=True with hidden = {hidden}: the codes are packed four to "
                         f"an int32, so hidden must be a multiple of {4 * _epcomm.FP8_SCALE_BLOCK}")


def check_wait_stats(name: str, stats, num_ranks: int, device: torch.device) -> int:
    """The address of a [R] int64 wait-cost stats tensor, or 0 for None."""
    if stats is None:
        return 0
    _tensors.check_tensor(name, stats, (torch.int64,), (num_ranks,), device)
    return _tensors.address(stats)


def check_flags(async_finish: bool, return_recv_hook: bool) -> None:
    if async_finish and return_recv_hook:
        raise ValueError("async_finish=True and return_recv_hook=True: pick one (as in DeepEP); "
                         "the hook's caller already decides when the receive runs")


def check_dispatch(x, topk_idx, num_max_dispatch_tokens_per_rank, num_experts,
                   num_ranks: int, stats) -> Tuple[int, int, int]:
    """(T, H, K) of a low-latency dispatch's arguments, checked."""
    _tensors.check_tensor("x", x, (torch.bfloat16,), (None, None))
    num_tokens, hidden = x.shape
    _tensors.check_tensor("topk_idx", topk_idx, tuple(_tensors.INDEX_DTYPES), (num_tokens, None),
                          x.device)
    _args.check_count("num_max_dispatch_tokens_per_rank", num_max_dispatch_tokens_per_rank, 1)
    _args.check_num_experts("num_experts", num_experts, num_ranks)
    if num_tokens > num_max_dispatch_tokens_per_rank:
        raise ValueError(f"x has {num_tokens} tokens, more than num_max_dispatch_tokens_per_rank "
                         f"= {num_max_dispatch_tokens_per_rank}")
    if hidden % _epcomm.FP8_SCALE_BLOCK:
        raise ValueError(f"x has hidden = {hidden}: the low-latency mode needs a multiple of "
                         f"{_epcomm.FP8_SCALE_BLOCK} (one fp8 scale per block)")
    num_topk = topk_idx.shape[1]
    if num_topk < 1:
        raise ValueError("topk_idx has 0 columns; the low-latency mode needs at least one")
    if stats is not None:
        _tensors.check_tensor("cumulative_local_expert_recv_stats", stats, (torch.int32,),
                              (num_experts // num_ranks,), x.device)
    return num_tokens, hidden, num_topk


def check_same_communicator(endpoint: Endpoint, wanted: EndpointKind, num_topk: int) -> None:
    """A later dispatch must fit the low-latency communicator the first one created."""
    have = endpoint.kind
    for field, name in (("ll_max_tokens_per_rank", "num_max_dispatch_tokens_per_rank"),
                        ("hidden", "x's hidden size"), ("num_experts", "num_experts"),
                        ("index_type", "topk_idx's dtype"), ("backend", "the backend")):
        if getattr(wanted, field) != getattr(have, field):
            raise ValueError(
                f"{name} = {_shown(getattr(wanted, field))}, but this Buffer's low-latency "
                f"buffers were made for {_shown(getattr(have, field))} by its first "
                "low_latency_dispatch (epcomm fixes M, hidden, num_experts and the index type "
                "there; use another Buffer for other sizes)")
    if num_topk > endpoint.config.max_topk:
        raise ValueError(f"topk_idx has {num_topk} columns, but this Buffer's low-latency "
                         f"communicator was created for max_topk = {endpoint.config.max_topk} "
                         "(pass max_topk to Buffer)")


def _shown(value) -> str:
    return value.name if hasattr(value, "name") else str(value)


@dataclass
class Received:
    """Views of one low-latency dispatch's outputs (see LowLatencyDispatchResult)."""
    x: torch.Tensor                 # [Le, R * M, H] bf16, or fp8 bytes
    # fp8 only: [Le, R * M, H / 128] fp32, or with use_ue8m0 [Le, R * M, H / 512] int32 (four
    # UE8M0 codes each, the first block's in the low byte)
    scales: Optional[torch.Tensor]
    count: torch.Tensor             # [Le] int32
    src: torch.Tensor               # [Le, R * M, 3] int32
    layout_range: torch.Tensor      # [Le, R, 2] int32


def received_views(result, endpoint: Endpoint, use_fp8: bool, use_ue8m0: bool,
                   device: torch.device) -> Received:
    num_local = endpoint.experts_per_rank
    rows, hidden = result.rows_per_expert, endpoint.kind.hidden

    def view(address: int, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        return _views.view(address, shape, dtype, device)

    x_dtype = _tensors.FP8_DTYPES[0] if use_fp8 else torch.bfloat16
    scales = None
    if use_fp8 and use_ue8m0:
        scales = view(result.recv_scale_codes,
                      (num_local, rows, hidden // (4 * _epcomm.FP8_SCALE_BLOCK)), torch.int32)
    elif use_fp8:
        scales = view(result.recv_scales, (num_local, rows, hidden // _epcomm.FP8_SCALE_BLOCK),
                      torch.float32)
    return Received(view(result.recv_x, (num_local, rows, hidden), x_dtype), scales,
                    view(result.recv_count, (num_local,), torch.int32),
                    view(result.recv_src, (num_local, rows, 3), torch.int32),
                    view(result.layout_range, (num_local, endpoint.comm.num_ranks(), 2),
                         torch.int32))


def receive_hook(endpoint: Endpoint, native, streams: CallStreams, after: Callable[[], None],
                 keep_alive: Tuple) -> Callable[[], None]:
    """The hook a send_only call returns: it finishes the call (low_latency_receive) as if it
    ran on the caller's current stream, then runs `after`. It holds `keep_alive` (the call's
    tensors) until then: the host reference reads its peers' inputs while it receives."""
    held = list(keep_alive)

    def hook() -> None:
        comm_stream = streams.comm
        if comm_stream is not None:
            comm_stream.wait_stream(torch.cuda.current_stream(comm_stream.device))
        endpoint.comm.low_latency_receive(native)
        after()
        if comm_stream is not None:
            torch.cuda.current_stream(comm_stream.device).wait_stream(comm_stream)
        held.clear()
    return hook
