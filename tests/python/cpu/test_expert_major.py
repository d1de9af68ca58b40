"""Buffer.dispatch(layout="expert_major") and combine(apply_weights=...) on the host backend
against a numpy model written here from the layout's rules (docs/design.md section 24): one
row per (token, local expert) pair under the token's first slot naming the expert, groups by
local expert aligned to expert_alignment, pairs by source rank then token, zero padding rows;
combine over each token's pairs in slot order, fmaf with the dispatched weights or plain sums,
one rounding. A cached dispatch keeps the layout."""
import numpy as np
import pytest
import torch

import epcomm
from helpers.expect import assert_bits_equal, bits
from helpers.expert_major import assert_worst_case_matches, expert_major_round, worst_case_rows
from helpers.ll_reference import fmaf
from helpers.reference import bf16_bits_to_f32, f32_to_bf16_bits
from helpers.runner import run_on_threads
from helpers.workload import Case, inputs_for



def _first_slot(ids: np.ndarray, t: int, e: int) -> int:
    hits = np.flatnonzero(ids[t] == e)
    return int(hits[0]) if hits.size else -1


def _model_layout(case: Case, alignment: int, dest: int):
    """(rows as (source, token, slot) or None for padding, group offsets) at rank `dest`."""
    local = case.num_experts // case.num_ranks
    rows, offsets = [], [0]
    for le in range(local):
        e = dest * local + le
        for s in range(case.num_ranks):
            ids = inputs_for(case, s)["topk_idx"].to(torch.int64).numpy()
            for t in range(case.num_tokens):
                k = _first_slot(ids, t, e)
                if k >= 0:
                    rows.append((s, t, k))
        while len(rows) % alignment:
            rows.append(None)
        offsets.append(len(rows))
    return rows, offsets


CASES = [Case(2, 13, 128, 4, 8, routing="with_holes", seed=71, max_tokens_per_rank=64),
         Case(3, 9, 256, 2, 6, fp8=True, seed=72, max_tokens_per_rank=64),
         Case(4, 7, 128, 8, 8, routing="skewed", with_weights=False, seed=73,
              max_tokens_per_rank=64)]


