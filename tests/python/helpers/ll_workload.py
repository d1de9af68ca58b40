"""Deterministic inputs of the low-latency tests: every process can build every rank's inputs
from (case, rank, micro-batch)."""
from dataclasses import dataclass, replace

import torch

LL_ROUTINGS = ("random", "distinct", "none")


@dataclass(frozen=True)
class LLCase:
    num_ranks: int
    num_tokens: int   # T of every rank (ragged: rank r sends max(T - r, 0))
    max_tokens: int   # M = num_max_dispatch_tokens_per_rank
    hidden: int
    num_topk: int
    num_experts: int
    # random: ids drawn with repeats and -1 holes, one token sent nowhere; distinct: top-k of
    # scores (DeepEP's shape); none: every id -1.
    routing: str = "random"
    fp8: bool = False
    index_dtype: torch.dtype = torch.int64
    ragged: bool = False
    hook: bool = False       # return_recv_hook on every dispatch and combine
    in_flight: bool = False  # two micro-batches: both dispatched before either is combined
    out_arg: bool = False    # combine writes into a tensor given as out=
    rounds: int = 1
    seed: int = 1
    async_finish: bool = False  # CUDA only
    zero_copy: bool = False  # combine reads y from get_next_low_latency_combine_buffer
    scales: str = "float"  # fp8 scales: "float" (a / 448), "pow2" (round_scale), "ue8m0"
    # Bit r: rank r is cut off (every other rank masks it and it masks every other rank, before
    # the case's calls; the Buffer needs enable_shrink=True).
    masked: int = 0
    wait_stats: bool = False  # pass dispatch/combine_wait_recv_cost_stats and check them

    def masks(self, rank: int, peer: int) -> bool:
        """Whether `rank` masks `peer` under `masked`."""
        return rank != peer and bool((self.masked >> rank) & 1 or (self.masked >> peer) & 1)

    @property
    def round_scale(self) -> bool:
        return self.fp8 and self.scales != "float"

    @property
    def use_ue8m0(self) -> bool:
        return self.fp8 and self.scales == "ue8m0"

    @property
    def micro_batches(self) -> int:
        return 2 if self.in_flight else 1

    @property
    def experts_per_rank(self) -> int:
        return self.num_experts // self.num_ranks

    def tokens_of(self, rank: int) -> int:
        return max(self.num_tokens - rank, 0) if self.ragged else self.num_tokens

    def name(self) -> str:
        flags = [self.routing, "fp8" if self.fp8 else "bf16", str(self.index_dtype)[6:]]
        flags += [f for f, on in (("ragged", self.ragged), ("hook", self.hook),
                                  ("inflight", self.in_flight), ("out", self.out_arg),
                                  ("async", self.async_finish),
                                  ("zerocopy", self.zero_copy),
                                  ("stats", self.wait_stats)) if on]
        if self.round_scale:
            flags.append(self.scales)
        if self.masked:
            flags.append(f"masked{self.masked:x}")
        return (f"R{self.num_ranks}_T{self.num_tokens}_M{self.max_tokens}_H{self.hidden}_"
                f"K{self.num_topk}_E{self.num_experts}_r{self.rounds}_" + "_".join(flags))

    def round(self, index: int) -> "LLCase":
        """The same case with the inputs of round `index`."""
        return replace(self, seed=self.seed * 1000 + index)


