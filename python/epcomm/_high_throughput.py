"""The high-throughput calls of Buffer (DeepEP V1's get_dispatch_layout, dispatch, combine and
their internode_ variants), as a mixin class: Buffer (buffer.py) owns the communicators and
streams these calls use."""
from typing import List, Optional, Tuple, Union

import torch

from . import _args, _tensors
from ._endpoint import EndpointKind
from ._layout import dispatch_layout
from ._recv import receive_exact, receive_into_worst_case
from .config import Config
from .event import EventOverlap
from .handle import DispatchHandle

XType = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]
BiasType = Union[None, torch.Tensor, Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]]


def _bias_pair(bias: BiasType, num_tokens: int, hidden: int,
               device) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """DeepEP's bias: None, one tensor or a pair (either may be None), each [T, H] bf16 on x's
    device. Returns the pair, None where absent."""
    if isinstance(bias, tuple) and len(bias) != 2:
        raise ValueError(f"bias is a tuple of {len(bias)}; expected a tensor or a pair")
    parts = bias if isinstance(bias, tuple) else (bias, None)
    for i, part in enumerate(parts):
        if part is None:
            continue
        if not isinstance(part, torch.Tensor):
            raise TypeError("bias must be None, a torch.Tensor or a pair of them, not "
                            f"{type(part).__name__}")
        _tensors.check_tensor(f"bias[{i}]" if isinstance(bias, tuple) else "bias", part,
                              (torch.bfloat16,), (num_tokens, hidden), device)
    return parts[0], parts[1]


