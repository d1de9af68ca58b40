"""Buffer.low_latency_dispatch / low_latency_combine on CUDA tensors, one rank per process,
against the C++ host reference: each process computes every rank's reference outputs on threads
of its own (host backend, CPU tensors) and compares its own outputs bit for bit. Run with 2, 4
and 8 processes (scripts/python_gpu_check.sh)."""
import os

import numpy as np
import pytest
import torch

import epcomm
from helpers import ll_reference
from helpers.expect import _np_bits, assert_bits_equal
from helpers.ll_expect import compare_ll_case
from helpers.ll_runner import host_ll_reference, run_ll_case
from helpers.ll_workload import PROBE_BITS, LLCase, rounding_probe

WORLD = int(os.environ.get("WORLD_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "2")))
# The Buffers' transport and domains (Buffer's transport / ranks_per_domain), from
# EPCOMM_TEST_TRANSPORT and EPCOMM_TEST_RANKS_PER_DOMAIN: scripts/python_gpu_check.sh also runs
# this file across NVSHMEM domains.
TRANSPORT = {key: kind(os.environ[name]) for key, kind, name in (
    ("transport", str, "EPCOMM_TEST_TRANSPORT"),
    ("ranks_per_domain", int, "EPCOMM_TEST_RANKS_PER_DOMAIN")) if name in os.environ}
M = 32
SMS = 8  # 8 processes sharing one GPU still leave room for each other's blocks


def _cases(R: int):
    """T in {0, 1, 13, M} x {bf16, fp8}; hidden, K, index type, routing, hooks, two
    micro-batches in flight, async_finish and out= vary with the case index."""
    cases, i = [], 0
    for T in (0, 1, 13, M):
        for fp8 in (False, True):
            for routing in ("random", "distinct"):
                hook = (i // 2) % 2 == 1
                cases.append(LLCase(
                    R, T, M, (128, 512, 7168)[i % 3], (2, 4, 8)[(i // 3) % 3], 4 * R,
                    routing=routing, fp8=fp8,
                    index_dtype=torch.int32 if i % 4 == 1 else torch.int64,
                    ragged=i % 5 == 2, hook=hook, in_flight=(i // 4) % 2 == 1,
                    out_arg=i % 3 == 2, async_finish=not hook and i % 3 == 0,
                    seed=8000 + 10 * i))
                i += 1
    # Buffer reuse over many rounds, two micro-batches in flight, hooks.
    cases.append(LLCase(R, M, M, 512, 4, 4 * R, fp8=True, hook=True, in_flight=True, rounds=6,
                        seed=9200))
    # Power-of-two scales, UE8M0 codes at DeepSeek's hidden size, masked ranks, wait stats.
    cases.append(LLCase(R, 13, M, 7168, 8, 4 * R, fp8=True, scales="ue8m0", wait_stats=True,
                        seed=9300))
    cases.append(LLCase(R, M, M, 512, 4, 4 * R, fp8=True, scales="pow2", hook=True,
                        in_flight=True, rounds=2, seed=9310))
    cases.append(LLCase(R, M, M, 512, 4, 4 * R, masked=1 << (R - 1), wait_stats=True, rounds=2,
                        seed=9320))
    cases.append(LLCase(R, M, M, 512, 4, 4 * R, fp8=True, scales="ue8m0", masked=1,
                        hook=True, ragged=True, seed=9330))
    # Zero-copy combine input (get_next_low_latency_combine_buffer), both buffers in use.
    cases.append(LLCase(R, M, M, 512, 4, 4 * R, fp8=True, in_flight=True, zero_copy=True,
                        rounds=2, seed=9340))
    return cases


class Buffers:
    """One low-latency Buffer per (hidden, index type, masks): epcomm fixes the first two at the
    first call, and masks need enable_shrink."""

    def __init__(self) -> None:
        self.made = {}

    def get(self, case: LLCase) -> epcomm.Buffer:
        key = (case.hidden, case.index_dtype, case.masked != 0)
        if key not in self.made:
            self.made[key] = epcomm.Buffer(None, low_latency_mode=True,
                                           num_qps_per_rank=case.experts_per_rank,
                                           enable_shrink=case.masked != 0, **TRANSPORT)
        return self.made[key]


@pytest.fixture(scope="module")
def buffers(dist_env):
    epcomm.Buffer.set_num_sms(SMS)
    made = Buffers()
    yield made
    for buffer in made.made.values():  # collective, in the same order on every rank
        buffer.destroy()


@pytest.mark.parametrize("case", _cases(WORLD), ids=LLCase.name)
def test_cuda_matches_host_reference(dist_env, buffers, case: LLCase):
    rank, world, device = dist_env
    assert world == case.num_ranks
    got = run_ll_case(buffers.get(case), case, rank, device)
    want = host_ll_reference(case)
    compare_ll_case(case, rank, got, want[rank])


def test_combine_rounds_once_and_outputs_are_device_views(dist_env, buffers):
    rank, world, device = dist_env
    case = LLCase(world, 1, M, 128, 2, 4 * world)
    buffer = buffers.get(case)
    probes = [rounding_probe(case, r) for r in range(world)]
    probe = {k: v.to(device) for k, v in probes[rank].items()}
    recv_x, recv_count, handle, _, _ = buffer.low_latency_dispatch(
        probe["x"], probe["topk_idx"], M, case.num_experts, use_fp8=False)
    assert recv_x.device == device and recv_count.device == device
    assert recv_count.tolist() == [1, 1] + [0] * (case.experts_per_rank - 2)
    combined, _, _ = buffer.low_latency_combine(probe["y"], probe["topk_idx"],
                                                probe["topk_weights"], handle)
    got = _np_bits(combined.cpu()).view(np.uint16)
    assert got[0, :2].tolist() == list(PROBE_BITS)
    xs = [_np_bits(p["x"]).view(np.uint16) for p in probes]
    ids = [p["topk_idx"].to(torch.int64).numpy() for p in probes]
    received = [ll_reference.dispatch(xs, ids, d, case.num_experts, M, False)
                for d in range(world)]
    ys = [_np_bits(p["y"]).view(np.uint16) for p in probes]
    want = ll_reference.combine(received, ys, rank, ids[rank],
                                probes[rank]["topk_weights"].numpy(), case.num_experts)
    assert_bits_equal(f"rank {rank} combined_x", got, want)
