"""Expected low-latency outputs from the numpy model, and the bitwise comparison of one rank's
outputs with them (or with another backend's)."""
from typing import Dict, List

import numpy as np
import torch

from . import ll_reference
from .expect import _np_bits, assert_bits_equal
from .ll_workload import LLCase, ll_expert_output, ll_inputs


def expected_ll_round(case: LLCase) -> List[List[Dict]]:
    """want[rank][micro_batch] for one round (case already at that round's seed)."""
    R, E = case.num_ranks, case.num_experts
    want = [[] for _ in range(R)]
    for mb in range(case.micro_batches):
        inputs = [ll_inputs(case, r, mb) for r in range(R)]
        xs = [_np_bits(i["x"]).view(np.uint16) for i in inputs]
        ids = [i["topk_idx"].to(torch.int64).numpy() for i in inputs]
        received = [ll_reference.dispatch(xs, ids, d, E, case.max_tokens, case.fp8,
                                          case.round_scale, case.use_ue8m0, case.masks)
                    for d in range(R)]
        ys = [_np_bits(ll_expert_output(case, d, mb)).view(np.uint16) for d in range(R)]
        for r in range(R):
            expected = dict(received[r])
            expected["combined_x"] = ll_reference.combine(
                received, ys, r, ids[r], inputs[r]["topk_weights"].numpy(), E, case.masks)
            want[r].append(expected)
    return want


def expected_ll_case(case: LLCase) -> List[List[List[Dict]]]:
    """want[round][rank][micro_batch], with "stats" (recv_count summed over every dispatch of
    the case) in the last round's first micro-batch, as run_ll_case reports it."""
    rounds = [expected_ll_round(case.round(i)) for i in range(case.rounds)]
    for rank in range(case.num_ranks):
        every = [mb for r in rounds for mb in r[rank]]
        rounds[-1][rank][0]["stats"] = ll_reference.recv_stats(every)
    return rounds


def compare_ll(where: str, got: Dict, want: Dict) -> None:
    """One micro-batch of one rank, bit for bit: counts, layout, and the first recv_count rows
    of each expert (the rest are undefined), the combined rows; stats where present."""
    count = np.asarray(want["recv_count"])
    assert_bits_equal(f"{where} recv_count", np.asarray(got["recv_count"]), count)
    assert_bits_equal(f"{where} layout_range", np.asarray(got["layout_range"]),
                      np.asarray(want["layout_range"]))
    keys = ["recv_x", "recv_src"] + (["recv_scales"] if want.get("recv_scales") is not None
                                     else [])
    assert ("recv_scales" in got) == ("recv_scales" in keys), f"{where}: scales present?"
    for key in keys:
        g, w = np.asarray(got[key]), np.asarray(want[key])
        assert g.shape == w.shape, f"{where} {key}: shape {g.shape}, expected {w.shape}"
        for le, rows in enumerate(count):
            assert_bits_equal(f"{where} {key} of local expert {le}", g[le, :rows], w[le, :rows])
    assert_bits_equal(f"{where} combined_x", np.asarray(got["combined_x"]),
                      np.asarray(want["combined_x"]))
    assert ("stats" in got) == ("stats" in want), f"{where}: stats present?"
    if "stats" in want:
        assert_bits_equal(f"{where} stats", np.asarray(got["stats"]), np.asarray(want["stats"]))


def compare_ll_case(case: LLCase, rank: int, got: List[List[Dict]],
                    want: List[List[Dict]]) -> None:
    """got[round][micro_batch] of one rank against want[round][micro_batch]."""
    assert len(got) == len(want) == case.rounds
    for index, (got_round, want_round) in enumerate(zip(got, want)):
        assert len(got_round) == len(want_round) == case.micro_batches
        for mb, (g, w) in enumerate(zip(got_round, want_round)):
            compare_ll(f"{case.name()} round {index} rank {rank} micro-batch {mb}", g, w)
