"""DeepEP's internode_dispatch and internode_combine are dispatch and combine themselves (the
Buffer's transport crosses NVLink domains): the same arguments, positional ones in DeepEP's
order, give the same outputs byte for byte, against dispatch and combine on fresh inputs."""
import torch

import epcomm
from helpers.runner import run_on_threads

R, T, H, K, E = 3, 7, 128, 3, 12


def _inputs(rank):
    generator = torch.Generator().manual_seed(100 + rank)
    x = (torch.randn(T, H, generator=generator) * 8).to(torch.bfloat16)
    scores = torch.rand(T, E, generator=generator)
    topk_idx = scores.topk(K, dim=1).indices
    topk_idx[rank % T, 0] = -1  # an empty slot
    topk_weights = torch.rand(T, K, generator=generator)
    return x, topk_idx, topk_weights


def _round(rank, group, internode):
    buffer = epcomm.Buffer(group, max_tokens_per_rank=T)
    x, topk_idx, topk_weights = _inputs(rank)
    per_rank, _, per_expert, in_rank, _ = buffer.get_dispatch_layout(topk_idx, E)
    dispatch = buffer.internode_dispatch if internode else buffer.dispatch
    combine = buffer.internode_combine if internode else buffer.combine
    recv_x, recv_idx, recv_weights, per_expert_list, handle, _ = dispatch(
        x, None, per_rank, None, in_rank, per_expert, topk_idx, topk_weights)
    y = (recv_x.float() * (1.5 + rank)).to(torch.bfloat16)  # each rank's own "expert"
    bias = (torch.randn(T, H, generator=torch.Generator().manual_seed(7 + rank)) * 4).to(
        torch.bfloat16)
    combined, combined_weights, _ = combine(y, handle, recv_weights, bias)
    return [recv_x, recv_idx, recv_weights, torch.tensor(per_expert_list), combined,
            combined_weights]


def test_internode_calls_are_dispatch_and_combine():
    plain = run_on_threads(R, lambda rank, group: _round(rank, group, False))
    internode = run_on_threads(R, lambda rank, group: _round(rank, group, True))
    for rank in range(R):
        for a, b in zip(plain[rank], internode[rank]):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert torch.equal(a.view(torch.uint8) if a.is_floating_point() else a,
                               b.view(torch.uint8) if b.is_floating_point() else b), rank
    assert any(p[0].shape[0] > 0 for p in plain)  # rows were moved
