"""Endpoint: one C++ communicator of a Buffer, created collectively on first use of its kind.

An epcomm Config fixes what DeepEP decides per call (element type, index type, hidden size,
number of experts, worst-case pool), so a Buffer keeps one communicator per such kind.
"""
import struct
from dataclasses import dataclass
from typing import Optional

import _epcomm

from .config import pool_row_bytes


@dataclass(frozen=True)
class EndpointKind:
    backend: _epcomm.Backend
    dtype: _epcomm.DType
    index_type: _epcomm.IndexType
    hidden: int
    num_experts: int
    num_worst_tokens: int  # 0: exact sizes; > 0: the pool holds exactly this many rows
    ll_max_tokens_per_rank: int = 0  # > 0: the low-latency communicator, for M tokens a rank


@dataclass(frozen=True)
class PoolSizing:
    """How the Buffer was told to size its pools (see Buffer's docstring)."""
    num_nvl_bytes: int
    max_tokens_per_rank: Optional[int]
    max_topk: Optional[int]
    algorithm: _epcomm.Algorithm
    timeout_ms: int
    # How the regions are shared (Buffer's transport / ranks_per_domain); the transport is
    # decided on the first communicator's creation, which sets it on every Config
    # (Buffer._resolve_transport, Buffer._create_endpoint).
    transport: Optional[_epcomm.Transport] = None
    ranks_per_domain: int = 0


@dataclass
class Endpoint:
    kind: EndpointKind
    comm: _epcomm.Communicator
    config: _epcomm.Config
    # High-throughput pools: whether the latest dispatch on this communicator awaits its first
    # combine, and the Buffer's dispatch count when it was issued (see Buffer._endpoint).
    pending: bool = False
    last_dispatch: int = 0

    @property
    def experts_per_rank(self) -> int:
        return self.config.num_experts // self.comm.num_ranks()


# The Config fields every rank must agree on, in the order they are exchanged.
_AGREED_FIELDS = ("dtype", "index_type", "hidden", "num_experts", "max_tokens_per_rank",
                  "max_topk", "max_recv_rows", "dispatch_sms", "combine_sms", "algorithm",
                  "wait_timeout_ms", "ll_max_tokens_per_rank", "ll_enable_shrink")


def _base_config(kind: EndpointKind, sizing: PoolSizing, num_topk: int, dispatch_sms: int,
                 combine_sms: int) -> _epcomm.Config:
    """The Config fields both modes set alike."""
    config = _epcomm.Config()
    config.dtype = kind.dtype
    config.index_type = kind.index_type
    config.hidden = kind.hidden
    config.num_experts = kind.num_experts
    config.max_topk = sizing.max_topk or max(num_topk, 8)
    config.dispatch_sms = dispatch_sms
    config.combine_sms = combine_sms
    config.algorithm = sizing.algorithm
    config.wait_timeout_ms = sizing.timeout_ms
    config.ranks_per_domain = sizing.ranks_per_domain
    # epcomm rounds per-expert counts itself; the Buffer applies each call's expert_alignment.
    config.expert_alignment = 1
    return config


def make_config(kind: EndpointKind, sizing: PoolSizing, num_ranks: int, num_topk: int,
                dispatch_sms: int, combine_sms: int) -> _epcomm.Config:
    config = _base_config(kind, sizing, num_topk, dispatch_sms, combine_sms)
    fp8 = kind.dtype == _epcomm.DType.fp8_e4m3
    if sizing.max_tokens_per_rank:
        config.max_tokens_per_rank = sizing.max_tokens_per_rank
    else:
        rows = sizing.num_nvl_bytes // pool_row_bytes(kind.hidden, config.max_topk, fp8)
        config.max_tokens_per_rank = rows // num_ranks
        if config.max_tokens_per_rank < 1:
            raise ValueError(
                f"num_nvl_bytes = {sizing.num_nvl_bytes} holds no token per rank at hidden = "
                f"{kind.hidden} on {num_ranks} ranks: give Buffer a larger num_nvl_bytes or "
                f"max_tokens_per_rank")
    config.max_recv_rows = kind.num_worst_tokens
    return config


def make_low_latency_config(kind: EndpointKind, sizing: PoolSizing, num_topk: int,
                            num_sms: int) -> _epcomm.Config:
    """The communicator of the low-latency calls: buffers for kind.ll_max_tokens_per_rank
    tokens a rank. Its high-throughput pool is never used, so it holds one token a rank (and
    the ring's stage buffers are not built)."""
    config = _base_config(kind, sizing, num_topk, num_sms, num_sms)
    config.max_tokens_per_rank = 1
    config.algorithm = _epcomm.Algorithm.flat
    config.ll_max_tokens_per_rank = kind.ll_max_tokens_per_rank
    return config


def _agree(bootstrap: _epcomm.Bootstrap, config: _epcomm.Config) -> None:
    """Collective: raises ValueError on every rank unless all ranks built the same Config (the
    C++ library assumes it; unequal regions would be read out of bounds)."""
    values = [int(getattr(config, field)) for field in _AGREED_FIELDS]
    record = struct.Struct(f"<{len(values)}q")
    gathered = bootstrap.gather_bytes(record.pack(*values))
    per_rank = [record.unpack_from(gathered, r * record.size) for r in range(bootstrap.size())]
    for rank, theirs in enumerate(per_rank):
        for field, mine, other in zip(_AGREED_FIELDS, values, theirs):
            if mine != other:
                raise ValueError(
                    f"ranks disagree on the communicator to create: {field} = {mine} on rank "
                    f"{bootstrap.rank()} but {other} on rank {rank} (same x, topk_idx, "
                    f"num_worst_tokens and config on every rank, please)")


def create_endpoint(bootstrap: _epcomm.Bootstrap, kind: EndpointKind, config: _epcomm.Config,
                    device: int, stream: int) -> Endpoint:
    """Collective: every rank of `bootstrap` calls it for the same kind in the same order."""
    _agree(bootstrap, config)
    comm = _epcomm.Communicator.create(bootstrap, config, kind.backend, device)
    if kind.backend == _epcomm.Backend.cuda:
        comm.set_stream(stream)
    return Endpoint(kind, comm, config)
