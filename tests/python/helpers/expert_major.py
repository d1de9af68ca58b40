"""One expert-major round on a Buffer (any device): dispatch with layout="expert_major", combine
plain and weighted, a cached dispatch of fresh rows; the outputs as CPU tensors, so that a CUDA
rank's can be compared bit for bit with the host reference's (or a model's)."""
from typing import Dict

import torch

import epcomm
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
                       device: torch.device) -> Dict:
    inputs = {k: _on(v, device) for k, v in inputs_for(case, rank).items()}
    per_rank, _, per_expert, in_rank, _ = buffer.get_dispatch_layout(
        inputs["topk_idx"], case.num_experts)
    recv_x, recv_idx, recv_weights, counts, handle, _ = buffer.dispatch(
        x_arg(case, inputs, "x"), num_tokens_per_rank=per_rank, is_token_in_rank=in_rank,
        num_tokens_per_expert=per_expert, topk_idx=inputs["topk_idx"],
        topk_weights=inputs["topk_weights"], expert_alignment=alignment, layout="expert_major")
    assert recv_idx is None and recv_weights is None and handle.layout == "expert_major"
    y = expert_output(case, rank, handle.num_recv).to(device)
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
