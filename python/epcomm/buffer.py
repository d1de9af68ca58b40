"""Buffer: DeepEP's V1 API on epcomm. This file holds its construction, DeepEP's static helpers,
its lifetime and the communicators and streams it keeps; the calls themselves are mixed in from
_high_throughput.py (get_dispatch_layout, dispatch, combine, internode_*) and
_low_latency_calls.py (low_latency_*)."""
import dataclasses
import sys
from typing import Dict, Optional, Tuple

import torch

import _epcomm

from . import _args
from ._endpoint import (Endpoint, EndpointKind, PoolSizing, create_endpoint, make_config,
                        make_low_latency_config)
from ._high_throughput import HighThroughputCalls
from ._low_latency import check_same_communicator
from ._low_latency_calls import LowLatencyCalls
from ._streams import CallStreams
from ._unsupported import unsupported
from .config import (COMBINE_CHUNKS, DISPATCH_CHUNKS, Config, low_latency_region_bytes,
                     recommended_config)
from .event import EventHandle, EventOverlap
from .groups import bootstrap_for, spans_hosts
from .handle import DispatchHandle


def _sm90_in(architectures: str) -> bool:
    """Whether CMake's CUDA_ARCHITECTURES list (comma-separated here) builds sm_90 code."""
    for entry in filter(None, architectures.split(",")):
        if entry in ("all", "all-major") or entry.split("-")[0].rstrip("af") == "90":
            return True
    return False


