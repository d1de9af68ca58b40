"""DispatchHandle and LowLatencyHandle: what a combine (and a cached dispatch) needs from its
dispatch."""
from typing import Optional

import torch

from ._endpoint import Endpoint


class DispatchHandle:
    """The routing of one dispatch. Pass it unchanged to combine, or to dispatch(handle=...) to
    send new rows of the same tokens along the same routes.

    Differences from DeepEP, whose handle is a tuple of routing tensors: this one is opaque,
    and it follows its routing: a cached dispatch makes the handle refer to that newest
    dispatch, so `combine(y, handle)` answers it. epcomm combines only the latest dispatch of a
    communicator (its received rows are reused by the next one). A Buffer keeps two such
    communicators (pools) per kind: a dispatch goes to a pool whose latest dispatch was already
    combined, so two dispatches can await their combines at once (vLLM's dual-batch overlap);
    a third overwrites the older of the two, and combining a handle overwritten so raises
    EpcommError with code ErrorCode.stale_handle.
    """

    def __init__(self, owner, endpoint: Endpoint, native, num_tokens: int, num_topk: int,
                 num_recv: Optional[int], num_worst_tokens: int,
                 combined_topk_weights: torch.Tensor) -> None:
        self._owner = owner  # the Buffer that made it
        self._endpoint = endpoint
        self._native = native  # _epcomm.DispatchHandle of the latest dispatch on this routing
        self.num_tokens = num_tokens
        self.num_topk = num_topk
        self.num_recv = num_recv  # None in worst-case mode: the host never learns it
        self.num_worst_tokens = num_worst_tokens
        # [num_tokens, num_topk] fp32: what combine returns as combined_topk_weights.
        self._combined_topk_weights = combined_topk_weights
        # dispatch(layout=...): "token_major", or "expert_major" with the rows' pair data.
        self.layout = "token_major"
        self.recv_src: Optional[torch.Tensor] = None        # [n, 2] int32
        self.recv_topk_slot: Optional[torch.Tensor] = None  # [n] int32
        self.recv_weight: Optional[torch.Tensor] = None     # [n] fp32
        self.expert_offsets: Optional[torch.Tensor] = None  # [Le + 1] int32

    def set_expert_major(self, recv_src: torch.Tensor, recv_topk_slot: torch.Tensor,
                         recv_weight: torch.Tensor, expert_offsets: torch.Tensor) -> None:
        """The handle of an expert-major dispatch: its rows' pair data."""
        self.layout = "expert_major"
        self.recv_src = recv_src
        self.recv_topk_slot = recv_topk_slot
        self.recv_weight = recv_weight
        self.expert_offsets = expert_offsets

    @property
    def num_recv_rows(self) -> int:
        """Rows of recv_x, and of combine's x: num_recv, or num_worst_tokens in worst-case mode."""
        return self.num_worst_tokens if self.num_worst_tokens else self.num_recv

    def __repr__(self) -> str:
        recv = self.num_recv if self.num_recv is not None else f"<= {self.num_worst_tokens}"
        return (f"DispatchHandle(num_tokens={self.num_tokens}, num_topk={self.num_topk}, "
                f"num_recv={recv}, epoch={self._native.epoch})")


class LowLatencyHandle:
    """One low-latency dispatch, for its combine: pass it unchanged to low_latency_combine.

    Differences from DeepEP, whose handle is the tuple (src_info, layout_range,
    num_max_dispatch_tokens_per_rank, hidden, num_experts): this is an object with those as
    attributes. recv_src ([Le, R * M, 3] int32: source rank, token, top-k slot of each received
    row) and layout_range ([Le, R, 2] int32: first row and row count from each source rank) are
    views of the communicator's buffers, like recv_x: valid until the low-latency dispatch two
    calls later.
    """

    def __init__(self, owner, endpoint: Endpoint, native, num_tokens: int, num_topk: int,
                 use_fp8: bool, recv_src: torch.Tensor, layout_range: torch.Tensor) -> None:
        self._owner = owner  # the Buffer that made it
        self._endpoint = endpoint
        self._native = native  # _epcomm.LowLatencyHandle
        self.num_tokens = num_tokens
        self.num_topk = num_topk
        self.use_fp8 = use_fp8
        self.recv_src = recv_src
        self.layout_range = layout_range
        self.num_max_dispatch_tokens_per_rank = endpoint.kind.ll_max_tokens_per_rank
        self.hidden = endpoint.kind.hidden
        self.num_experts = endpoint.kind.num_experts

    @property
    def src_info(self) -> torch.Tensor:
        """DeepEP's name for recv_src."""
        return self.recv_src

    def __repr__(self) -> str:
        return (f"LowLatencyHandle(call={self._native.call}, num_tokens={self.num_tokens}, "
                f"num_topk={self.num_topk}, use_fp8={self.use_fp8})")