def _generator(case: LLCase, rank: int, micro: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(case.seed * 7919 + rank * 104729 + micro * 613 + stream)


def _topk_idx(case: LLCase, rank: int, micro: int) -> torch.Tensor:
    g = _generator(case, rank, micro, 1)
    T, K, E = case.tokens_of(rank), case.num_topk, case.num_experts
    if case.routing == "none":
        return torch.full((T, K), -1, dtype=case.index_dtype)
    if case.routing == "distinct":
        return torch.rand(T, E, generator=g).topk(K, dim=1).indices.to(case.index_dtype)
    idx = torch.randint(0, E, (T, K), generator=g)  # repeats when K is large next to E
    idx[torch.rand(T, K, generator=g) < 0.25] = -1
    if T > 2:
        idx[T // 2] = -1
    return idx.to(case.index_dtype)


def _x(case: LLCase, rank: int, micro: int) -> torch.Tensor:
    """bf16 [T, H] rows, with blocks that exercise the fp8 cast's corners in the first tokens:
    all zeros (a = 1e-4), amax below 1e-4, large values, and a tiny negative that underflows."""
    g = _generator(case, rank, micro, 2)
    T, H = case.tokens_of(rank), case.hidden
    x = torch.randn(T, H, generator=g) * torch.rand(T, H // 128, generator=g).repeat_interleave(
        128, dim=1) * 8
    if T > 0:
        x[0, :128] = 0.0
    if T > 1:
        x[1, :128] *= 1e-6
    if T > 2:
        x[2, :128] *= 1e3
    if T > 3:
        x[3, :128] = torch.randn(128, generator=g) * 1e-3
        x[3, 0], x[3, 1] = 100.0, -1e-4
    return x.to(torch.bfloat16)


def ll_inputs(case: LLCase, rank: int, micro: int) -> dict:
    """CPU tensors of one dispatch: x bf16 [T, H], topk_idx [T, K], topk_weights fp32 [T, K]."""
    g = _generator(case, rank, micro, 3)
    T, K = case.tokens_of(rank), case.num_topk
    return {"x": _x(case, rank, micro), "topk_idx": _topk_idx(case, rank, micro),
            "topk_weights": torch.randn(T, K, generator=g)}


def ll_expert_output(case: LLCase, rank: int, micro: int) -> torch.Tensor:
    """What rank `rank`'s experts return: bf16 [Le, R * M, H] (rows past recv_count too)."""
    g = _generator(case, rank, micro, 4)
    rows = case.num_ranks * case.max_tokens
    return torch.randn(case.experts_per_rank, rows, case.hidden, generator=g).to(torch.bfloat16)


# A weight and two bf16 values where rounding once matters: 1.5 * W = 1 + 2^-8 + 2^-24 exactly,
# and A = 2^-60. fmaf(W, 1.5, fmaf(1, A, 0)) = 1 + 2^-8 + 2^-23 in fp32, above the bf16 tie, so
# bf16 1 + 2^-7 (0x3F81); rounding the product first, or the sum to float64 first, lands on the
# tie 1 + 2^-8 and then on the even bf16 1.0 (0x3F80).
PROBE_W = 5614251 * 2.0 ** -23
PROBE_Y, PROBE_A = 1.5, 2.0 ** -60
PROBE_BITS = (0x3F81, 0xBF81)  # combined_x[0, :2]: +, and everything negated


def rounding_probe(case: LLCase, rank: int) -> dict:
    """One token per rank, sent to its own rank's experts 0 and 1 (Le >= 2), with weights
    (1, PROBE_W); y holds A and PROBE_Y (and their negatives) in columns 0 and 1 of the rows
    those experts received, random values elsewhere."""
    assert case.experts_per_rank >= 2
    g = _generator(case, rank, 0, 5)
    first = rank * case.experts_per_rank
    y = torch.randn(case.experts_per_rank, case.num_ranks * case.max_tokens, case.hidden,
                    generator=g)
    y[0, 0, :2] = torch.tensor([PROBE_A, -PROBE_A])
    y[1, 0, :2] = torch.tensor([PROBE_Y, -PROBE_Y])
    return {"x": torch.randn(1, case.hidden, generator=g).to(torch.bfloat16),
            "topk_idx": torch.tensor([[first, first + 1]], dtype=case.index_dtype),
            "topk_weights": torch.tensor([[1.0, PROBE_W]]),
            "y": y.to(torch.bfloat16)}
