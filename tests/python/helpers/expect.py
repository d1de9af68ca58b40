"""Expected outputs from the numpy reference, and bitwise comparisons with what a Buffer gave."""
from typing import Dict, List, Optional

import numpy as np
import torch

from . import reference
from .workload import Case, expert_output, inputs_for


def _np_bits(tensor: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    if tensor is None:
        return None
    by_size = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return tensor.view(by_size[tensor.element_size()]).numpy()


def bits(tensor: torch.Tensor) -> np.ndarray:
    """A tensor's raw bits: a numpy integer array of its element size."""
    return _np_bits(tensor.contiguous())


def _rank_inputs(case: Case, rank: int, rows: str) -> reference.Rank:
    inputs = inputs_for(case, rank)
    weights = inputs["topk_weights"]
    return reference.Rank(_np_bits(inputs[rows]).view(np.uint8 if case.fp8 else np.uint16),
                          inputs[rows + "_scales"].numpy() if case.fp8 else None,
                          inputs["topk_idx"].to(torch.int64).numpy(),
                          weights.numpy() if weights is not None else None)


def expected_round(case: Case) -> List[Dict]:
    """Every rank's expected outputs for one round (case already at that round's seed)."""
    R, T, H, K, E = case.num_ranks, case.num_tokens, case.hidden, case.num_topk, case.num_experts
    ranks = [_rank_inputs(case, r, "x") for r in range(R)]
    received = [reference.dispatch(ranks, d, E, case.expert_alignment) for d in range(R)]
    y = []
    for d, got in enumerate(received):
        rows = case.num_worst_tokens or got["num_recv"]
        y.append(_np_bits(expert_output(case, d, rows)).view(np.uint16)[: got["num_recv"]])
    out = []
    for r in range(R):
        per_rank, per_expert, in_rank = reference.layout(ranks[r].topk_idx, E, R)
        expected = dict(received[r], num_tokens_per_rank=per_rank,
                        num_tokens_per_expert=per_expert, is_token_in_rank=in_rank)
        expected["combined_x"] = reference.combine(received, y, r, T, H)
        expected["combined_topk_weights"] = (reference.combine_weights(received, r, T, K)
                                             if case.with_weights else None)
        if case.cached:
            ranks2 = [_rank_inputs(case, s, "x2") for s in range(R)]
            cached = reference.dispatch(ranks2, r, E, case.expert_alignment)
            expected["cached_x"] = cached["recv_x"]
            expected["cached_x_scales"] = cached["recv_scales"]
        out.append(expected)
    return out


def assert_bits_equal(name: str, got, want) -> None:
    got = np.ascontiguousarray(got)
    want = np.ascontiguousarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    width = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
    if got.dtype != bool:
        got = got.view(width[got.dtype.itemsize])
        want = want.view(width[want.dtype.itemsize])
    diff = np.argwhere(got != want)
    assert diff.size == 0, (f"{name}: {len(diff)} elements differ, first at {diff[0].tolist()}: "
                            f"{got[tuple(diff[0])]} != {want[tuple(diff[0])]}")


def compare_round(case: Case, rank: int, got: Dict, want: Dict) -> None:
    """Every output of one rank's round, bit for bit (worst-case mode: the received rows, and
    the padding's ids -1 and weights 0)."""
    n = want["num_recv"]
    where = f"{case.name()} seed {case.seed} rank {rank}"
    assert_bits_equal(f"{where} num_tokens_per_rank", got["num_tokens_per_rank"].numpy(),
                      want["num_tokens_per_rank"].astype(np.int32))
    assert_bits_equal(f"{where} num_tokens_per_expert", got["num_tokens_per_expert"].numpy(),
                      want["num_tokens_per_expert"].astype(np.int32))
    assert_bits_equal(f"{where} is_token_in_rank", got["is_token_in_rank"].numpy(),
                      want["is_token_in_rank"])
    if case.worst_case:
        assert got["num_recv"] is None and got["counts"] == [], where
        rows = case.num_worst_tokens
        assert got["recv_x"].shape[0] == rows, f"{where}: recv_x rows {got['recv_x'].shape[0]}"
        idx_pad = got["recv_topk_idx"][n:].numpy()
        assert (idx_pad == -1).all(), f"{where}: padding rows of recv_topk_idx are not -1"
        assert (got["recv_topk_weights"][n:].numpy() == 0).all(), f"{where}: padding weights"
    else:
        assert got["num_recv"] == n, f"{where}: num_recv {got['num_recv']}, expected {n}"
        assert got["counts"] == want["counts"], f"{where}: {got['counts']} != {want['counts']}"
    index_dtype = np.int64 if case.index_dtype == torch.int64 else np.int32
    assert_bits_equal(f"{where} recv_x", got["recv_x"].numpy()[:n], want["recv_x"])
    assert_bits_equal(f"{where} recv_topk_idx", got["recv_topk_idx"].numpy()[:n],
                      want["recv_topk_idx"].astype(index_dtype))
    assert_bits_equal(f"{where} recv_topk_weights", got["recv_topk_weights"].numpy()[:n],
                      want["recv_topk_weights"])
    if case.fp8:
        assert_bits_equal(f"{where} recv_x scales", got["recv_x_scales"].numpy()[:n],
                          want["recv_scales"])
    if case.cached:
        assert_bits_equal(f"{where} cached recv_x", got["cached_x"].numpy()[:n], want["cached_x"])
        if case.fp8:
            assert_bits_equal(f"{where} cached scales", got["cached_x_scales"].numpy()[:n],
                              want["cached_x_scales"])
    assert_bits_equal(f"{where} combined_x", got["combined_x"].numpy(), want["combined_x"])
    if want["combined_topk_weights"] is None:
        assert got["combined_topk_weights"] is None, where
    else:
        assert_bits_equal(f"{where} combined_topk_weights", got["combined_topk_weights"].numpy(),
                          want["combined_topk_weights"])
