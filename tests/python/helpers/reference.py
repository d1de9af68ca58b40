"""An independent numpy model of epcomm's contract (docs/design.md section 2), written from the
contract rather than from the library: the CPU tests hold the Buffer on the host backend to it.

Arrays are numpy: bf16 rows as uint16 bit patterns, fp8 rows as uint8, top-k ids as int64.
"""
from typing import Dict, List, Optional

import numpy as np


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round to nearest, ties to even; NaN becomes 0x7fff."""
    word = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((word + 0x7FFF + ((word >> 16) & 1)) >> 16).astype(np.uint16)
    is_nan = (word & 0x7FFFFFFF) > 0x7F800000
    return np.where(is_nan, np.uint16(0x7FFF), rounded)


def layout(topk_idx: np.ndarray, num_experts: int, num_ranks: int):
    """(num_tokens_per_rank [R], num_tokens_per_expert [E], is_token_in_rank [T, R])."""
    experts_per_rank = num_experts // num_ranks
    num_tokens = topk_idx.shape[0]
    per_expert = np.zeros(num_experts, np.int64)
    in_rank = np.zeros((num_tokens, num_ranks), bool)
    for t in range(num_tokens):
        for e in topk_idx[t]:
            if e >= 0:
                per_expert[e] += 1
                in_rank[t, e // experts_per_rank] = True
    return in_rank.sum(axis=0), per_expert, in_rank


class Rank:
    """One rank's inputs, as numpy arrays."""

    def __init__(self, x: np.ndarray, scales: Optional[np.ndarray], topk_idx: np.ndarray,
                 topk_weights: Optional[np.ndarray]) -> None:
        self.x, self.scales, self.topk_idx, self.topk_weights = x, scales, topk_idx, topk_weights


def dispatch(ranks: List[Rank], dest: int, num_experts: int, alignment: int) -> Dict:
    """What rank `dest` receives: rows from every source in rank order, then token order."""
    experts_per_rank = num_experts // len(ranks)
    first = dest * experts_per_rank
    rows, scales, ids, weights, sources = [], [], [], [], []
    per_expert = np.zeros(experts_per_rank, np.int64)
    for s, src in enumerate(ranks):
        for t in range(src.topk_idx.shape[0]):
            local = [e >= 0 and e // experts_per_rank == dest for e in src.topk_idx[t]]
            if not any(local):
                continue
            rows.append(src.x[t])
            if src.scales is not None:
                scales.append(src.scales[t])
            ids.append([e - first if is_local else -1 for e, is_local in zip(src.topk_idx[t], local)])
            weights.append([src.topk_weights[t, k] if is_local and src.topk_weights is not None
                            else 0.0 for k, is_local in enumerate(local)])
            sources.append((s, t))
            for e, is_local in zip(src.topk_idx[t], local):
                if is_local:
                    per_expert[e - first] += 1
    num_topk = ranks[dest].topk_idx.shape[1]
    hidden = ranks[dest].x.shape[1]
    return {
        "num_recv": len(rows),
        "recv_x": np.array(rows, ranks[dest].x.dtype).reshape(len(rows), hidden),
        "recv_scales": (np.array(scales, np.float32).reshape(len(rows), hidden // 128)
                        if ranks[dest].scales is not None else None),
        "recv_topk_idx": np.array(ids, np.int64).reshape(len(rows), num_topk),
        "recv_topk_weights": np.array(weights, np.float32).reshape(len(rows), num_topk),
        "counts": [int(-(-c // alignment) * alignment) for c in per_expert],
        "sources": sources,
    }


def combine(received: List[Dict], y: List[np.ndarray], home: int, num_tokens: int,
            hidden: int) -> np.ndarray:
    """combined_x of rank `home`: for each token, fp32 sum over destinations d ascending of
    y[d]'s row for it, rounded once to bf16 (bits)."""
    acc = np.zeros((num_tokens, hidden), np.float32)
    for d, got in enumerate(received):
        for row, (s, t) in enumerate(got["sources"]):
            if s == home:
                acc[t] += bf16_bits_to_f32(y[d][row])
    return f32_to_bf16_bits(acc)


def combine_weights(received: List[Dict], home: int, num_tokens: int, num_topk: int) -> np.ndarray:
    """DeepEP's combined_topk_weights for rank `home` when each rank passes back its
    recv_topk_weights: the fp32 sum over destinations, ascending."""
    acc = np.zeros((num_tokens, num_topk), np.float32)
    for got in received:
        for row, (s, t) in enumerate(got["sources"]):
            if s == home:
                acc[t] += got["recv_topk_weights"][row]
    return acc