class HighThroughputCalls:
    """DeepEP's high-throughput calls; mixed into Buffer."""

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
                 allocate_on_comm_stream: bool = False, *, layout: str = "token_major"):
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

        epcomm keyword layout="expert_major" (host backend and CUDA; not with
        Config.algorithm = ring): one row per (token, local expert) pair, grouped by local
        expert, each group starting at a multiple of expert_alignment, pairs by source rank
        then token, padding rows zero (docs/design.md section 24). Returns (recv_x, None, None,
        group sizes, handle, event); the handle carries recv_src [n, 2] int32 (source rank,
        token; -1 on padding), recv_topk_slot [n] int32, recv_weight [n] fp32 and
        expert_offsets [Le + 1] int32. With num_worst_tokens > 0 nothing waits on the host:
        the pool and the tensors have num_worst_tokens rows (pairs and padding), the group
        sizes list is empty, rows past the received ones hold recv_src and recv_topk_slot -1
        and recv_weight 0, and expert_offsets (on the device) ends with the rows received.
        """
        self._check_usable()
        if layout not in ("token_major", "expert_major"):
            raise ValueError(f"layout = {layout!r}: must be 'token_major' or 'expert_major'")
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
        expert_major = layout == "expert_major"

        kind = EndpointKind(self._backend_for(device), dtype, _tensors.INDEX_DTYPES[topk_idx.dtype],
                            hidden, num_experts, num_worst_tokens)
        streams = self._streams(device, previous_event, async_finish, allocate_on_comm_stream)
        endpoint = self._endpoint(kind, num_tokens, num_topk, _args.sms_of(config),
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
                                               x.dtype, num_topk, device,
                                               expert_major=expert_major,
                                               expert_alignment=expert_alignment)
            counts: List[int] = []
        elif expert_major:
            received = receive_exact(endpoint, streams, args, x.dtype, num_topk, device,
                                     expert_major=True, expert_alignment=expert_alignment)
            counts = list(received.per_expert)
        else:
            received = receive_exact(endpoint, streams, args, x.dtype, num_topk, device)
            counts = [-(-c // expert_alignment) * expert_alignment for c in received.per_expert]
        self._dispatched_on(endpoint)
        new_handle = DispatchHandle(self, endpoint, received.native_handle, num_tokens, num_topk,
                                    received.num_recv, num_worst_tokens, combined)
        if expert_major:
            new_handle.set_expert_major(received.pair_src, received.pair_slot,
                                        received.pair_weight, received.expert_offsets)
        outputs = [received.x, received.scales, received.topk_idx, received.topk_weights,
                   received.pair_src, received.pair_slot, received.pair_weight,
                   received.expert_offsets]
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
        _args.check_sms(_args.sms_of(config), endpoint.config.dispatch_sms)
        streams = self._streams(x.device, previous_event, async_finish, allocate_on_comm_stream)
        args = dict(x=_tensors.address(x), x_scales=_tensors.address(x_scales))
        if handle.num_worst_tokens:
            received = receive_into_worst_case(endpoint, streams, args, handle.num_worst_tokens,
                                               x.dtype, 0, x.device, native=handle._native,
                                               expert_major=handle.layout == "expert_major")
        else:
            received = receive_exact(endpoint, streams, args, x.dtype, 0, x.device,
                                     native=handle._native,
                                     expert_major=handle.layout == "expert_major")
        handle._native = received.native_handle
        self._dispatched_on(endpoint)
        event = streams.finish([x, x_scales], [received.x, received.scales])
        recv_x = (received.x, received.scales) if x_scales is not None else received.x
        return recv_x, None, None, None, None, event

    # ---- combine -----------------------------------------------------------------------------

    def combine(self, x: torch.Tensor, handle: DispatchHandle,
                topk_weights: Optional[torch.Tensor] = None, bias: BiasType = None,
                config: Optional[Config] = None, previous_event: Optional[EventOverlap] = None,
                async_finish: bool = False, allocate_on_comm_stream: bool = False, *,
                apply_weights: bool = False
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor], EventOverlap]:
        """Collective. Returns (combined_x, combined_topk_weights, event): combined_x[t] is the
        sum over the ranks token t was sent to, ascending, of x's row for t on that rank, added
        in fp32 and rounded once to bf16 (no weights applied: the experts apply them);
        tokens sent nowhere come back as zeros.

        x: [handle.num_recv_rows, H] bf16 (the rows of recv_x, in its order).
        topk_weights: [handle.num_recv_rows, K] fp32 or None.
        bias: None, a [T, H] bf16 tensor, or a pair of them (either may be None), added to
            the sum in fp32 after the rows (bias, then the pair's second), before the one
            rounding; tokens sent nowhere come back as the rounded sum of the biases.

        Differences from DeepEP:
        - handle must come from one of the two latest dispatches of its kind that can await a
          combine at once (two pools; Buffer._endpoint says which dispatch goes where), else
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
        if handle.layout == "expert_major" and topk_weights is not None:
            raise ValueError("topk_weights must be None for an expert-major handle: its rows "
                             "carry their weights (apply_weights=True multiplies by them)")
        bias0, bias1 = _bias_pair(bias, handle.num_tokens, hidden, device)
        _tensors.check_tensor("x", x, (torch.bfloat16,), (rows, hidden), device)
        if topk_weights is not None:
            _tensors.check_tensor("topk_weights", topk_weights, (torch.float32,),
                                  (rows, handle.num_topk), device)
        _args.check_sms(_args.sms_of(config), endpoint.config.combine_sms)
        streams = self._streams(device, previous_event, async_finish, allocate_on_comm_stream)
        with streams.allocating():
            combined_x = torch.empty(handle.num_tokens, hidden, dtype=torch.bfloat16, device=device)
            combined_weights = None
            if topk_weights is not None:
                combined_weights = torch.empty_like(handle._combined_topk_weights)
        if combined_weights is not None:
            with streams.working():
                combined_weights.copy_(handle._combined_topk_weights)
        endpoint.comm.combine(_tensors.address(x), handle._native, _tensors.address(combined_x),
                              _tensors.address(bias0), _tensors.address(bias1),
                              apply_weights=bool(apply_weights))
        endpoint.pending = False  # it combined the pool's latest dispatch (else it raised)
        event = streams.finish([x, topk_weights, bias0, bias1], [combined_x, combined_weights])
        return combined_x, combined_weights, event

    # ---- internode ---------------------------------------------------------------------------

    def internode_dispatch(self, x: XType, handle: Optional[DispatchHandle] = None,
                           num_tokens_per_rank: Optional[torch.Tensor] = None,
                           num_tokens_per_rdma_rank: Optional[torch.Tensor] = None,
                           is_token_in_rank: Optional[torch.Tensor] = None,
                           num_tokens_per_expert: Optional[torch.Tensor] = None,
                           topk_idx: Optional[torch.Tensor] = None,
                           topk_weights: Optional[torch.Tensor] = None, expert_alignment: int = 1,
                           num_worst_tokens: int = 0, config: Optional[Config] = None,
                           previous_event: Optional[EventOverlap] = None,
                           async_finish: bool = False, allocate_on_comm_stream: bool = False):
        """DeepEP's dispatch across nodes: dispatch itself, with the same arguments and results.
        Ranks in other NVLink domains are reached on the Buffer's transport ("nvshmem", the
        default when the group spans hosts and num_rdma_bytes > 0): one put per token and remote
        domain, forwarded inside that domain over NVLink (docs/design.md section 23); combine
        then adds each domain's bf16 partial in ascending domain order."""
        return self.dispatch(x, handle, num_tokens_per_rank, num_tokens_per_rdma_rank,
                             is_token_in_rank, num_tokens_per_expert, topk_idx, topk_weights,
                             expert_alignment, num_worst_tokens, config, previous_event,
                             async_finish, allocate_on_comm_stream)

    def internode_combine(self, x: torch.Tensor, handle: DispatchHandle,
                          topk_weights: Optional[torch.Tensor] = None, bias: BiasType = None,
                          config: Optional[Config] = None,
                          previous_event: Optional[EventOverlap] = None,
                          async_finish: bool = False, allocate_on_comm_stream: bool = False
                          ) -> Tuple[torch.Tensor, Optional[torch.Tensor], EventOverlap]:
        """DeepEP's combine across nodes: combine itself, with the same arguments and results."""
        return self.combine(x, handle, topk_weights, bias, config, previous_event, async_finish,
                            allocate_on_comm_stream)
