"""Buffer's transport and ranks_per_domain: the choice (num_rdma_bytes > 0 and several hosts ->
nvshmem, else ipc, or what `transport` says), what the communicators' Configs get, the
argument checks, and low-latency results across domains equal to one domain's (host backend,
ranks as threads: it ignores the transport, so these check the plumbing; the CUDA runs are
tests/python/gpu/test_low_latency_gpu.py and the C++ suites)."""
import pytest
import torch

import _epcomm
import epcomm
from epcomm.groups import spans_hosts
from helpers.ll_expect import compare_ll_case
from helpers.ll_runner import run_ll_case
from helpers.ll_workload import LLCase
from helpers.runner import run_on_threads


class NamedHosts(_epcomm.Bootstrap):
    """A bootstrap of `len(hosts)` ranks seen from rank 0, whose all_gather answers as if rank i
    ran on hosts[i] (64-byte names, as spans_hosts sends them)."""

    def __init__(self, hosts):
        _epcomm.Bootstrap.__init__(self, 0, len(hosts), False)
        self.hosts = hosts

    def all_gather(self, data: bytes) -> bytes:
        assert len(data) == 64
        return b"".join(h.encode().ljust(64, b"\0") for h in self.hosts)

    def barrier(self) -> None:
        pass


def test_spans_hosts_compares_every_rank_s_host_name():
    assert not spans_hosts(NamedHosts(["node-a", "node-a", "node-a"]))
    assert spans_hosts(NamedHosts(["node-a", "node-a", "node-b"]))
    assert not spans_hosts(epcomm.make_thread_groups(2)[0].bootstrap)  # threads: one process


@pytest.mark.parametrize("kwargs, message", [
    (dict(transport="rdma"), r"transport = 'rdma': must be None, 'ipc' or 'nvshmem'"),
    (dict(ranks_per_domain=-1), r"ranks_per_domain = -1: must be 0"),
    (dict(ranks_per_domain=1.5), r"ranks_per_domain = 1.5: must be 0"),
])
def test_bad_transport_arguments_name_themselves(kwargs, message):
    with pytest.raises(ValueError, match=message):
        epcomm.Buffer(epcomm.make_thread_groups(1)[0], low_latency_mode=True, **kwargs)


CASE = LLCase(4, 6, 6, 256, 3, 8, fp8=True, hook=True, in_flight=True, rounds=2, seed=41)


def _run(**kwargs):
    """CASE on 4 thread ranks; each rank returns its outputs and its communicator's Config
    transport fields."""
    def body(rank: int, group: epcomm.ThreadGroup):
        buffer = epcomm.Buffer(group, num_rdma_bytes=1 << 20, low_latency_mode=True,
                               num_qps_per_rank=1, **kwargs)
        assert buffer.transport == kwargs.get("transport")  # decided at the first communicator
        try:
            outputs = run_ll_case(buffer, CASE, rank, torch.device("cpu"))
            config = buffer._low_latency.config
            return outputs, (buffer.transport, config.transport, config.ranks_per_domain)
        finally:
            buffer.destroy()
    return run_on_threads(CASE.num_ranks, body)


def test_one_host_stays_on_ipc_and_nvshmem_domains_give_the_same_results():
    default = _run()
    assert all(chosen == ("ipc", _epcomm.Transport.ipc, 0) for _, chosen in default)
    split = _run(transport="nvshmem", ranks_per_domain=2)
    assert all(chosen == ("nvshmem", _epcomm.Transport.nvshmem, 2) for _, chosen in split)
    for rank in range(CASE.num_ranks):
        compare_ll_case(CASE, rank, split[rank][0], default[rank][0])


def test_domains_need_the_nvshmem_transport():
    def body(rank: int, group: epcomm.ThreadGroup):
        buffer = epcomm.Buffer(group, low_latency_mode=True, ranks_per_domain=1)
        try:
            run_ll_case(buffer, CASE, rank, torch.device("cpu"))
        finally:
            buffer.destroy()
    with pytest.raises(epcomm.EpcommError, match=r"ranks_per_domain = 1: needs transport = "
                                                 r"nvshmem"):
        run_on_threads(CASE.num_ranks, body)
