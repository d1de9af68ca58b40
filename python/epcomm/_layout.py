"""get_dispatch_layout's counts, computed with PyTorch ops on the tensor's own device.

Local (no communicator needed, hence no collective): DeepEP's layout call is local too, and an
epcomm communicator cannot exist before the first dispatch tells it the hidden size.
"""
from typing import Tuple

import torch


def check_expert_ids(topk_idx: torch.Tensor, num_experts: int) -> None:
    """Raises ValueError naming the first topk_idx entry outside [-1, num_experts). On CUDA this
    waits for topk_idx (one host sync), as the C++ layout call does."""
    bad = (topk_idx < -1) | (topk_idx >= num_experts)
    if bool(bad.any()):
        token, slot = (int(i) for i in bad.nonzero()[0])
        value = int(topk_idx[token, slot])
        raise ValueError(f"topk_idx[{token}][{slot}] = {value} is outside [-1, {num_experts})")


def dispatch_layout(topk_idx: torch.Tensor, num_experts: int,
                    num_ranks: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """num_tokens_per_rank [R] int32, num_tokens_per_expert [E] int32, is_token_in_rank [T, R]
    bool, as DeepEP defines them: a token counts once per rank that hosts any of its experts,
    and once per top-k slot for each expert. Expert e lives on rank e // (E / R)."""
    check_expert_ids(topk_idx, num_experts)
    num_tokens = topk_idx.shape[0]
    experts_per_rank = num_experts // num_ranks
    valid = topk_idx >= 0
    # Slots with id -1 go to a spare last bucket that is cut off afterwards.
    expert_bucket = torch.where(valid, topk_idx, torch.full_like(topk_idx, num_experts)).long()
    per_expert = torch.zeros(num_experts + 1, dtype=torch.int64, device=topk_idx.device)
    per_expert.scatter_add_(0, expert_bucket.reshape(-1), torch.ones_like(expert_bucket).reshape(-1))
    rank_bucket = torch.where(valid, topk_idx.clamp(min=0) // experts_per_rank,
                              torch.full_like(topk_idx, num_ranks))
    in_rank = torch.zeros(num_tokens, num_ranks + 1, dtype=torch.int32, device=topk_idx.device)
    in_rank.scatter_(1, rank_bucket.long(), 1)
    is_token_in_rank = in_rank[:, :num_ranks].bool().contiguous()
    num_tokens_per_rank = is_token_in_rank.sum(dim=0, dtype=torch.int32)
    return num_tokens_per_rank, per_expert[:num_experts].to(torch.int32), is_token_in_rank
