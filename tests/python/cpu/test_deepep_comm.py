"""Buffer(None, ..., comm=...): DeepEP's mpi4py communicator in place of a torch.distributed
group, here an object with the same three methods over ranks that are threads."""
import threading

import pytest
import torch

import epcomm
from helpers.runner import run_on_threads


class FakeMpiComm:
    """What Buffer uses of an mpi4py.MPI.Comm (Get_rank, Get_size, the pickle-based
    allgather), for ranks that are threads here."""

    def __init__(self, rank: int, shared: dict) -> None:
        self.rank, self.shared = rank, shared
        self.calls = 0

    def Get_rank(self) -> int:
        return self.rank

    def Get_size(self) -> int:
        return self.shared["size"]

    def allgather(self, obj):
        self.calls += 1
        shared = self.shared
        with shared["lock"]:
            shared["slots"][self.rank] = obj
        shared["barrier"].wait()
        result = list(shared["slots"])
        shared["barrier"].wait()  # nobody refills a slot before everyone has read
        return result


def test_buffer_over_an_mpi_communicator():
    size = 3
    shared = {"size": size, "lock": threading.Lock(), "slots": [None] * size,
              "barrier": threading.Barrier(size)}
    comms = [FakeMpiComm(r, shared) for r in range(size)]

    def body(rank, _group):
        comm = comms[rank]
        buffer = epcomm.Buffer(None, 10**6, comm=comm)
        assert (buffer.rank, buffer.group_size, buffer.group) == (rank, size, comm)
        gathered = buffer._bootstrap.gather_bytes(bytes([rank, 10 + rank]))
        assert gathered == bytes([0, 10, 1, 11, 2, 12])
        assert comm.calls == 1
        buffer._bootstrap.barrier()
        assert comm.calls == 2
        # Its ranks are processes: CPU tensors (the host backend's threads) are refused.
        with pytest.raises(ValueError, match="this Buffer's ranks are processes"):
            buffer.dispatch(torch.zeros(1, 64, dtype=torch.bfloat16),
                            topk_idx=torch.zeros(1, 1, dtype=torch.int64),
                            num_tokens_per_expert=torch.zeros(size, dtype=torch.int32))
        return True
    assert run_on_threads(size, body) == [True] * size
    # group takes precedence over comm, as in DeepEP.
    group = epcomm.make_thread_groups(1)[0]
    buffer = epcomm.Buffer(group, 10**6, comm=object())
    assert buffer.group is group
    with pytest.raises(TypeError, match=r"comm must be an mpi4py.MPI.Comm \(it has no Get_rank"):
        epcomm.Buffer(None, 10**6, comm=object())
