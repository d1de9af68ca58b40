"""Bootstraps written in Python: epcomm's C++ calls them (from threads that released the GIL)
through the pybind11 trampoline; and TorchGroupBootstrap over a gloo group of two processes."""
import socket
import threading

import pytest
import torch

import _epcomm
import epcomm
from helpers.expect import compare_round, expected_round
from helpers.runner import run_case
from helpers.workload import Case


class PythonThreadsBootstrap(_epcomm.Bootstrap):
    """An in-process bootstrap in pure Python: the k-th collective of every rank meets in the
    k-th round of a shared table, guarded by a condition variable."""

    def __init__(self, rank: int, shared: dict) -> None:
        super().__init__(rank, shared["size"], True)
        self._shared = shared
        self._calls = 0
        self.num_gathers = 0

    def all_gather(self, data: bytes) -> bytes:
        shared, call = self._shared, self._calls
        self._calls += 1
        self.num_gathers += 1
        with shared["cv"]:
            parts = shared["rounds"].setdefault(call, {})
            parts[self.rank()] = data
            shared["cv"].notify_all()
            if not shared["cv"].wait_for(lambda: len(parts) == self.size(), timeout=30):
                raise TimeoutError(f"rank {self.rank()}: collective {call} incomplete")
            return b"".join(parts[r] for r in range(self.size()))

    def barrier(self) -> None:
        self.all_gather(b"")


def python_bootstraps(size: int):
    shared = {"size": size, "cv": threading.Condition(), "rounds": {}}
    return [PythonThreadsBootstrap(r, shared) for r in range(size)]


def test_python_bootstrap_drives_the_host_backend():
    case = Case(3, 21, 64, 4, 12, routing="with_holes", cached=True, rounds=2)
    bootstraps = python_bootstraps(case.num_ranks)
    results = [None] * case.num_ranks

    def run(rank: int) -> None:
        buffer = epcomm.Buffer(bootstraps[rank], max_tokens_per_rank=case.max_tokens_per_rank)
        results[rank] = run_case(buffer, case, rank, torch.device("cpu"))
        buffer.destroy()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(case.num_ranks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(r is not None for r in results), "a rank failed; see the thread's traceback"
    # The host backend gathers at every collective call, through Python each time.
    assert all(b.num_gathers >= 4 * case.rounds for b in bootstraps)
    for index in range(case.rounds):
        want = expected_round(case.round(index))
        for rank in range(case.num_ranks):
            compare_round(case.round(index), rank, results[rank][index], want[rank])


def test_gather_bytes_goes_through_the_subclass():
    bootstraps = python_bootstraps(2)
    out = [None, None]

    def run(rank):
        out[rank] = bootstraps[rank].gather_bytes(bytes([rank, 10 + rank]))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    [t.start() for t in threads]
    [t.join(timeout=30) for t in threads]
    assert out == [bytes([0, 10, 1, 11])] * 2


class Broken(_epcomm.Bootstrap):
    def __init__(self, reply):
        super().__init__(0, 1, True)
        self._reply = reply

    def all_gather(self, data):
        if isinstance(self._reply, Exception):
            raise self._reply
        return self._reply

    def barrier(self):
        pass


class NoGather(_epcomm.Bootstrap):
    def __init__(self):
        super().__init__(0, 1, True)


@pytest.mark.parametrize("bootstrap, message", [
    (Broken(b"\0"), "all_gather returned 1 bytes; expected"),
    (Broken("text"), "all_gather must return bytes, not <class 'str'>"),
    (Broken(KeyError("lost peer")), "Bootstrap.all_gather raised KeyError: 'lost peer'"),
    (NoGather(), "does not define all_gather"),
])
def test_bootstrap_faults_become_bootstrap_errors(bootstrap, message):
    buffer = epcomm.Buffer(bootstrap, max_tokens_per_rank=4)
    x = torch.zeros(2, 64, dtype=torch.bfloat16)
    with pytest.raises(epcomm.EpcommError, match=message) as raised:
        buffer.dispatch(x, topk_idx=torch.zeros(2, 1, dtype=torch.int64),
                        num_tokens_per_expert=torch.zeros(2, dtype=torch.int32))
    assert raised.value.code == epcomm.ErrorCode.bootstrap


def test_bootstrap_rank_must_fit_size():
    with pytest.raises(epcomm.EpcommError, match="rank = 2 and size = 2"):
        _epcomm.Bootstrap(2, 2, True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_rank(rank: int, port: int, results) -> None:
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        bootstrap = epcomm.TorchGroupBootstrap()
        gathered = bootstrap.gather_bytes(bytes([rank] * 3 + [200 + rank]))
        bootstrap.barrier()
        buffer = epcomm.Buffer(None, max_tokens_per_rank=4)
        try:
            buffer.dispatch(torch.zeros(2, 64, dtype=torch.bfloat16),
                            topk_idx=torch.zeros(2, 1, dtype=torch.int64),
                            num_tokens_per_expert=torch.zeros(2, dtype=torch.int32))
            error = None
        except ValueError as e:
            error = str(e)
        results.put((rank, bootstrap.rank(), bootstrap.size(), gathered, error))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_torch_group_bootstrap_over_gloo():
    import torch.multiprocessing as mp
    context = mp.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_gloo_rank, args=(r, port, results)) for r in range(2)]
    for p in processes:
        p.start()
    got = sorted(results.get(timeout=120) for _ in processes)
    for p in processes:
        p.join(timeout=60)
        assert p.exitcode == 0
    want_bytes = bytes([0, 0, 0, 200, 1, 1, 1, 201])
    for rank, (r, boot_rank, size, gathered, error) in enumerate(got):
        assert (r, boot_rank, size, gathered) == (rank, rank, 2, want_bytes)
        assert error is not None and "CPU tensors run epcomm's host reference backend" in error
