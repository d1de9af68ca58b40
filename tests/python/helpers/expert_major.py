"""One expert-major round on a Buffer (any device): dispatch with layout="expert_major", combine
plain and weighted, a cached dispatch of fresh rows; the outputs as CPU tensors, so that a CUDA
rank's can be compared bit for bit with the host reference's (or a model's)."""
from typing import Dict

import torch

import epcomm
from helpers.expect import assert_bits_equal, bits
from helpers.workload import Case, expert_output, fp8_view, inputs_for


def x_arg(case: Case, inputs: dict, name: str):
    return (fp8_view(inputs[name]), inputs[name + "_scales"]) if case.fp8 else inputs[name]


def _on(value, device: torch.device):
    if isinstance(value, tuple):
        return tuple(_on(v, device) for v in value)
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _cpu(value):
    if isinstance(value, tuple):
        return tuple(_cpu(v) for v in value)
    return value.cpu() if isinstance(value, torch.Tensor) else value


def expert_major_round(buffer: epcomm.Buffer, case: Case, rank: int, alignment: int,
                       device: torch.device, num_worst_tokens: int = 0) -> Dict:
    """With num_worst_tokens, a worst-case dispatch: y's rows up to the received count are
    those an exact dispatch's y has (so that both combines compare), NaN after them (combine
    must not read them)."""
    inputs = {k: _on(v, device) for k, v in inputs_for(case, rank).items()}
    per_rank, _, per_expert, in_rank, _ = buffer.get_dispatch_layout(
        inputs["topk_idx"], case.num_experts)
    recv_x, recv_idx, recv_weights, counts, handle, _ = buffer.dispatch(
        x_arg(case, inputs, "x"), num_tokens_per_rank=per_rank, is_token_in_rank=in_rank,
        num_tokens_per_expert=per_expert, topk_idx=inputs["topk_idx"],
        topk_weights=inputs["topk_weights"], expert_alignment=alignment, layout="expert_major",
        num_worst_tokens=num_worst_tokens)
    assert recv_idx is None and recv_weights is None and handle.layout == "expert_major"
    n = int(handle.expert_offsets[-1].item())
    y = torch.full((handle.num_recv_rows, case.hidden), float("nan"), dtype=torch.bfloat16)
    y[:n] = expert_output(case, rank, n)
    y = y.to(device)
    outs = {"recv_x": _cpu(recv_x), "counts": counts, "src": handle.recv_src.cpu(),
            "slot": handle.recv_topk_slot.cpu(), "weight": handle.recv_weight.cpu(),
            "offsets": handle.expert_offsets.cpu(), "y": y.cpu()}
    outs["plain"] = buffer.combine(y, handle)[0].cpu()
    if case.with_weights:
        outs["weighted"] = buffer.combine(y, handle, apply_weights=True)[0].cpu()
    cached_x, *_ = buffer.dispatch(x_arg(case, inputs, "x2"), handle=handle)
    outs["cached_x"] = _cpu(cached_x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return outs


def worst_case_rows(case: Case, alignment: int) -> int:
    """Rows enough for any expert-major dispatch of `case`: min(K, Le) pairs per token and
    rank, alignment - 1 padding rows per group."""
    local = case.num_experts // case.num_ranks
    return (case.num_ranks * case.num_tokens * min(case.num_topk, local)
            + local * (alignment - 1))



def assert_worst_case_matches(where: str, got: Dict, exact: Dict, worst: int) -> None:
    """A worst-case round (num_worst_tokens = worst) against an exact one of the same inputs:
    the same rows, pair data and offsets up to the received count, rows after it marked
    (source and slot -1, weight 0), the same combines and cached rows; no group sizes list."""
    n = int(exact["offsets"][-1])
    assert got["counts"] == [], where
    assert got["offsets"].tolist() == exact["offsets"].tolist(), where
    for key in ("recv_x", "cached_x"):
        pieces = zip(got[key], exact[key]) if isinstance(exact[key], tuple) else \
            [(got[key], exact[key])]
        for g, e in pieces:
            assert g.shape[0] == worst, f"{where} {key}: {g.shape[0]} rows, want {worst}"
            assert_bits_equal(f"{where} {key}", bits(g[:n]), bits(e))
    for key, mark in (("src", -1), ("slot", -1), ("weight", 0.0)):
        assert_bits_equal(f"{where} {key}", bits(got[key][:n]), bits(exact[key]))
        assert (got[key][n:] == mark).all(), f"{where} {key} past the {n} rows"
    for key in ("plain", "weighted"):
        if key in exact:
            assert_bits_equal(f"{where} combine {key}", bits(got[key]), bits(exact[key]))

