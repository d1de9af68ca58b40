"""The low-latency (decode) calls of Buffer, DeepEP V1's low_latency_* methods, as a mixin class:
Buffer (buffer.py) owns the low-latency communicator these calls use; _low_latency.py holds
their checks, output views and receive hook."""
from dataclasses import replace
from typing import Callable, Optional, Tuple, Union

import torch

import _epcomm

from . import _low_latency, _tensors
from ._endpoint import EndpointKind
from ._unsupported import unsupported
from .event import EventOverlap
from .handle import LowLatencyHandle

XType = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]
Hook = Optional[Callable[[], None]]


class LowLatencyCalls:
    """DeepEP's low-latency calls; mixed into Buffer."""

    def low_latency_dispatch(self, x: torch.Tensor, topk_idx: torch.Tensor,
                             num_max_dispatch_tokens_per_rank: int, num_experts: int,
                             cumulative_local_expert_recv_stats: Optional[torch.Tensor] = None,
                             dispatch_wait_recv_cost_stats: Optional[torch.Tensor] = None,
                             use_fp8: bool = True, round_scale: bool = False,
                             use_ue8m0: bool = False, async_finish: bool = False,
                             return_recv_hook: bool = False
                             ) -> Tuple[XType, torch.Tensor, LowLatencyHandle, EventOverlap, Hook]:
        """Collective; needs low_latency_mode=True. Sends each token once to each of its
        experts (a repeated id once, under its first slot) straight into a fixed slot at the
        expert's rank: no count exchange, nothing waits on the host. Returns (recv_x,
        recv_count, handle, event, hook).

        x: [T, H] bf16, T <= M = num_max_dispatch_tokens_per_rank, H a multiple of 128, finite
            when use_fp8. topk_idx: [T, K] int64 (or int32), ids in [-1, num_experts); -1 sends
            nothing.
        recv_x: [Le, R * M, H] bf16; with use_fp8 the tuple (rows [Le, R * M, H] as
            torch.float8_e4m3fn, or uint8 where PyTorch has no fp8; fp32 scales
            [Le, R * M, H / 128]), cast per 128-element block: a = max(amax, 1e-4),
            scale = a / 448, rows = e4m3(x * (448 / a)) rounded to nearest even, saturated.
            Rows of local expert le come from source rank 0 (its tokens in ascending order),
            then rank 1, ...; only the first recv_count[le] rows are written.
        recv_count: [Le] int32. handle: for low_latency_combine; its recv_src and layout_range
            say where each row came from.
        cumulative_local_expert_recv_stats: [Le] int32 or None; recv_count is added to it once
            the rows are received (as DeepEP's receivers add each source's count).
        dispatch_wait_recv_cost_stats: [R] int64 or None; the receive adds, per source rank,
            the nanoseconds its waits for that source's message counts took (summed over the
            local experts). CUDA only measures them; the host backend leaves the tensor as it is.
        round_scale (with use_fp8): each block's scale is a power of two, 2^ceil(log2(a *
            (1 / 448))) with the fp32 product, and rows = e4m3(x / scale), exact (DeepEP's
            rule). use_ue8m0 (needs round_scale, ValueError otherwise, where DeepEP asserts):
            the scales come as UE8M0 codes (the scale's biased fp32 exponent, scale =
            2^(code - 127)), four to an int32, [Le, R * M, H / 512], the first block's code in
            the low byte; H must be a multiple of 512. With use_fp8=False both change nothing,
            as in DeepEP (there is no cast).
        return_recv_hook: the call only sends and returns hook, a callable that receives; call
            it before reading the outputs (on CUDA it is ordered on the current stream).
            Otherwise hook is None. async_finish (CUDA): an EventOverlap to wait on instead of
            the current stream waiting (not together with return_recv_hook).

        The returned tensors are views of the communicator's buffers, not copies: calls
        alternate between two buffers, so they are overwritten by the low-latency dispatch two
        calls later (DeepEP's rule: hold at most two calls' results), and freed by destroy().
        Clone what must live longer.

        Differences from DeepEP:
        - The buffers are sized by the first call's M, hidden, num_experts and topk_idx dtype
          (and Buffer's max_topk, default max(8, K)): a later call with others raises
          ValueError. num_rdma_bytes is not read.
        - The scales are row-major, [Le, R * M, H / 128] fp32 or [Le, R * M, H / 512] int32
          (DeepEP's are a column-major view of the same shape).
        - At most two dispatches may be in flight: a third before the first's combine raises
          EpcommError (invalid_argument), on every rank.
        - The wait-cost stats count nanoseconds (DeepEP's count GPU clock cycles).
        """
        self._check_usable()
        self._check_low_latency_mode("low_latency_dispatch")
        _low_latency.check_flags(async_finish, return_recv_hook)
        stats = cumulative_local_expert_recv_stats
        num_tokens, hidden, num_topk = _low_latency.check_dispatch(
            x, topk_idx, num_max_dispatch_tokens_per_rank, num_experts, self.group_size, stats)
        _low_latency.check_cast_options(use_fp8, round_scale, use_ue8m0, hidden)
        wait_stats = _low_latency.check_wait_stats(
            "dispatch_wait_recv_cost_stats", dispatch_wait_recv_cost_stats, self.group_size,
            x.device)
        device = x.device
        kind = EndpointKind(self._backend_for(device), _epcomm.DType.bf16,
                            _tensors.INDEX_DTYPES[topk_idx.dtype], hidden, num_experts, 0,
                            num_max_dispatch_tokens_per_rank)
        streams = self._streams(device, None, async_finish, False)
        endpoint = self._low_latency_endpoint(kind, num_topk, device)
        use_fp8 = bool(use_fp8)
        round_scale, use_ue8m0 = use_fp8 and bool(round_scale), use_fp8 and bool(use_ue8m0)
        result = endpoint.comm.low_latency_dispatch(
            _tensors.address(x), _tensors.address(topk_idx), num_tokens, num_topk,
            use_fp8=use_fp8, send_only=return_recv_hook, round_scale=round_scale,
            use_ue8m0=use_ue8m0, wait_cost_stats=wait_stats)
        received = _low_latency.received_views(result, endpoint, use_fp8, use_ue8m0, device)
        handle = LowLatencyHandle(self, endpoint, result.handle, num_tokens, num_topk, use_fp8,
                                  received.src, received.layout_range)

        def count_received() -> None:
            if stats is not None:
                with streams.working():
                    stats.add_(received.count)

        hook = None
        if return_recv_hook:
            hook = _low_latency.receive_hook(endpoint, result.handle, streams, count_received,
                                             (x, topk_idx, dispatch_wait_recv_cost_stats))
        else:
            count_received()
        event = streams.finish([x, topk_idx, stats, dispatch_wait_recv_cost_stats], [])
        recv_x = (received.x, received.scales) if use_fp8 else received.x
        return recv_x, received.count, handle, event, hook

    def low_latency_combine(self, x: torch.Tensor, topk_idx: torch.Tensor,
                            topk_weights: torch.Tensor, handle: LowLatencyHandle,
                            use_logfmt: bool = False, zero_copy: bool = False,
                            async_finish: bool = False, return_recv_hook: bool = False,
                            out: Optional[torch.Tensor] = None,
                            combine_wait_recv_cost_stats: Optional[torch.Tensor] = None
                            ) -> Tuple[torch.Tensor, EventOverlap, Hook]:
        """Collective. Returns (combined_x, event, hook): combined_x [T, H] bf16, where
        combined_x[t] = bf16(acc) with acc = fmaf(topk_weights[t][k], y(t, k), acc) over k
        ascending from 0 in fp32, y(t, k) being the row expert topk_idx[t][k] computed for
        token t. Slots with id -1 add nothing; a repeated id adds its one row again with that
        slot's weight; tokens with no expert come back as zeros.

        x: [Le, R * M, H] bf16, the experts' outputs in recv_x's row order (rows past
            recv_count are not read). topk_idx: the [T, K] ids given to the dispatch of
            `handle`; topk_weights: [T, K] fp32. out: a [T, H] bf16 tensor to write into, or
            None for a new one. return_recv_hook: the call only sends; combined_x is valid
            once hook() has run. async_finish as for low_latency_dispatch.
        zero_copy: the rows are read from get_next_low_latency_combine_buffer(handle), which
            the caller filled, instead of from x (x is still checked for shape, as in DeepEP).
        combine_wait_recv_cost_stats: [R] int64 or None; the receive adds, per rank, the
            nanoseconds it waited for that rank's returned rows (CUDA; the host backend leaves
            it as it is).

        Differences from DeepEP: handle must be the latest dispatch on its buffer, received
        and not yet combined, else EpcommError (stale_handle). use_logfmt=True raises
        EpcommError (unsupported), naming the feature.
        """
        self._check_usable()
        if not isinstance(handle, LowLatencyHandle) or handle._owner is not self:
            raise ValueError("handle must be a LowLatencyHandle from this Buffer's "
                             f"low_latency_dispatch, not {type(handle).__name__}")
        if use_logfmt:
            raise unsupported("use_logfmt")
        _low_latency.check_flags(async_finish, return_recv_hook)
        endpoint = handle._endpoint
        device = self._device_of(endpoint)
        wait_stats = _low_latency.check_wait_stats(
            "combine_wait_recv_cost_stats", combine_wait_recv_cost_stats, self.group_size, device)
        kind = endpoint.kind
        T, K, H = handle.num_tokens, handle.num_topk, kind.hidden
        _tensors.check_tensor("x", x, (torch.bfloat16,), (
            endpoint.experts_per_rank, self.group_size * kind.ll_max_tokens_per_rank, H), device)
        _tensors.check_tensor("topk_idx", topk_idx, (_tensors.TORCH_INDEX_DTYPES[kind.index_type],),
                              (T, K), device)
        _tensors.check_tensor("topk_weights", topk_weights, (torch.float32,), (T, K), device)
        if out is not None:
            _tensors.check_tensor("out", out, (torch.bfloat16,), (T, H), device)
        rows = x
        if zero_copy:
            rows = self._ll_combine_buffers.get(handle._native.buffer)
            if rows is None:
                raise ValueError("zero_copy=True reads the rows from "
                                 "get_next_low_latency_combine_buffer(handle), which was never "
                                 "called for this handle's buffer: call it and fill it first")
        streams = self._streams(device, None, async_finish, False)
        with streams.allocating():
            combined_x = out if out is not None else torch.empty(T, H, dtype=torch.bfloat16,
                                                                 device=device)
        endpoint.comm.low_latency_combine(
            _tensors.address(rows), _tensors.address(topk_idx), _tensors.address(topk_weights),
            handle._native, _tensors.address(combined_x), send_only=return_recv_hook,
            wait_cost_stats=wait_stats)
        hook = None
        if return_recv_hook:
            hook = _low_latency.receive_hook(endpoint, handle._native, streams, lambda: None,
                                             (rows, topk_idx, topk_weights, combined_x,
                                              combine_wait_recv_cost_stats))
        event = streams.finish([rows, topk_idx, topk_weights, combine_wait_recv_cost_stats],
                               [combined_x])
        return combined_x, event, hook

    def get_next_low_latency_combine_buffer(self, handle: LowLatencyHandle) -> torch.Tensor:
        """The [Le, R * M, H] bf16 tensor that low_latency_combine(..., zero_copy=True) for
        `handle` reads its rows from: write the experts' outputs into it (recv_x's row order)
        instead of passing them as x.

        Difference from DeepEP: DeepEP returns a strided view of its registered send buffer,
        whose use saves the copy of x into it. epcomm's combine reads x from wherever it is
        and copies nothing, so this is a plain contiguous tensor the Buffer keeps, one for each
        of the two alternating low-latency buffers (the handle says which); epcomm never writes
        it. It lives until destroy(). Local; raises ValueError without low_latency_mode or for
        a handle from another Buffer."""
        self._check_usable()
        self._check_low_latency_mode("get_next_low_latency_combine_buffer")
        if not isinstance(handle, LowLatencyHandle) or handle._owner is not self:
            raise ValueError("handle must be a LowLatencyHandle from this Buffer's "
                             f"low_latency_dispatch, not {type(handle).__name__}")
        endpoint = handle._endpoint
        index = handle._native.buffer
        rows = self._ll_combine_buffers.get(index)
        if rows is None:
            shape = (endpoint.experts_per_rank,
                     self.group_size * endpoint.kind.ll_max_tokens_per_rank, endpoint.kind.hidden)
            rows = torch.zeros(shape, dtype=torch.bfloat16, device=self._device_of(endpoint))
            self._ll_combine_buffers[index] = rows
        return rows

    def clean_low_latency_buffer(self, num_max_dispatch_tokens_per_rank: int, hidden: int,
                                 num_experts: int) -> None:
        """Local and cheap. Unlike DeepEP's, there is nothing to clean: epcomm's receivers
        reset the counts and signals they read, so the buffers are ready whenever no call is in
        flight. Checks the sizes against the low-latency buffers, if created (ValueError)."""
        self._check_usable()
        self._check_low_latency_mode("clean_low_latency_buffer")
        if self._low_latency is not None:
            wanted = replace(self._low_latency.kind, hidden=hidden, num_experts=num_experts,
                             ll_max_tokens_per_rank=num_max_dispatch_tokens_per_rank)
            _low_latency.check_same_communicator(self._low_latency, wanted, num_topk=1)

    # ---- the elastic mode (enable_shrink) ---------------------------------------------------

    def low_latency_update_mask_buffer(self, rank_to_mask: int, mask: bool = False) -> None:
        """Local. Masks (mask=True) or unmasks rank_to_mask for the later low-latency calls of
        this rank: a masked rank is neither sent to nor waited for, its experts receive nothing
        from this rank, its tokens are not received, and its experts add nothing to this rank's
        combine (as if its top-k ids were -1). Needs enable_shrink=True, as in DeepEP
        (ValueError otherwise). Change masks between rounds, not between a dispatch and its
        combine. With enable_shrink a wait on a rank that times out (Buffer's timeout_ms)
        masks that rank by itself, without an error. Masks are this rank's view: a rank that
        masks a peer which still sends to it leaves that peer timing out (and masking it)."""
        self._check_usable()
        self._check_shrink("low_latency_update_mask_buffer")
        if isinstance(rank_to_mask, bool) or not isinstance(rank_to_mask, int) or not (
                0 <= rank_to_mask < self.group_size):
            raise ValueError(f"rank_to_mask = {rank_to_mask!r}: must be an int in "
                             f"[0, {self.group_size})")
        self._ll_mask[rank_to_mask] = 1 if mask else 0
        if self._low_latency is not None:
            self._on_comm_stream(
                lambda: self._low_latency.comm.low_latency_update_mask(rank_to_mask, bool(mask)))

    def low_latency_query_mask_buffer(self, mask_status: torch.Tensor) -> None:
        """Local. Writes each rank's mask (1 masked, 0 not) into mask_status, an [R] int32
        tensor (on this Buffer's device, or the CPU), ordered on the current stream: the masks
        set by low_latency_update_mask_buffer and those the timed-out waits added."""
        self._check_usable()
        self._check_shrink("low_latency_query_mask_buffer")
        _tensors.check_tensor("mask_status", mask_status, (torch.int32,), (self.group_size,))
        if self._low_latency is None:
            mask_status.copy_(torch.tensor(self._ll_mask, dtype=torch.int32))
            return
        device = self._device_of(self._low_latency)
        if mask_status.device != device:
            raise ValueError(f"mask_status is on {mask_status.device}; the low-latency buffers "
                             f"are on {device}")
        self._on_comm_stream(lambda: self._low_latency.comm.low_latency_query_mask(
            _tensors.address(mask_status)))

    def low_latency_clean_mask_buffer(self) -> None:
        """Local. Unmasks every rank (also the ones the timed-out waits masked)."""
        self._check_usable()
        self._check_shrink("low_latency_clean_mask_buffer")
        self._ll_mask = [0] * self.group_size
        if self._low_latency is not None:
            self._on_comm_stream(self._low_latency.comm.low_latency_clean_mask)

    def _check_shrink(self, caller: str) -> None:
        self._check_low_latency_mode(caller)
        if not self.enable_shrink:
            raise ValueError(f"{caller} needs enable_shrink=True (as in DeepEP): the rank masks "
                             "belong to the elastic low-latency mode")

    def _on_comm_stream(self, call: Callable[[], None]) -> None:
        """Runs a mask call on the communication stream after the current stream's work; the
        current stream then waits for it (nothing blocks the host)."""
        streams = self._streams(self._device_of(self._low_latency), None, False, False)
        call()
        streams.finish([], [])
