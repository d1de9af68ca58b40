"""Where a Buffer's ranks come from: a torch.distributed group (one rank per process), an
mpi4py communicator (DeepEP's `comm`, one rank per process), or epcomm's in-process groups
(ranks are threads; CPU tensors then run the host reference)."""
import socket
from typing import List, Optional

import torch

import _epcomm


class TorchGroupBootstrap(_epcomm.Bootstrap):
    """epcomm's Bootstrap over a torch.distributed process group.

    epcomm calls all_gather() while it creates or destroys a communicator (CUDA IPC handles,
    a teardown barrier), from C++ and with the GIL taken back for the call. gloo groups gather
    CPU tensors; NCCL groups gather CUDA tensors on the current device. NCCL refuses two ranks
    on one GPU: with several processes per GPU (MPS), use gloo. Waits are bounded by the
    group's own timeout (init_process_group(timeout=...)).
    """

    def __init__(self, group: Optional["torch.distributed.ProcessGroup"] = None) -> None:
        import torch.distributed as dist
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("group: torch.distributed is not initialized; call "
                               "torch.distributed.init_process_group first")
        self._dist = dist
        self._group = group if group is not None else dist.group.WORLD
        super().__init__(dist.get_rank(self._group), dist.get_world_size(self._group), False)
        backend = str(dist.get_backend(self._group))
        uses_cpu = "gloo" in backend or "mpi" in backend
        self._device = torch.device("cpu") if uses_cpu else torch.device(
            "cuda", torch.cuda.current_device())

    def all_gather(self, data: bytes) -> bytes:
        if len(data) == 0:  # a gather of nothing is still a collective
            self.barrier()
            return b""
        send = torch.tensor(list(data), dtype=torch.uint8, device=self._device)
        parts = [torch.empty_like(send) for _ in range(self.size())]
        self._dist.all_gather(parts, send, group=self._group)
        return b"".join(bytes(part.cpu().tolist()) for part in parts)

    def barrier(self) -> None:
        self.all_gather(b"\0")


class MpiCommBootstrap(_epcomm.Bootstrap):
    """epcomm's Bootstrap over an mpi4py communicator (what DeepEP's Buffer takes as `comm` when
    `group` is None). Uses only comm.Get_rank(), comm.Get_size() and comm.allgather(obj), the
    pickle-based collective, which is plenty for the few bytes epcomm gathers while it creates
    or destroys a communicator. Its ranks are separate processes (CUDA tensors only)."""

    def __init__(self, comm) -> None:
        for method in ("Get_rank", "Get_size", "allgather"):
            if not callable(getattr(comm, method, None)):
                raise TypeError(f"comm must be an mpi4py.MPI.Comm (it has no {method}()), not "
                                f"{type(comm).__name__}")
        self._comm = comm
        super().__init__(comm.Get_rank(), comm.Get_size(), False)

    def all_gather(self, data: bytes) -> bytes:
        parts = self._comm.allgather(bytes(data))
        return b"".join(parts)

    def barrier(self) -> None:
        self._comm.allgather(b"")


class ThreadGroup:
    """One rank of a group whose ranks are threads of this process (give one to each thread).

    A Buffer on a ThreadGroup runs CPU tensors on epcomm's host reference backend, the oracle
    the CUDA backend is checked against byte for byte, and CUDA tensors on the CUDA backend
    (several ranks sharing a GPU then need CUDA_DEVICE_MAX_CONNECTIONS >= 4 x ranks per GPU,
    set before CUDA starts). Not a torch.distributed group: it only offers rank() and size().
    """

    def __init__(self, bootstrap: _epcomm.Bootstrap) -> None:
        self.bootstrap = bootstrap

    def rank(self) -> int:
        return self.bootstrap.rank()

    def size(self) -> int:
        return self.bootstrap.size()


def make_thread_groups(num_ranks: int, timeout_ms: int = 30000) -> List[ThreadGroup]:
    """num_ranks ThreadGroups of one group; every collective wait gives up after timeout_ms."""
    return [ThreadGroup(b) for b in _epcomm.make_in_process_bootstraps(num_ranks, timeout_ms)]


_HOST_NAME_BYTES = 64


def spans_hosts(bootstrap: _epcomm.Bootstrap) -> bool:
    """Collective unless the ranks are threads of one process: whether the ranks run on more
    than one host (by socket.gethostname())."""
    if bootstrap.in_process():
        return False
    name = socket.gethostname().encode()[:_HOST_NAME_BYTES].ljust(_HOST_NAME_BYTES, b"\0")
    names = bootstrap.gather_bytes(name)
    hosts = {names[i:i + _HOST_NAME_BYTES] for i in range(0, len(names), _HOST_NAME_BYTES)}
    return len(hosts) > 1



def bootstrap_for(group, comm=None) -> _epcomm.Bootstrap:
    """The bootstrap of a Buffer's `group` and `comm` arguments: `group` when given (as in
    DeepEP, `comm` is then not used), else the mpi4py `comm`, else torch.distributed's default
    group."""
    if isinstance(group, ThreadGroup):
        return group.bootstrap
    if isinstance(group, _epcomm.Bootstrap):
        return group
    if group is None and comm is not None:
        return MpiCommBootstrap(comm)
    return TorchGroupBootstrap(group)
