"""Buffer.dispatch(layout="expert_major") and combine(apply_weights=...) on CUDA tensors, one rank
per process, against the C++ host reference: each process runs every rank's round on threads of
its own (host backend, CPU tensors) and compares its own outputs bit for bit (recv_x, scales,
group sizes and offsets, pair data, both combines, the cached dispatch's rows); worst-case
dispatches (num_worst_tokens) against the reference's exact ones."""
import os

import pytest
import torch

import epcomm
from helpers.expect import assert_bits_equal, bits
from helpers.expert_major import assert_worst_case_matches, expert_major_round, worst_case_rows
from helpers.runner import run_on_threads
from helpers.workload import ROUTINGS, Case

WORLD = int(os.environ.get("WORLD_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "2")))
MAX_TOKENS = 128
POOL_TOKENS = 4 * MAX_TOKENS  # pairs may outnumber tokens: room for up to 4 per token
SMS = 8


def _cases(R: int):
    cases, i = [], 0
    for routing in ROUTINGS:
        for T in (0, 1, 13, 96):
            cases.append(Case(
                R, T, 7168 if i % 7 == 3 else (256 if i % 2 else 128), 8 if i % 3 == 0 else 4,
                8 * R, routing=routing, fp8=i % 2 == 1,
                index_dtype=torch.int32 if (i // 2) % 2 else torch.int64,
                with_weights=i % 5 != 3, max_tokens_per_rank=MAX_TOKENS, seed=8100 + 10 * i))
            i += 1
    return cases


@pytest.fixture(scope="module")
def buffer(dist_env):
    epcomm.Buffer.set_num_sms(SMS)
    buffer = epcomm.Buffer(None, max_tokens_per_rank=POOL_TOKENS)
    yield buffer
    buffer.destroy()


def _host_reference(case: Case, alignment: int):
    def body(rank, group):
        buffer = epcomm.Buffer(group, max_tokens_per_rank=POOL_TOKENS)
        try:
            return expert_major_round(buffer, case, rank, alignment, torch.device("cpu"))
        finally:
            buffer.destroy()
    return run_on_threads(case.num_ranks, body)


def _outcome(run):
    """(result, None), or (None, (error code, whether the message names the row counts))."""
    try:
        return run(), None
    except epcomm.EpcommError as error:
        return None, (error.code, "rows" in str(error) and any(c.isdigit() for c in str(error)))



def _assert_same(where: str, got, want):
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(f"{where}[{i}]", g, w)
    elif isinstance(want, torch.Tensor):
        assert got.shape == want.shape, f"{where}: shape {tuple(got.shape)}, want {tuple(want.shape)}"
        assert_bits_equal(where, bits(got), bits(want))
    else:
        assert got == want, f"{where}: {got} != {want}"


@pytest.mark.parametrize("case", _cases(WORLD), ids=Case.name)
def test_expert_major_matches_host_reference(dist_env, buffer, case: Case):
    rank, _, device = dist_env
    alignment = (1, 2, 4, 32)[case.seed // 10 % 4]
    got, got_error = _outcome(lambda: expert_major_round(buffer, case, rank, alignment, device))
    want, want_error = _outcome(lambda: _host_reference(case, alignment)[rank])
    # Pairs may outnumber the pool's rows (R = 2, one rank receiving everything): both backends
    # then refuse the dispatch alike, with a message that names the numbers.
    assert got_error == want_error, f"{case.name()} rank {rank}: CUDA {got_error}, host {want_error}"
    if want_error is not None:
        return
    assert got.keys() == want.keys()
    for key in want:
        _assert_same(f"{case.name()} alignment {alignment} rank {rank} {key}", got[key], want[key])


@pytest.mark.parametrize("case", _cases(WORLD)[1::4], ids=Case.name)
def test_expert_major_worst_case_matches_host_reference(dist_env, buffer, case: Case):
    """Nothing waits on the host: the pair data past the received rows is marked on the device
    (the pool's views hold stale or uninitialised values there)."""
    rank, _, device = dist_env
    alignment = 4
    worst = worst_case_rows(case, alignment)
    got = expert_major_round(buffer, case, rank, alignment, device, num_worst_tokens=worst)
    want = _host_reference(case, alignment)[rank]
    assert_worst_case_matches(f"{case.name()} rank {rank}", got, want, worst)

