"""Buffer: DeepEP's V1 API on epcomm: high-throughput (get_dispatch_layout, dispatch, combine)
and low-latency (low_latency_dispatch, low_latency_combine)."""
import sys
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch

import _epcomm

from . import _args, _low_latency, _tensors
from ._endpoint import (Endpoint, EndpointKind, PoolSizing, create_endpoint, make_config,
                        make_low_latency_config)
from ._layout import dispatch_layout
from ._recv import receive_exact, receive_into_worst_case
from ._streams import CallStreams
from .config import Config, low_latency_region_bytes
from .event import EventOverlap
from .groups import bootstrap_for
from .handle import DispatchHandle, LowLatencyHandle

XType = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


class Buffer:
    """Expert-parallel dispatch and combine between the ranks of `group`, with DeepEP's V1
    interface (intranode high-throughput, and low-latency with low_latency_mode=True) and
    epcomm's guarantees: outputs are bit-identical across runs, backends and SM counts (rows
    arrive ordered by source rank, then source token; combine adds in fp32 in a fixed order and
    rounds once to bf16).

    group: a torch.distributed process group (None: the default group), one rank per process,
        several processes per GPU allowed (under MPS; use gloo, NCCL refuses shared GPUs); or an
        epcomm.ThreadGroup (ranks are threads), where CPU tensors run the host reference backend.

    Differences from DeepEP:
    - Sizing. epcomm's receive pool holds every row a rank can receive, num_ranks *
      max_tokens_per_rank rows. Pass max_tokens_per_rank (the most tokens one dispatch sends
      from a rank), or it is derived from num_nvl_bytes as num_nvl_bytes // (num_ranks *
      pool_row_bytes) with pool_row_bytes = 2 * hidden + a meta row of 8 + 12 * max_topk + 4 *
      hidden / 128 (fp8) bytes rounded up to 16 (epcomm.config.pool_row_bytes).
    - Communicators are created lazily. The C++ Config fixes per communicator what DeepEP
      decides per call, so the Buffer keeps one communicator, with its own pool, per kind of
      dispatch: x's element type, topk_idx's dtype, hidden, number of experts and
      num_worst_tokens. The first dispatch of a kind creates it; like every dispatch that is
      collective. The constructor itself makes no collective call.
    - The SM count (Buffer.num_sms, or a call's config.num_sms) is fixed when a communicator is
      created; a later call asking for a different one raises ValueError.
    - num_rdma_bytes, num_qps_per_rank, allow_nvlink_for_low_latency_mode and allow_mnnvl are
      accepted and unused (one NVLink domain, no RDMA). low_latency_mode=True enables
      low_latency_dispatch / low_latency_combine, whose buffers are sized by the first
      low_latency_dispatch's num_max_dispatch_tokens_per_rank, hidden and num_experts (not by
      num_rdma_bytes); num_nvl_bytes may then be 0 if the high-throughput calls are not used.
    - destroy() is collective (a barrier before the regions are unmapped). Without it the
      communicators are destroyed when the Buffer is garbage collected, which is collective
      too: call destroy() on every rank before torch.distributed.destroy_process_group().

    epcomm keywords: max_tokens_per_rank, max_topk (default: max(8, the first dispatch's
    top-k)), algorithm ("flat", or "ring": the two-stage baseline), timeout_ms (every wait on
    a peer gives up after it with EpcommError).
    """

    num_sms: int = 20

    def __init__(self, group=None, num_nvl_bytes: int = 0, num_rdma_bytes: int = 0,
                 low_latency_mode: bool = False, num_qps_per_rank: int = 24,
                 allow_nvlink_for_low_latency_mode: bool = True, allow_mnnvl: bool = False,
                 explicitly_destroy: bool = False, *, max_tokens_per_rank: Optional[int] = None,
                 max_topk: Optional[int] = None, algorithm: str = "flat",
                 timeout_ms: int = 5000) -> None:
        if low_latency_mode:
            _args.check_count("num_qps_per_rank", num_qps_per_rank, minimum=1)
        for name, value in (("num_nvl_bytes", num_nvl_bytes), ("num_rdma_bytes", num_rdma_bytes)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} = {value!r}: must be a non-negative int")
        for name, value in (("max_tokens_per_rank", max_tokens_per_rank), ("max_topk", max_topk)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} = {value!r}: must be a positive int or None")
        if not isinstance(timeout_ms, int) or timeout_ms < 1:
            raise ValueError(f"timeout_ms = {timeout_ms!r}: must be a positive int")
        algorithms = {"flat": _epcomm.Algorithm.flat, "ring": _epcomm.Algorithm.ring}
        if algorithm not in algorithms:
            raise ValueError(f"algorithm = {algorithm!r}: must be 'flat' or 'ring'")
        if not max_tokens_per_rank and num_nvl_bytes == 0 and not low_latency_mode:
            raise ValueError("num_nvl_bytes = 0 and no max_tokens_per_rank: epcomm sizes its "
                             "receive pool from one of them")

        self.group = group
        self._bootstrap = bootstrap_for(group)
        self.rank = self._bootstrap.rank()
        self.group_size = self._bootstrap.size()
        self.num_nvl_bytes = num_nvl_bytes
        self.num_rdma_bytes = num_rdma_bytes
        self.low_latency_mode = bool(low_latency_mode)
        self.explicitly_destroy = explicitly_destroy
        self._sizing = PoolSizing(num_nvl_bytes, max_tokens_per_rank, max_topk,
                                  algorithms[algorithm], timeout_ms)
        self._endpoints: Dict[EndpointKind, Endpoint] = {}  # both modes, in creation order
        self._low_latency: Optional[Endpoint] = None  # created by the first low_latency_dispatch
        self._comm_stream: Optional[torch.cuda.Stream] = None
        self._destroyed = False

    # ---- DeepEP's static helpers -------------------------------------------------------------

    @staticmethod
    def set_num_sms(new_num_sms: int) -> None:
        """Sets the SMs (thread blocks) later-created communicators dispatch and combine with.
        Unlike DeepEP, odd counts are fine."""
        if not isinstance(new_num_sms, int) or new_num_sms < 1:
            raise ValueError(f"new_num_sms = {new_num_sms!r}: must be a positive int")
        Buffer.num_sms = new_num_sms

    @staticmethod
    def get_dispatch_config(num_ranks: int) -> Config:
        """Config(Buffer.num_sms) for any number of ranks (DeepEP tabulates chunk sizes,
        which epcomm does not use)."""
        return Config(Buffer.num_sms)

    @staticmethod
    def get_combine_config(num_ranks: int) -> Config:
        return Config(Buffer.num_sms)

    @staticmethod
    def capture() -> EventOverlap:
        """An event recorded on the current CUDA stream, to pass as previous_event."""
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream())
        return EventOverlap(event)

    @staticmethod
    def get_low_latency_rdma_size_hint(num_max_dispatch_tokens_per_rank: int, hidden: int,
                                       num_ranks: int, num_experts: int,
                                       max_topk: int = 8) -> int:
        """Bytes of the symmetric region a rank's low-latency communicator allocates (both
        buffers) for M = num_max_dispatch_tokens_per_rank; max_topk is the Buffer's (default
        8). Informational: epcomm sizes the region itself at the first low_latency_dispatch and
        does not read num_rdma_bytes. The received rows ([Le, R * M, H] per buffer) live in the
        rank's own memory on top of this."""
        for name, value in (("num_max_dispatch_tokens_per_rank", num_max_dispatch_tokens_per_rank),
                            ("hidden", hidden), ("num_ranks", num_ranks), ("max_topk", max_topk)):
            _args.check_count(name, value, minimum=1)
        _args.check_num_experts("num_experts", num_experts, num_ranks)
        return low_latency_region_bytes(num_max_dispatch_tokens_per_rank, hidden, num_ranks,
                                        num_experts, max_topk)

    def get_comm_stream(self) -> Optional[torch.cuda.Stream]:
        """The stream every CUDA call of this Buffer runs on (None before the first one)."""
        return self._comm_stream

    # ---- lifetime ----------------------------------------------------------------------------

    def destroy(self) -> None:
        """Collective: destroys every communicator of this Buffer, in creation order, on every
        rank. The Buffer cannot be used afterwards."""
        if self._destroyed:
            return
        self._destroyed = True
        for endpoint in self._endpoints.values():
            endpoint.comm.close()
        self._endpoints.clear()
        self._low_latency = None

    def __del__(self) -> None:
        if getattr(self, "_destroyed", True):
            return
        try:
            self.destroy()
        except Exception as error:  # no raising from a finalizer; say what went wrong
            print(f"epcomm: Buffer on rank {self.rank}: destroy failed: {error}", file=sys.stderr)

    # ---- layout ------------------------------------------------------------------------------

    def get_dispatch_layout(self, topk_idx: torch.Tensor, num_experts: int,
                            previous_event: Optional[EventOverlap] = None,
                            async_finish: bool = False, allocate_on_comm_stream: bool = False
                            ) -> Tuple[torch.Tensor, None, torch.Tensor, torch.Tensor, EventOverlap]:
        """Local. Returns (num_tokens_per_rank [R] int32, None (no RDMA ranks),
        num_tokens_per_expert [E] int32, is_token_in_rank [T, R] bool, event) for topk_idx
        [T, K] (int64 or int32; -1 means no expert). Expert e lives on rank e // (E / R).
        Differences from DeepEP: expert ids outside [-1, num_experts) raise ValueError, which
        on CUDA costs one host sync."""
        self._check_usable()
        _tensors.check_tensor("topk_idx", topk_idx, tuple(_tensors.INDEX_DTYPES), (None, None))
        _args.check_num_experts("num_experts", num_experts, self.group_size)
        streams = self._streams(topk_idx.device, previous_event, async_finish,
                                allocate_on_comm_stream)
        with streams.working():
            per_rank, per_expert, in_rank = dispatch_layout(topk_idx, num_experts, self.group_size)
        event = streams.finish([topk_idx], [], comm_allocated=[per_rank, per_expert, in_rank])
        return per_rank, None, per_expert, in_rank, event

    # ---- dispatch ----------------------------------------------------------------------------

    def dispatch(self, x: XType, handle: Optional[DispatchHandle] = None,
                 num_tokens_per_rank: Optional[torch.Tensor] = None,
                 num_tokens_per_rdma_rank: Optional[torch.Tensor] = None,
                 is_token_in_rank: Optional[torch.Tensor] = None,
                 num_tokens_per_expert: Optional[torch.Tensor] = None,
                 topk_idx: Optional[torch.Tensor] = None,
                 topk_weights: Optional[torch.Tensor] = None, expert_alignment: int = 1,
                 num_worst_tokens: int = 0, config: Optional[Config] = None,
                 previous_event: Optional[EventOverlap] = None, async_finish: bool = False,
                 allocate_on_comm_stream: bool = False):
        """Collective. Sends each token to every rank hosting one of its top-k experts, once
        per rank. Returns (recv_x, recv_topk_idx, recv_topk_weights,
        num_recv_tokens_per_expert_list, handle, event).

        x: [T, H] bf16, or (fp8 [T, H] as torch.float8_e4m3fn or raw uint8, fp32 scales
            [T, H / 128]), contiguous row-major. recv_x has the same form.
        topk_idx: [T, K] int64 (or int32), -1 for none; topk_weights: [T, K] fp32 or None.
        recv_topk_idx: [n, K], the local expert id (id - rank * E / R) where the expert lives
            here, else -1; recv_topk_weights: [n, K] fp32, the weight where local, else 0.
        num_recv_tokens_per_expert_list: rows per local expert (a row counts once per slot that
            names the expert), each rounded up to expert_alignment.
        Rows are ordered by source rank, then source token.

        With handle (a cached dispatch): the routing of that dispatch with new rows x; returns
        (recv_x, None, None, None, None, event), and the handle then names this dispatch.

        Differences from DeepEP:
        - topk_idx and num_tokens_per_expert are required (num_experts = its length); routing
          is recomputed from topk_idx, so num_tokens_per_rank and is_token_in_rank are only
          checked for shape; num_tokens_per_rdma_rank must be None.
        - num_worst_tokens = 0 (exact sizes): the host waits for the whole dispatch, not only
          for the counts, to read num_recv_tokens_per_expert_list; recv tensors are copied out
          of the receive pool, so they stay valid.
        - num_worst_tokens > 0: nothing waits on the host; recv tensors have num_worst_tokens
          rows, rows past the received ones hold recv_topk_idx -1 and weight 0 (recv_x there is
          undefined), and the list is empty. Such dispatches use a communicator whose pool has
          exactly num_worst_tokens rows: receiving more raises EpcommError (capacity_exceeded)
          at a later synchronizing call.
        """
        self._check_usable()
        if handle is not None:
            return self._cached_dispatch(x, handle, topk_idx, topk_weights, config,
                                         previous_event, async_finish, allocate_on_comm_stream)
        x, x_scales, dtype = _args.split_x(x)
        device = x.device
        num_tokens, hidden = x.shape
        if topk_idx is None:
            raise ValueError("topk_idx is None: epcomm routes tokens by topk_idx (a fresh "
                             "dispatch needs it; a cached one takes handle=)")
        _tensors.check_tensor("topk_idx", topk_idx, tuple(_tensors.INDEX_DTYPES),
                              (num_tokens, None), device)
        num_topk = topk_idx.shape[1]
        if topk_weights is not None:
            _tensors.check_tensor("topk_weights", topk_weights, (torch.float32,),
                                  (num_tokens, num_topk), device)
        if num_tokens_per_expert is None:
            raise ValueError("num_tokens_per_expert is None: pass get_dispatch_layout's "
                             "num_tokens_per_expert (it gives the number of experts)")
        _tensors.check_tensor("num_tokens_per_expert", num_tokens_per_expert,
                              (torch.int32, torch.int64), (None,))
        num_experts = num_tokens_per_expert.numel()
        _args.check_num_experts("num_tokens_per_expert's length", num_experts,
                                self.group_size)
        _args.check_layout_args(num_tokens, self.group_size, num_tokens_per_rank,
                                num_tokens_per_rdma_rank, is_token_in_rank)
        _args.check_count("expert_alignment", expert_alignment, minimum=1)
        _args.check_count("num_worst_tokens", num_worst_tokens, minimum=0)

        kind = EndpointKind(self._backend_for(device), dtype, _tensors.INDEX_DTYPES[topk_idx.dtype],
                            hidden, num_experts, num_worst_tokens)
        streams = self._streams(device, previous_event, async_finish, allocate_on_comm_stream)
        endpoint = self._endpoint(kind, num_tokens, num_topk, _args.sms_of(config, Buffer.num_sms),
                                  device)
        with streams.working():
            # What combine will return as combined_topk_weights (see combine).
            combined = torch.zeros(num_tokens, num_topk, dtype=torch.float32, device=device)
            if topk_weights is not None:
                combined = torch.where(topk_idx >= 0, topk_weights, combined) + 0.0
        args = dict(x=_tensors.address(x), x_scales=_tensors.address(x_scales),
                    scales_per_token=-1 if x_scales is None else x_scales.shape[1],
                    topk_idx=_tensors.address(topk_idx),
                    topk_weights=_tensors.address(topk_weights), num_tokens=num_tokens,
                    num_topk=num_topk)
        if num_worst_tokens:
            received = receive_into_worst_case(endpoint, streams, args, num_worst_tokens,
                                               x.dtype, num_topk, device)
            counts: List[int] = []
        else:
            received = receive_exact(endpoint, streams, args, x.dtype, num_topk, device)
            counts = [-(-c // expert_alignment) * expert_alignment for c in received.per_expert]
        new_handle = DispatchHandle(self, endpoint, received.native_handle, num_tokens, num_topk,
                                    received.num_recv, num_worst_tokens, combined)
        outputs = [received.x, received.scales, received.topk_idx, received.topk_weights]
        event = streams.finish([x, x_scales, topk_idx, topk_weights], outputs)
        recv_x = (received.x, received.scales) if x_scales is not None else received.x
        return recv_x, received.topk_idx, received.topk_weights, counts, new_handle, event

    def _cached_dispatch(self, x: XType, handle: DispatchHandle, topk_idx, topk_weights,
                         config, previous_event, async_finish, allocate_on_comm_stream):
        if topk_idx is not None or topk_weights is not None:
            raise ValueError("topk_idx and topk_weights must be None with handle= (a cached "
                             "dispatch reuses the handle's routing)")
        self._check_handle(handle)
        endpoint = handle._endpoint
        x, x_scales, dtype = _args.split_x(x)
        if x.device != self._device_of(endpoint):
            raise ValueError(f"x is on {x.device}; the handle's dispatch ran on "
                             f"{self._device_of(endpoint)}")
        if dtype != endpoint.kind.dtype or x.shape != (handle.num_tokens, endpoint.kind.hidden):
            raise ValueError(
                f"x is {tuple(x.shape)} of {x.dtype}; the handle's dispatch sent "
                f"[{handle.num_tokens}, {endpoint.kind.hidden}] rows of {endpoint.kind.dtype.name}"
                f" (epcomm's cached dispatch keeps the element type)")
        _args.check_sms(_args.sms_of(config, Buffer.num_sms), endpoint.config.dispatch_sms)
        streams = self._streams(x.device, previous_event, async_finish, allocate_on_comm_stream)
        args = dict(x=_tensors.address(x), x_scales=_tensors.address(x_scales))
        if handle.num_worst_tokens:
            received = receive_into_worst_case(endpoint, streams, args, handle.num_worst_tokens,
                                               x.dtype, 0, x.device, native=handle._native)
        else:
            received = receive_exact(endpoint, streams, args, x.dtype, 0, x.device,
                                     native=handle._native)
        handle._native = received.native_handle
        event = streams.finish([x, x_scales], [received.x, received.scales])
        recv_x = (received.x, received.scales) if x_scales is not None else received.x
        return recv_x, None, None, None, None, event

    # ---- combine -----------------------------------------------------------------------------

    def combine(self, x: torch.Tensor, handle: DispatchHandle,
                topk_weights: Optional[torch.Tensor] = None, config: Optional[Config] = None,
                previous_event: Optional[EventOverlap] = None, async_finish: bool = False,
                allocate_on_comm_stream: bool = False
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor], EventOverlap]:
        """Collective. Returns (combined_x, combined_topk_weights, event): combined_x[t] is the
        sum over the ranks token t was sent to, ascending, of x's row for t on that rank, added
        in fp32 and rounded once to bf16 (no weights applied: the experts apply them);
        tokens sent nowhere come back as zeros.

        x: [handle.num_recv_rows, H] bf16 (the rows of recv_x, in its order).
        topk_weights: [handle.num_recv_rows, K] fp32 or None.

        Differences from DeepEP:
        - handle must come from the latest dispatch of its kind on this Buffer, else
          EpcommError (stale_handle).
        - epcomm sends no weights back. combined_topk_weights ([T, K] fp32, None when
          topk_weights is None) is made on the token's own rank from the weights it dispatched:
          the weight where the slot names an expert, 0 where it is -1 or no weights were
          dispatched. That equals DeepEP's sum over ranks whenever topk_weights is dispatch's
          recv_topk_weights passed back unchanged; other values are not reflected (only
          topk_weights' shape is checked).
        """
        self._check_usable()
        self._check_handle(handle)
        endpoint = handle._endpoint
        device = self._device_of(endpoint)
        rows, hidden = handle.num_recv_rows, endpoint.kind.hidden
        _tensors.check_tensor("x", x, (torch.bfloat16,), (rows, hidden), device)
        if topk_weights is not None:
            _tensors.check_tensor("topk_weights", topk_weights, (torch.float32,),
                                  (rows, handle.num_topk), device)
        _args.check_sms(_args.sms_of(config, Buffer.num_sms), endpoint.config.combine_sms)
        streams = self._streams(device, previous_event, async_finish, allocate_on_comm_stream)
        with streams.allocating():
            combined_x = torch.empty(handle.num_tokens, hidden, dtype=torch.bfloat16, device=device)
            combined_weights = None
            if topk_weights is not None:
                combined_weights = torch.empty_like(handle._combined_topk_weights)
        if combined_weights is not None:
            with streams.working():
                combined_weights.copy_(handle._combined_topk_weights)
        endpoint.comm.combine(_tensors.address(x), handle._native, _tensors.address(combined_x))
        event = streams.finish([x, topk_weights], [combined_x, combined_weights])
        return combined_x, combined_weights, event

    # ---- low-latency mode --------------------------------------------------------------------

    def low_latency_dispatch(self, x: torch.Tensor, topk_idx: torch.Tensor,
                             num_max_dispatch_tokens_per_rank: int, num_experts: int,
                             cumulative_local_expert_recv_stats: Optional[torch.Tensor] = None,
                             use_fp8: bool = True, round_scale: bool = False,
                             use_ue8m0: bool = False, async_finish: bool = False,
                             return_recv_hook: bool = False
                             ) -> Tuple[XType, torch.Tensor, LowLatencyHandle, EventOverlap,
                                        Optional[Callable[[], None]]]:
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
            the rows are received.
        return_recv_hook: the call only sends and returns hook, a callable that receives; call
            it before reading the outputs (on CUDA it is ordered on the current stream).
            Otherwise hook is None. async_finish (CUDA): an EventOverlap to wait on instead of
            the current stream waiting (not together with return_recv_hook).

        The returned tensors are views of the communicator's buffers, not copies (as in
        DeepEP): calls alternate between two buffers, so they are overwritten by the
        low-latency dispatch two calls later, and freed by destroy(). Clone what must live
        longer.

        Differences from DeepEP:
        - The buffers are sized by the first call's M, hidden, num_experts and topk_idx dtype
          (and Buffer's max_topk, default max(8, K)): a later call with others raises
          ValueError. num_rdma_bytes is not read.
        - round_scale and use_ue8m0 raise ValueError. The scales are fp32, row-major
          [Le, R * M, H / 128] (DeepEP's are a column-major view).
        - At most two dispatches may be in flight: a third before the first's combine raises
          EpcommError (invalid_argument), on every rank.
        - dispatch_wait_recv_cost_stats is not accepted.
        """
        self._check_usable()
        self._check_low_latency_mode("low_latency_dispatch")
        _low_latency.reject_unsupported(round_scale=round_scale, use_ue8m0=use_ue8m0)
        _low_latency.check_flags(async_finish, return_recv_hook)
        stats = cumulative_local_expert_recv_stats
        num_tokens, hidden, num_topk = _low_latency.check_dispatch(
            x, topk_idx, num_max_dispatch_tokens_per_rank, num_experts, self.group_size, stats)
        device = x.device
        kind = EndpointKind(self._backend_for(device), _epcomm.DType.bf16,
                            _tensors.INDEX_DTYPES[topk_idx.dtype], hidden, num_experts, 0,
                            num_max_dispatch_tokens_per_rank)
        streams = self._streams(device, None, async_finish, False)
        endpoint = self._low_latency_endpoint(kind, num_topk, device)
        use_fp8 = bool(use_fp8)
        result = endpoint.comm.low_latency_dispatch(
            _tensors.address(x), _tensors.address(topk_idx), num_tokens, num_topk,
            use_fp8=use_fp8, send_only=return_recv_hook)
        received = _low_latency.received_views(result, endpoint, use_fp8, device)
        handle = LowLatencyHandle(self, endpoint, result.handle, num_tokens, num_topk, use_fp8,
                                  received.src, received.layout_range)

        def count_received() -> None:
            if stats is not None:
                with streams.working():
                    stats.add_(received.count)

        hook = None
        if return_recv_hook:
            hook = _low_latency.receive_hook(endpoint, result.handle, streams, count_received,
                                             (x, topk_idx))
        else:
            count_received()
        event = streams.finish([x, topk_idx, stats], [])
        recv_x = (received.x, received.scales) if use_fp8 else received.x
        return recv_x, received.count, handle, event, hook

    def low_latency_combine(self, x: torch.Tensor, topk_idx: torch.Tensor,
                            topk_weights: torch.Tensor, handle: LowLatencyHandle,
                            use_logfmt: bool = False, zero_copy: bool = False,
                            async_finish: bool = False, return_recv_hook: bool = False,
                            out: Optional[torch.Tensor] = None
                            ) -> Tuple[torch.Tensor, EventOverlap, Optional[Callable[[], None]]]:
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

        Differences from DeepEP: use_logfmt and zero_copy=True raise ValueError; x may be any
        tensor, so there is no combine buffer to write into first (and no
        get_next_low_latency_combine_buffer). handle must be the latest dispatch on its buffer,
        received and not yet combined, else EpcommError (stale_handle).
        combine_wait_recv_cost_stats is not accepted.
        """
        self._check_usable()
        if not isinstance(handle, LowLatencyHandle) or handle._owner is not self:
            raise ValueError("handle must be a LowLatencyHandle from this Buffer's "
                             f"low_latency_dispatch, not {type(handle).__name__}")
        _low_latency.reject_unsupported(use_logfmt=use_logfmt, zero_copy=zero_copy)
        _low_latency.check_flags(async_finish, return_recv_hook)
        endpoint = handle._endpoint
        device = self._device_of(endpoint)
        kind = endpoint.kind
        T, K, H = handle.num_tokens, handle.num_topk, kind.hidden
        _tensors.check_tensor("x", x, (torch.bfloat16,), (
            endpoint.experts_per_rank, self.group_size * kind.ll_max_tokens_per_rank, H), device)
        _tensors.check_tensor("topk_idx", topk_idx, (_tensors.TORCH_INDEX_DTYPES[kind.index_type],),
                              (T, K), device)
        _tensors.check_tensor("topk_weights", topk_weights, (torch.float32,), (T, K), device)
        if out is not None:
            _tensors.check_tensor("out", out, (torch.bfloat16,), (T, H), device)
        streams = self._streams(device, None, async_finish, False)
        with streams.allocating():
            combined_x = out if out is not None else torch.empty(T, H, dtype=torch.bfloat16,
                                                                 device=device)
        endpoint.comm.low_latency_combine(
            _tensors.address(x), _tensors.address(topk_idx), _tensors.address(topk_weights),
            handle._native, _tensors.address(combined_x), send_only=return_recv_hook)
        hook = None
        if return_recv_hook:
            hook = _low_latency.receive_hook(endpoint, handle._native, streams, lambda: None,
                                             (x, topk_idx, topk_weights, combined_x))
        event = streams.finish([x, topk_idx, topk_weights], [combined_x])
        return combined_x, event, hook

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

    # ---- helpers -----------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._destroyed:
            raise RuntimeError("this Buffer was destroyed")

    def _check_handle(self, handle) -> None:
        if not isinstance(handle, DispatchHandle) or handle._owner is not self:
            raise ValueError("handle must be a DispatchHandle from this Buffer's dispatch, not "
                             f"{type(handle).__name__}")

    def _check_low_latency_mode(self, caller: str) -> None:
        if not self.low_latency_mode:
            raise ValueError(f"{caller} needs a Buffer created with low_latency_mode=True")

    def _backend_for(self, device: torch.device) -> _epcomm.Backend:
        if device.type == "cuda":
            return _epcomm.Backend.cuda
        if device.type != "cpu":
            raise ValueError(f"x is on {device}: epcomm takes CUDA or CPU tensors")
        if not self._bootstrap.in_process():
            raise ValueError("x is a CPU tensor: CPU tensors run epcomm's host reference "
                             "backend, whose ranks are threads (epcomm.make_thread_groups); "
                             "this Buffer's ranks are processes, so pass CUDA tensors")
        return _epcomm.Backend.host

    def _device_of(self, endpoint: Endpoint) -> torch.device:
        if endpoint.kind.backend == _epcomm.Backend.host:
            return torch.device("cpu")
        return self._comm_stream.device

    def _streams(self, device: torch.device, previous_event, async_finish: bool,
                 allocate_on_comm_stream: bool) -> CallStreams:
        comm_stream = None
        if device.type == "cuda":
            if self._comm_stream is None:
                self._comm_stream = torch.cuda.Stream(device=device)
            elif self._comm_stream.device != device:
                raise ValueError(f"tensors are on {device}, but this Buffer runs on "
                                 f"{self._comm_stream.device}")
            comm_stream = self._comm_stream
        return CallStreams(comm_stream, previous_event, async_finish, allocate_on_comm_stream)

    def _endpoint(self, kind: EndpointKind, num_tokens: int, num_topk: int, dispatch_sms: int,
                  device: torch.device) -> Endpoint:
        """The communicator for `kind`, created now (collectively) if this is its first use,
        checked to take a dispatch of num_tokens x num_topk (before any collective step)."""
        endpoint = self._endpoints.get(kind)
        if endpoint is not None:
            _args.check_sms(dispatch_sms, endpoint.config.dispatch_sms)
            _args.check_fits(endpoint.config, num_tokens, num_topk)
            return endpoint
        config = make_config(kind, self._sizing, self.group_size, num_topk, dispatch_sms,
                             Buffer.num_sms)
        _args.check_fits(config, num_tokens, num_topk)
        return self._create_endpoint(kind, config, device)

    def _low_latency_endpoint(self, kind: EndpointKind, num_topk: int,
                              device: torch.device) -> Endpoint:
        """The low-latency communicator, created now (collectively) by the first
        low_latency_dispatch; later calls must fit it."""
        if self._low_latency is not None:
            _low_latency.check_same_communicator(self._low_latency, kind, num_topk)
            return self._low_latency
        config = make_low_latency_config(kind, self._sizing, num_topk, Buffer.num_sms)
        self._low_latency = self._create_endpoint(kind, config, device)
        return self._low_latency

    def _create_endpoint(self, kind: EndpointKind, config: _epcomm.Config,
                         device: torch.device) -> Endpoint:
        stream = self._comm_stream.cuda_stream if device.type == "cuda" else 0
        device_index = device.index if device.type == "cuda" else -1
        endpoint = create_endpoint(self._bootstrap, kind, config, device_index, stream)
        self._endpoints[kind] = endpoint
        return endpoint