class Buffer(HighThroughputCalls, LowLatencyCalls):
    """Expert-parallel dispatch and combine between the ranks of `group`, with DeepEP's V1
    interface (intranode high-throughput, and low-latency with low_latency_mode=True) and
    epcomm's guarantees: outputs are bit-identical across runs, backends and SM counts (rows
    arrive ordered by source rank, then source token; combine adds in fp32 in a fixed order and
    rounds once to bf16).

    group: a torch.distributed process group, one rank per process, several processes per GPU
        allowed (under MPS; use gloo, NCCL refuses shared GPUs); or an epcomm.ThreadGroup
        (ranks are threads), where CPU tensors run the host reference backend. comm: an mpi4py
        communicator, used (as in DeepEP) only when group is None. Both None: the default
        torch.distributed group (where DeepEP raises).
    num_rdma_bytes > 0 with ranks on more than one host (where DeepEP uses RDMA) selects the
        nvshmem transport (NVSHMEM's symmetric heap; peers outside a rank's NVLink domain
        reached through NVSHMEM puts); otherwise, and always on one host, regions are shared
        by CUDA IPC (the ipc transport). Its size is not read. The low-latency calls work
        across domains; the high-throughput ones raise EpcommError (unsupported) when the
        ranks form more than one domain.
    The keywords DeepEP gives no effect on results are accepted and do nothing here:
        num_qps_per_rank (checked positive in low-latency mode, as DeepEP asserts),
        allow_nvlink_for_low_latency_mode and allow_mnnvl (NVSHMEM transport choices).
    use_fabric=True raises EpcommError (ErrorCode.unsupported) naming the feature: fabric
        memory is not built. enable_shrink=True turns on the elastic low-latency mode: a
        low-latency wait on a rank that times out (timeout_ms) masks that rank instead of
        failing, and the low_latency_*_mask_buffer calls work (see
        low_latency_update_mask_buffer); the high-throughput calls have no masks.

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
    - The SM count (the creating call's config.num_sms, else Buffer.num_sms; one count for
      dispatch and combine) is fixed when a communicator is created; a later call whose config
      asks for a different one raises ValueError, and a call with config=None uses it (the SM
      count never changes a result).
    - low_latency_mode=True enables low_latency_dispatch / low_latency_combine, whose buffers
      are sized by the first low_latency_dispatch's num_max_dispatch_tokens_per_rank, hidden
      and num_experts (not by num_rdma_bytes); num_nvl_bytes may then be 0 if the
      high-throughput calls are not used.
    - destroy() is collective (a barrier before the regions are unmapped) and works whether or
      not explicitly_destroy was set (DeepEP asserts it was). Without it the communicators are
      destroyed when the Buffer is garbage collected, which is collective too: call destroy()
      on every rank before torch.distributed.destroy_process_group().

    epcomm keywords: max_tokens_per_rank, max_topk (default: max(8, the first dispatch's
    top-k)), algorithm ("flat", or "ring": the two-stage baseline), timeout_ms (every wait on
    a peer gives up after it with EpcommError), transport ("ipc" or "nvshmem": overrides the
    choice above; nvshmem needs one rank per process and an epcomm built with NVSHMEM) and
    ranks_per_domain (Config.ranks_per_domain: 0 = one domain with ipc, as NVSHMEM finds them
    with nvshmem; L > 0, nvshmem only: domains of L consecutive ranks, the others reached
    through puts even where they could be mapped). The chosen transport is the attribute
    `transport` once the first communicator exists.
    """

    num_sms: int = 20

    def __init__(self, group=None, num_nvl_bytes: int = 0, num_rdma_bytes: int = 0,
                 low_latency_mode: bool = False, num_qps_per_rank: int = 24,
                 allow_nvlink_for_low_latency_mode: bool = True, allow_mnnvl: bool = False,
                 use_fabric: bool = False, explicitly_destroy: bool = False,
                 enable_shrink: bool = False, comm=None, *,
                 max_tokens_per_rank: Optional[int] = None, max_topk: Optional[int] = None,
                 algorithm: str = "flat", timeout_ms: int = 5000,
                 transport: Optional[str] = None, ranks_per_domain: int = 0) -> None:
        if use_fabric:
            raise unsupported("use_fabric")
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
        if transport not in (None, "ipc", "nvshmem"):
            raise ValueError(f"transport = {transport!r}: must be None, 'ipc' or 'nvshmem'")
        if not isinstance(ranks_per_domain, int) or ranks_per_domain < 0:
            raise ValueError(f"ranks_per_domain = {ranks_per_domain!r}: must be 0 (one domain, "
                             f"or as NVSHMEM finds them) or a positive int")
        if not max_tokens_per_rank and num_nvl_bytes == 0 and not low_latency_mode:
            raise ValueError("num_nvl_bytes = 0 and no max_tokens_per_rank: epcomm sizes its "
                             "receive pool from one of them")

        self._bootstrap = bootstrap_for(group, comm)
        self.group = comm if group is None and comm is not None else group  # as DeepEP keeps it
        self.rank = self._bootstrap.rank()
        self.group_size = self._bootstrap.size()
        self.num_nvl_bytes = num_nvl_bytes
        self.num_rdma_bytes = num_rdma_bytes
        self.low_latency_mode = bool(low_latency_mode)
        self.explicitly_destroy = explicitly_destroy
        self.enable_shrink = bool(enable_shrink)
        # The rank masks (enable_shrink), kept here until the low-latency communicator exists.
        self._ll_mask = [0] * self.group_size
        self._sizing = PoolSizing(num_nvl_bytes, max_tokens_per_rank, max_topk,
                                  algorithms[algorithm], timeout_ms,
                                  ranks_per_domain=ranks_per_domain)
        # The caller's choice, else None until the first communicator: nvshmem where DeepEP
        # would use RDMA (num_rdma_bytes > 0 and ranks on several hosts), else ipc.
        self.transport: Optional[str] = transport
        # Both modes, in creation order; key (kind, pool): a high-throughput kind has up to two
        # pools (Buffer._endpoint), the low-latency communicator is pool 0 of its kind.
        self._endpoints: Dict[Tuple[EndpointKind, int], Endpoint] = {}
        self._dispatches = 0  # high-throughput dispatches issued, fresh or cached
        self._low_latency: Optional[Endpoint] = None  # created by the first low_latency_dispatch
        self._comm_stream: Optional[torch.cuda.Stream] = None
        # get_local_buffer_tensor's memory (key: use_rdma_buffer) and the zero-copy combine
        # inputs (key: low-latency buffer index), made on first use, dropped by destroy().
        self._local_buffers: Dict[bool, torch.Tensor] = {}
        self._ll_combine_buffers: Dict[int, torch.Tensor] = {}
        self._destroyed = False

    # ---- DeepEP's static helpers -------------------------------------------------------------

    @staticmethod
    def is_sm90_compiled() -> bool:
        """Whether this epcomm's CUDA backend was compiled for sm_90 (Hopper), where DeepEP says
        whether its SM90 features (FP8, TMA) were compiled in. False without a CUDA backend."""
        return bool(_epcomm.BUILT_WITH_CUDA) and _sm90_in(_epcomm.CUDA_ARCHITECTURES)

    @staticmethod
    def set_num_sms(new_num_sms: int) -> None:
        """Sets the SMs (thread blocks) later-created communicators dispatch and combine with.
        Unlike DeepEP, odd counts are fine."""
        if not isinstance(new_num_sms, int) or new_num_sms < 1:
            raise ValueError(f"new_num_sms = {new_num_sms!r}: must be a positive int")
        Buffer.num_sms = new_num_sms

    @staticmethod
    def get_dispatch_config(num_ranks: int) -> Config:
        """DeepEP's recommended dispatch Config for num_ranks: Config(Buffer.num_sms, chunk
        sizes of DeepEP's table). epcomm reads only num_sms. Difference: for a rank count
        DeepEP does not list (it asserts) the chunk sizes are Config's defaults."""
        _args.check_count("num_ranks", num_ranks, minimum=1)
        return recommended_config(DISPATCH_CHUNKS, num_ranks, Buffer.num_sms)

    @staticmethod
    def get_combine_config(num_ranks: int) -> Config:
        """DeepEP's recommended combine Config for num_ranks, as get_dispatch_config."""
        _args.check_count("num_ranks", num_ranks, minimum=1)
        return recommended_config(COMBINE_CHUNKS, num_ranks, Buffer.num_sms)

    @staticmethod
    def capture() -> EventOverlap:
        """EventOverlap(EventHandle()): an event recorded on the current CUDA stream, to pass as
        previous_event. Without a CUDA device its event records nothing (see EventHandle)."""
        return EventOverlap(EventHandle())

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

    def get_comm_stream(self) -> torch.cuda.Stream:
        """The stream every CUDA call of this Buffer runs on. Made on the current CUDA device
        if no call has made it yet (DeepEP makes it at construction); later calls must then use
        that device. RuntimeError where PyTorch has no CUDA device: CPU tensors run
        synchronously on the host backend, with no stream."""
        self._check_usable()
        if self._comm_stream is None:
            if not torch.cuda.is_available():
                raise RuntimeError("get_comm_stream: no CUDA device here; calls on CPU tensors "
                                   "run synchronously on the host reference backend, with no "
                                   "stream")
            self._comm_stream = torch.cuda.Stream(device=torch.cuda.current_device())
        return self._comm_stream

    def get_local_buffer_tensor(self, dtype: torch.dtype, size: Optional[torch.Size] = None,
                                offset: int = 0, use_rdma_buffer: bool = False) -> torch.Tensor:
        """A tensor of `dtype` over this rank's num_nvl_bytes (or, with use_rdma_buffer,
        num_rdma_bytes) bytes of Buffer-owned memory, from byte `offset`: every call views the
        same memory, zeroed when first made; with `size`, its first size.numel() elements
        shaped as size. On the communication stream's device, else the current CUDA device,
        else (no CUDA device) host memory. Local.

        Differences from DeepEP: the memory is the Buffer's own, not the region peers write
        into (epcomm's regions belong to communicators made per kind at the first call, and
        their signals must not be overwritten), so writing it changes no call: zeroing it, as a
        DeepEP caller does to clean the buffer, is harmless and not needed (clean_low_latency_
        buffer). The tensor ends at the end of the memory ((bytes - offset) // itemsize
        elements; DeepEP's runs offset bytes past it); offset must be a multiple of the element
        size; a size larger than what is left raises ValueError."""
        self._check_usable()
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype, not {type(dtype).__name__}")
        num_bytes = self.num_rdma_bytes if use_rdma_buffer else self.num_nvl_bytes
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if not isinstance(offset, int) or not 0 <= offset <= num_bytes or offset % itemsize:
            raise ValueError(f"offset = {offset!r}: must be a multiple of {itemsize} (the size of "
                             f"{dtype}) in [0, {num_bytes}]")
        memory = self._local_buffers.get(bool(use_rdma_buffer))
        if memory is None:
            memory = torch.zeros(num_bytes, dtype=torch.uint8, device=self._local_device())
            self._local_buffers[bool(use_rdma_buffer)] = memory
        count = (num_bytes - offset) // itemsize
        tensor = memory[offset:offset + count * itemsize].view(dtype)
        if size is None:
            return tensor
        size = torch.Size(size)
        if size.numel() > count:
            raise ValueError(f"size = {list(size)} needs {size.numel()} elements; the buffer holds "
                             f"{count} of {dtype} from offset {offset}")
        return tensor[:size.numel()].view(size)

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
        self._local_buffers.clear()
        self._ll_combine_buffers.clear()

    def __del__(self) -> None:
        if getattr(self, "_destroyed", True):
            return
        try:
            self.destroy()
        except Exception as error:  # no raising from a finalizer; say what went wrong
            print(f"epcomm: Buffer on rank {self.rank}: destroy failed: {error}", file=sys.stderr)

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

    def _endpoint(self, kind: EndpointKind, num_tokens: int, num_topk: int,
                  sms: Optional[int], device: torch.device) -> Endpoint:
        """The communicator a fresh dispatch of `kind` goes to, created now (collectively) if
        needed, checked to take num_tokens x num_topk (before any collective step). A new one
        dispatches and combines with `sms` SMs (the call's config.num_sms), else
        Buffer.num_sms: one count for both, as DeepEP's configs have and the ring needs.

        Two pools per kind, so that two dispatches can await their combines at once (vLLM's
        dual-batch overlap): pool 0 unless its latest dispatch awaits its first combine, then
        pool 1 (created by the first such dispatch), and when both await one, the pool with
        the older dispatch, whose handle then goes stale. Every rank issues the same calls,
        so every rank picks the same pool."""
        pools = [self._endpoints.get((kind, p)) for p in (0, 1)]
        free = [p for p in (0, 1) if pools[p] is None or not pools[p].pending]
        pool = free[0] if free else min((0, 1), key=lambda p: pools[p].last_dispatch)
        endpoint = pools[pool]
        if endpoint is not None:
            _args.check_sms(sms, endpoint.config.dispatch_sms)
            _args.check_fits(endpoint.config, num_tokens, num_topk)
            return endpoint
        if pools[0] is not None:  # pool 1 is made like pool 0
            config = pools[0].config
            _args.check_sms(sms, config.dispatch_sms)
        else:
            sms = sms or Buffer.num_sms
            config = make_config(kind, self._sizing, self.group_size, num_topk, sms, sms)
        _args.check_fits(config, num_tokens, num_topk)
        return self._create_endpoint(kind, config, device, pool)

    def _dispatched_on(self, endpoint: Endpoint) -> None:
        """A dispatch (fresh or cached) was issued on `endpoint`'s pool."""
        self._dispatches += 1
        endpoint.pending = True
        endpoint.last_dispatch = self._dispatches

    def _low_latency_endpoint(self, kind: EndpointKind, num_topk: int,
                              device: torch.device) -> Endpoint:
        """The low-latency communicator, created now (collectively) by the first
        low_latency_dispatch; later calls must fit it."""
        if self._low_latency is not None:
            check_same_communicator(self._low_latency, kind, num_topk)
            return self._low_latency
        config = make_low_latency_config(kind, self._sizing, num_topk, Buffer.num_sms)
        config.ll_enable_shrink = self.enable_shrink
        self._low_latency = self._create_endpoint(kind, config, device)
        for rank, masked in enumerate(self._ll_mask):  # set before the first dispatch
            if masked:
                self._low_latency.comm.low_latency_update_mask(rank, True)
        return self._low_latency

    def _resolve_transport(self) -> None:
        """Collective (the first communicator's creation is): fixes self.transport."""
        if self._sizing.transport is not None:
            return
        transport = self.transport
        if transport is None:
            several_hosts = self.num_rdma_bytes > 0 and spans_hosts(self._bootstrap)
            transport = "nvshmem" if several_hosts else "ipc"
        self.transport = transport
        self._sizing = dataclasses.replace(self._sizing,
                                           transport=getattr(_epcomm.Transport, transport))

    def _create_endpoint(self, kind: EndpointKind, config: _epcomm.Config,
                         device: torch.device, pool: int = 0) -> Endpoint:
        self._resolve_transport()
        config.transport = self._sizing.transport
        stream = self._comm_stream.cuda_stream if device.type == "cuda" else 0
        device_index = device.index if device.type == "cuda" else -1
        endpoint = create_endpoint(self._bootstrap, kind, config, device_index, stream)
        self._endpoints[(kind, pool)] = endpoint
        return endpoint

    def _local_device(self) -> torch.device:
        if self._comm_stream is not None:
            return self._comm_stream.device
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
