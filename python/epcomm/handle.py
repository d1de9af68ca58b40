"""DispatchHandle: what combine and a cached dispatch need from a dispatch."""
from typing import Optional

import torch

from ._endpoint import Endpoint


class DispatchHandle:
    """The routing of one dispatch. Pass it unchanged to combine, or to dispatch(handle=...) to
    send new rows of the same tokens along the same routes.

    Differences from DeepEP, whose handle is a tuple of routing tensors: this one is opaque,
    and it follows its routing: a cached dispatch makes the handle refer to that newest
    dispatch, so `combine(y, handle)` answers it. epcomm combines only the latest dispatch of a
    communicator (its received rows are reused by the next one); combining an older handle
    raises EpcommError with code ErrorCode.stale_handle.
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

    @property
    def num_recv_rows(self) -> int:
        """Rows of recv_x, and of combine's x: num_recv, or num_worst_tokens in worst-case mode."""
        return self.num_worst_tokens if self.num_worst_tokens else self.num_recv

    def __repr__(self) -> str:
        recv = self.num_recv if self.num_recv is not None else f"<= {self.num_worst_tokens}"
        return (f"DispatchHandle(num_tokens={self.num_tokens}, num_topk={self.num_topk}, "
                f"num_recv={recv}, epoch={self._native.epoch})")
