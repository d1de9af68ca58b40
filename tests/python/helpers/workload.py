"""Deterministic test inputs: every process can build every rank's inputs from (case, rank)."""
from dataclasses import dataclass, replace
from typing import Optional

import torch

ROUTINGS = ("uniform", "skewed", "all_to_one", "one_rank_empty", "with_holes")


@dataclass(frozen=True)
class Case:
    num_ranks: int
    num_tokens: int
    hidden: int
    num_topk: int
    num_experts: int
    routing: str = "uniform"
    fp8: bool = False
    index_dtype: torch.dtype = torch.int64
    with_weights: bool = True
    expert_alignment: int = 1
    worst_case: bool = False  # num_worst_tokens = num_ranks * max_tokens_per_rank
    max_tokens_per_rank: int = 128
    cached: bool = False      # add a cached dispatch before the combine
    rounds: int = 1
    seed: int = 1
    # CUDA stream options (ignored on CPU)
    async_finish: bool = False
    previous_event: bool = False
    allocate_on_comm_stream: bool = False
    with_config: bool = False  # pass config=Config(Buffer.num_sms) to dispatch and combine

    @property
    def num_worst_tokens(self) -> int:
        return self.num_ranks * self.max_tokens_per_rank if self.worst_case else 0

    def name(self) -> str:
        flags = [self.routing, "fp8" if self.fp8 else "bf16", str(self.index_dtype)[6:]]
        flags += [f for f, on in (("noweights", not self.with_weights), ("worst", self.worst_case),
                                  ("cached", self.cached), ("async", self.async_finish),
                                  ("prevevent", self.previous_event),
                                  ("commalloc", self.allocate_on_comm_stream),
                                  ("config", self.with_config)) if on]
        return (f"R{self.num_ranks}_T{self.num_tokens}_H{self.hidden}_K{self.num_topk}_"
                f"E{self.num_experts}_a{self.expert_alignment}_r{self.rounds}_" + "_".join(flags))

    def round(self, index: int) -> "Case":
        """The same case with the inputs of round `index` (fresh routing and rows)."""
        return replace(self, seed=self.seed * 1000 + index)


def _generator(case: Case, rank: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(case.seed * 7919 + rank * 104729 + stream)


def topk_idx_for(case: Case, rank: int) -> torch.Tensor:
    g = _generator(case, rank, 1)
    T, K, E, R = case.num_tokens, case.num_topk, case.num_experts, case.num_ranks
    experts_per_rank = E // R
    scores = torch.rand(T, E, generator=g)
    if case.routing == "skewed":  # rank 0's experts win most slots
        scores[:, :experts_per_rank] += 0.6
    elif case.routing == "all_to_one":  # only the last rank's experts
        scores[:, : E - experts_per_rank] = -1.0
    elif case.routing == "one_rank_empty":  # nothing for the last rank
        scores[:, E - experts_per_rank:] = -1.0
    idx = scores.topk(K, dim=1).indices
    if case.routing in ("all_to_one", "one_rank_empty"):
        idx[scores.gather(1, idx) < 0] = -1  # fewer eligible experts than K
    if case.routing == "with_holes":
        idx[torch.rand(T, K, generator=g) < 0.3] = -1
        idx[: max(T // 5, 0)] = -1  # some tokens go nowhere
    return idx.to(case.index_dtype)


def inputs_for(case: Case, rank: int) -> dict:
    """CPU tensors: x (bf16 [T, H], or raw fp8 bytes as uint8), scales (fp8), topk_idx,
    topk_weights (or None), and x2, the rows of a cached dispatch."""
    g = _generator(case, rank, 2)
    T, H = case.num_tokens, case.hidden
    out = {"topk_idx": topk_idx_for(case, rank)}
    out["topk_weights"] = torch.rand(T, case.num_topk, generator=g) if case.with_weights else None
    for name in ("x", "x2"):
        if case.fp8:
            # Any byte pattern: dispatch moves fp8 rows without reading them.
            out[name] = torch.randint(0, 256, (T, H), generator=g, dtype=torch.int32).to(torch.uint8)
            out[name + "_scales"] = torch.rand(T, H // 128, generator=g) * 4
        else:
            out[name] = torch.randn(T, H, generator=g).to(torch.bfloat16)
            out[name + "_scales"] = None
    return out


def expert_output(case: Case, rank: int, rows: int) -> torch.Tensor:
    """What rank `rank`'s experts return for `rows` received rows: bf16 [rows, H]."""
    g = _generator(case, rank, 3)
    return torch.randn(rows, case.hidden, generator=g).to(torch.bfloat16)


def fp8_view(raw: torch.Tensor) -> torch.Tensor:
    """Raw fp8 bytes as torch.float8_e4m3fn where this PyTorch has it, else as they are."""
    dtype: Optional[torch.dtype] = getattr(torch, "float8_e4m3fn", None)
    return raw.view(dtype) if dtype is not None else raw
