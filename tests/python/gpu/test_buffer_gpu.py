"""Buffer on CUDA tensors, one rank per process, against the C++ host reference: each process
computes every rank's reference outputs on threads of its own (host backend, CPU tensors) and
compares its own outputs bit for bit. Run with 2, 4 and 8 processes (scripts/python_gpu_check.sh).
"""
import os

import pytest
import torch

import epcomm
from helpers.expect import assert_bits_equal
from helpers.runner import host_reference, run_case, run_overlapped
from helpers.workload import ROUTINGS, Case

WORLD = int(os.environ.get("WORLD_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "2")))
# The Buffers' transport and domains, from EPCOMM_TEST_TRANSPORT and
# EPCOMM_TEST_RANKS_PER_DOMAIN (scripts/python_gpu_check.sh also runs this file across NVSHMEM
# domains); the host reference then combines in the same domain order.
TRANSPORT = {key: kind(os.environ[name]) for key, kind, name in (
    ("transport", str, "EPCOMM_TEST_TRANSPORT"),
    ("ranks_per_domain", int, "EPCOMM_TEST_RANKS_PER_DOMAIN")) if name in os.environ}
MAX_TOKENS = 128
SMS = 8  # 8 processes sharing one GPU still leave room for each other's blocks


def _cases(R: int):
    """Every (routing, T, dtype); index type, K, hidden, weights, alignment and the output and
    stream modes vary with the case index so that each meets several shapes."""
    cases, i = [], 0
    for routing in ROUTINGS:
        for T in (0, 1, 13, 96):
            for fp8 in (False, True):
                cases.append(Case(
                    R, T, 7168 if i % 9 == 4 else (256 if i % 2 else 128), 8 if i % 3 == 0 else 4,
                    8 * R, routing=routing, fp8=fp8,
                    index_dtype=torch.int32 if (i // 2) % 2 else torch.int64,
                    with_weights=i % 5 != 3, expert_alignment=1 + i % 3,
                    worst_case=i % 4 == 3, cached=i % 3 == 1, max_tokens_per_rank=MAX_TOKENS,
                    async_finish=i % 2 == 1, previous_event=i % 4 in (1, 2),
                    allocate_on_comm_stream=i % 4 == 1, with_config=i % 5 == 1,
                    seed=7000 + 10 * i))
                i += 1
    # Pool reuse over many rounds on one communicator, fresh routing every round.
    cases.append(Case(R, 64, 512, 4, 4 * R, cached=True, rounds=12, async_finish=True,
                      max_tokens_per_rank=MAX_TOKENS, seed=9100))
    return cases


@pytest.fixture(scope="module")
def buffer(dist_env):
    epcomm.Buffer.set_num_sms(SMS)
    buffer = epcomm.Buffer(None, max_tokens_per_rank=MAX_TOKENS, **TRANSPORT)
    yield buffer
    buffer.destroy()


def _compare(case: Case, rank: int, got: dict, want: dict, num_recv: int) -> None:
    where = f"{case.name()} seed {case.seed} rank {rank}"
    assert got.keys() == want.keys(), where
    for key in got:
        g, w = got[key], want[key]
        if not isinstance(g, torch.Tensor) or not isinstance(w, torch.Tensor):
            assert g == w, f"{where} {key}: {g} != {w}"  # counts, num_recv, or both None
            continue
        if key in ("recv_x", "recv_x_scales", "cached_x", "cached_x_scales"):
            g, w = g[:num_recv], w[:num_recv]  # worst-case padding rows are undefined
        assert_bits_equal(f"{where} {key}", g.numpy(), w.numpy())


@pytest.mark.parametrize("case", _cases(WORLD), ids=Case.name)
def test_cuda_matches_host_reference(dist_env, buffer, case: Case):
    rank, world, device = dist_env
    assert world == case.num_ranks
    got = run_case(buffer, case, rank, device)
    want = host_reference(case, **TRANSPORT)
    for index in range(case.rounds):
        # Rows this rank received: every source's count for it (known to the reference).
        num_recv = sum(int(want[s][index]["num_tokens_per_rank"][rank]) for s in range(world))
        if not case.worst_case:
            assert want[rank][index]["num_recv"] == num_recv
        _compare(case.round(index), rank, got[index], want[rank][index], num_recv)


@pytest.mark.parametrize("fp8", [False, True])
def test_two_micro_batches_await_their_combines_at_once(dist_env, buffer, fp8):
    """vLLM's dual-batch overlap: micro-batch 0 and 1 dispatched, then combined in order. They
    use the Buffer's two pools; every output equals the host reference's for each alone."""
    rank, world, device = dist_env
    cases = [Case(world, 40 + 9 * mb, 256, 4, 8 * world, routing="with_holes", fp8=fp8,
                  max_tokens_per_rank=MAX_TOKENS, cached=mb == 1, async_finish=mb == 0,
                  seed=9500 + 10 * mb + fp8) for mb in (0, 1)]
    # host_reference runs round 0 of a case (case.round(0): its own seed): so does this.
    got = run_overlapped(buffer, [case.round(0) for case in cases], rank, device)
    for case, g in zip(cases, got):
        want = host_reference(case, **TRANSPORT)[rank][0]
        _compare(case.round(0), rank, g, want, want["num_recv"])


def test_stale_handle_and_device_checks(dist_env, buffer):
    rank, world, device = dist_env
    E, T = 8 * world, 16
    x = torch.randn(T, 128, device=device).to(torch.bfloat16)
    topk_idx = torch.randint(0, E, (T, 2), device=device)
    per_rank, _, per_expert, in_rank, _ = buffer.get_dispatch_layout(topk_idx, E)
    with pytest.raises(ValueError, match=r"topk_idx is on cpu; expected cuda"):
        buffer.dispatch(x, topk_idx=topk_idx.cpu(), num_tokens_per_expert=per_expert)
    args = dict(num_tokens_per_rank=per_rank, is_token_in_rank=in_rank,
                num_tokens_per_expert=per_expert, topk_idx=topk_idx)
    recv_x, _, _, _, first, _ = buffer.dispatch(x, **args)
    recv_x2, _, _, _, second, _ = buffer.dispatch(x, **args)  # the Buffer's second pool
    recv_x3, _, _, _, third, _ = buffer.dispatch(x, **args)  # overwrites first's pool
    with pytest.raises(ValueError, match=r"x is on cpu; the handle's dispatch ran on cuda"):
        buffer.dispatch(x.cpu(), handle=second)
    with pytest.raises(epcomm.EpcommError) as raised:
        buffer.combine(recv_x, first)
    assert raised.value.code == epcomm.ErrorCode.stale_handle
    # Each token's row came back once from every rank it went to, unchanged.
    sent_to = in_rank.sum(dim=1, keepdim=True).float()
    for rows, handle in ((recv_x2, second), (recv_x3, third)):
        combined, _, _ = buffer.combine(rows, handle)
        assert torch.equal(combined, (x.float() * sent_to).to(torch.bfloat16))
    assert buffer.get_comm_stream() is not None


def _wide(shape, generator, device):
    """bf16 values over many binades and both signs (a second rounding shows)."""
    mantissa = torch.rand(shape, generator=generator) + 1.0
    exponent = torch.randint(-12, 12, shape, generator=generator).float()
    sign = torch.randint(0, 2, shape, generator=generator).float() * 2 - 1
    return (sign * mantissa * torch.pow(2.0, exponent)).to(torch.bfloat16).to(device)


@pytest.mark.parametrize("worst_case", [False, True])
def test_combine_adds_biases_in_fp32_before_the_one_rounding(dist_env, buffer, worst_case):
    """Rows of small integers sum exactly over any number of ranks, so the combine without bias
    is exact and the biased one must equal bf16(that + bias_0 + bias_1) in fp32."""
    rank, world, device = dist_env
    E, T, H = 8 * world, 40, 256
    generator = torch.Generator().manual_seed(300 + rank)
    x = torch.randint(-8, 9, (T, H), generator=generator).to(torch.bfloat16).to(device)
    topk_idx = torch.randint(-1, E, (T, 4), generator=generator).to(device)
    topk_idx[T // 2:] = -1  # tokens sent nowhere come back as the biases' rounded sum
    per_rank, _, per_expert, in_rank, _ = buffer.get_dispatch_layout(topk_idx, E)
    args = dict(num_tokens_per_rank=per_rank, is_token_in_rank=in_rank,
                num_tokens_per_expert=per_expert, topk_idx=topk_idx)
    if worst_case:
        args["num_worst_tokens"] = MAX_TOKENS * world
    recv_x, _, _, _, handle, _ = buffer.dispatch(x, **args)
    b0, b1 = _wide((T, H), generator, device), _wide((T, H), generator, device)
    plain, _, _ = buffer.combine(recv_x, handle)
    sent_to = in_rank.sum(dim=1, keepdim=True).float()
    assert torch.equal(plain, (x.float() * sent_to).to(torch.bfloat16))
    for bias in (b0, (b0, None), (None, b1), (b0, b1)):
        parts = bias if isinstance(bias, tuple) else (bias, None)
        combined, _, _ = buffer.combine(recv_x, handle, bias=bias)
        acc = plain.float()
        for part in parts:
            if part is not None:
                acc = acc + part.float()
        assert torch.equal(combined.view(torch.int16), acc.to(torch.bfloat16).view(torch.int16))