@pytest.mark.parametrize("case", CASES, ids=Case.name)
@pytest.mark.parametrize("alignment", [1, 4])
def test_expert_major_dispatch_and_combine_match_the_model(case: Case, alignment: int):
    R, H = case.num_ranks, case.hidden

    def body(rank, group):
        buffer = epcomm.Buffer(group, max_tokens_per_rank=4 * case.max_tokens_per_rank)
        try:
            return expert_major_round(buffer, case, rank, alignment, torch.device("cpu"))
        finally:
            buffer.destroy()

    got = run_on_threads(R, body)
    layouts = [_model_layout(case, alignment, d) for d in range(R)]
    for d, (rows, offsets) in enumerate(layouts):
        g = got[d]
        where = f"{case.name()} alignment {alignment} rank {d}"
        assert g["offsets"].tolist() == offsets, where
        assert g["counts"] == [offsets[i + 1] - offsets[i] for i in range(len(offsets) - 1)]
        for name, key in (("recv_x", "x"), ("cached_x", "x2")):
            want_x = np.zeros((len(rows), H), np.uint8 if case.fp8 else np.int16)
            want_scales = np.zeros((len(rows), H // 128), np.float32)
            for r, pair in enumerate(rows):
                if pair is None:
                    continue
                src = inputs_for(case, pair[0])
                want_x[r] = bits(src[key][pair[1]])
                if case.fp8:
                    want_scales[r] = src[key + "_scales"][pair[1]].numpy()
            got_x = g[name]
            if case.fp8:
                assert_bits_equal(f"{where} {name} scales", got_x[1].numpy(), want_scales)
                got_x = got_x[0].view(torch.uint8)
            assert_bits_equal(f"{where} {name}", bits(got_x), want_x)
        want_src = np.array([[p[0], p[1]] if p else [-1, -1] for p in rows], np.int32)
        want_slot = np.array([p[2] if p else -1 for p in rows], np.int32)
        want_weight = np.array([inputs_for(case, p[0])["topk_weights"][p[1], p[2]].item()
                                if p and case.with_weights else 0.0 for p in rows], np.float32)
        assert_bits_equal(f"{where} recv_src", g["src"].numpy().reshape(-1, 2), want_src)
        assert_bits_equal(f"{where} recv_topk_slot", g["slot"].numpy(), want_slot)
        assert_bits_equal(f"{where} recv_weight", g["weight"].numpy(), want_weight)
    # Combine: each token's pairs in slot order, from the pair's row at its rank.
    local = case.num_experts // R
    for s in range(R):
        inputs = inputs_for(case, s)
        ids = inputs["topk_idx"].to(torch.int64).numpy()
        for weighted in ([False, True] if case.with_weights else [False]):
            acc = np.zeros((case.num_tokens, H), np.float32)
            for t in range(case.num_tokens):
                for k in range(case.num_topk):
                    e = int(ids[t, k])
                    if e < 0 or _first_slot(ids, t, e) != k:
                        continue
                    d = e // local
                    row = layouts[d][0].index((s, t, k))
                    y = bf16_bits_to_f32(bits(got[d]["y"][row]).view(np.uint16))
                    if weighted:
                        w = np.full(H, inputs["topk_weights"][t, k].item(), np.float32)
                        acc[t] = fmaf(w, y, acc[t])
                    else:
                        acc[t] = (acc[t] + y).astype(np.float32)
            key = "weighted" if weighted else "plain"
            assert_bits_equal(f"{case.name()} rank {s} combine {key}",
                              bits(got[s][key]).view(np.uint16), f32_to_bf16_bits(acc))


@pytest.mark.parametrize("case", CASES, ids=Case.name)
def test_expert_major_worst_case_matches_exact_sizes(case: Case):
    """num_worst_tokens > 0: the same rows, pair data and offsets as the exact dispatch in the
    first rows, marked rows after them, and the same combines and cached rows."""
    R, alignment = case.num_ranks, 2
    worst = worst_case_rows(case, alignment)

    def body(rank, group):
        buffer = epcomm.Buffer(group, max_tokens_per_rank=4 * case.max_tokens_per_rank)
        try:
            exact = expert_major_round(buffer, case, rank, alignment, torch.device("cpu"))
            worst_case = expert_major_round(buffer, case, rank, alignment, torch.device("cpu"),
                                            num_worst_tokens=worst)
            return exact, worst_case
        finally:
            buffer.destroy()

    for rank, (exact, got) in enumerate(run_on_threads(R, body)):
        assert_worst_case_matches(f"{case.name()} rank {rank}", got, exact, worst)


def test_expert_major_arguments_are_checked():
    buffer = epcomm.Buffer(epcomm.make_thread_groups(1)[0], max_tokens_per_rank=8)
    x = torch.zeros(3, 128, dtype=torch.bfloat16)
    ids = torch.zeros(3, 2, dtype=torch.int64)
    counts = torch.zeros(2, dtype=torch.int32)
    with pytest.raises(ValueError, match="layout = 'rows'"):
        buffer.dispatch(x, topk_idx=ids, num_tokens_per_expert=counts, layout="rows")
    recv_x, _, _, _, handle, _ = buffer.dispatch(
        x, topk_idx=ids, topk_weights=torch.ones(3, 2), num_tokens_per_expert=counts,
        layout="expert_major")
    with pytest.raises(ValueError, match="topk_weights must be None for an expert-major"):
        buffer.combine(recv_x, handle, topk_weights=torch.ones(recv_x.shape[0], 2))
    token_major = buffer.dispatch(x, topk_idx=ids, num_tokens_per_expert=counts)[4]
    with pytest.raises(epcomm.EpcommError, match="needs an expert-major dispatch"):
        buffer.combine(torch.zeros(token_major.num_recv_rows, 128, dtype=torch.bfloat16),
                       token_major, apply_weights=True)
    buffer.destroy()
