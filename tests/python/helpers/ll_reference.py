"""A numpy model of the low-latency contract (include/epcomm/low_latency.hpp and
Communicator::low_latency_combine), written from the contract: the fp8 cast by nearest search
in the table of every e4m3 value, fmaf by exact float64 products and round-to-odd sums.

Arrays are numpy: bf16 rows as uint16 bit patterns, fp8 rows as uint8, top-k ids as int64.
"""
from typing import Dict, List, Optional

import numpy as np

from .reference import bf16_bits_to_f32, f32_to_bf16_bits

BLOCK = 128
E4M3_MAX_CODE = 0x7E  # 448; 0x7F is NaN


def _e4m3_table() -> np.ndarray:
    """The value of every non-negative finite e4m3 code 0 .. 0x7E (increasing with the code)."""
    codes = np.arange(E4M3_MAX_CODE + 1)
    exponent, mantissa = codes >> 3, codes & 7
    normal = (1 + mantissa / 8.0) * np.exp2(exponent - 7.0)
    subnormal = mantissa * 2.0 ** -9
    return np.where(exponent == 0, subnormal, normal)


_E4M3 = _e4m3_table()


def e4m3_bits(values: np.ndarray) -> np.ndarray:
    """fp32 -> e4m3 codes: round to the nearest value, ties to the even code, magnitudes past
    448 saturated to 448, sign kept (so tiny negatives become 0x80)."""
    values = np.asarray(values, np.float32)
    magnitude = np.abs(values).astype(np.float64)
    above = np.clip(np.searchsorted(_E4M3, magnitude), 1, E4M3_MAX_CODE)
    below = above - 1
    to_below = magnitude - _E4M3[below]
    to_above = _E4M3[above] - magnitude
    pick_below = (to_below < to_above) | ((to_below == to_above) & (below % 2 == 0))
    code = np.where(pick_below, below, above)
    code = np.where(magnitude >= _E4M3[E4M3_MAX_CODE], E4M3_MAX_CODE, code)
    return (code | np.where(np.signbit(values), 0x80, 0)).astype(np.uint8)


def cast_row_fp8(row_bits: np.ndarray, round_scale: bool = False):
    """(codes uint8 [H], scales fp32 [H / 128]) of one bf16 row: per block a = max(amax, 1e-4),
    q = e4m3(x * (448 / a)), scale = a / 448, each step in IEEE fp32. round_scale: scale =
    2^ceil(log2(a * (1 / 448))) (the fp32 product; the exponent from a float64 log2) and
    q = e4m3(x * 2^-e)."""
    x = bf16_bits_to_f32(row_bits).reshape(-1, BLOCK)
    a = np.maximum(np.abs(x).max(axis=1), np.float32(1e-4)).astype(np.float32)
    if round_scale:
        wanted = (a * (np.float32(1.0) / np.float32(448.0))).astype(np.float32)
        e = np.ceil(np.log2(wanted.astype(np.float64))).astype(np.int32)
        inv = np.ldexp(np.float32(1.0), -e).astype(np.float32)
        q = e4m3_bits((x * inv[:, None]).astype(np.float32))
        return q.reshape(-1), np.ldexp(np.float32(1.0), e).astype(np.float32)
    inv = (np.float32(448.0) / a).astype(np.float32)
    q = e4m3_bits((x * inv[:, None]).astype(np.float32))
    return q.reshape(-1), (a / np.float32(448.0)).astype(np.float32)


def ue8m0_words(scales: np.ndarray) -> np.ndarray:
    """Power-of-two fp32 scales [..., H / 128] as UE8M0 codes (127 + log2), four to an int32
    [..., H / 512], the first block's code in the low byte."""
    _, exponent = np.frexp(scales.astype(np.float64))  # scale = 0.5 * 2^exponent
    codes = (126 + exponent).astype(np.uint8)
    return np.ascontiguousarray(codes).view("<u4").view(np.int32)


def fmaf(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """fp32 a * b + c rounded once, as C's fmaf: the product is exact in float64 (24 + 24
    bits); the sum is rounded to odd in float64 (TwoSum, then the odd neighbour when inexact),
    which then rounds to fp32 as the exact sum would."""
    p = np.asarray(a, np.float32).astype(np.float64) * np.asarray(b, np.float32).astype(np.float64)
    c = np.asarray(c, np.float32).astype(np.float64)
    s = p + c
    back = s - p
    err = (p - (s - back)) + (c - back)
    needs_odd = (err != 0) & ((s.view(np.int64) & 1) == 0)
    s = np.where(needs_odd, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(np.float32)


def dispatch(xs: List[np.ndarray], ids: List[np.ndarray], dest: int, num_experts: int,
             max_tokens: int, fp8: bool, round_scale: bool = False, use_ue8m0: bool = False,
             cut_off=lambda rank, peer: False) -> Dict:
    """What rank `dest` receives. A token goes once to each expert it names, under the first
    slot naming it; rows of local expert le come from source 0 (tokens ascending), then 1, ...
    Rows past recv_count stay zero (the library leaves them undefined). Nothing comes from a
    source s with cut_off(dest, s) (masked). use_ue8m0: recv_scales as packed UE8M0 codes."""
    num_ranks = len(xs)
    local = num_experts // num_ranks
    hidden = xs[dest].shape[1]
    rows = num_ranks * max_tokens
    recv_x = np.zeros((local, rows, hidden), np.uint8 if fp8 else np.uint16)
    scales = np.zeros((local, rows, hidden // BLOCK), np.float32) if fp8 else None
    count = np.zeros(local, np.int32)
    src = np.zeros((local, rows, 3), np.int32)
    layout_range = np.zeros((local, num_ranks, 2), np.int32)
    row_of = {}  # (source, token, expert) -> row
    for le in range(local):
        expert = dest * local + le
        n = 0
        for s in range(num_ranks):
            first = n
            for t, token_ids in enumerate([] if cut_off(dest, s) else ids[s]):
                slots = np.flatnonzero(token_ids == expert)
                if slots.size == 0:
                    continue
                if fp8:
                    recv_x[le, n], scales[le, n] = cast_row_fp8(xs[s][t], round_scale)
                else:
                    recv_x[le, n] = xs[s][t]
                src[le, n] = (s, t, slots[0])
                row_of[(s, t, expert)] = n
                n += 1
            layout_range[le, s] = (first, n - first)
        count[le] = n
    if fp8 and use_ue8m0:
        scales = ue8m0_words(scales)
    return {"recv_x": recv_x, "recv_scales": scales, "recv_count": count, "recv_src": src,
            "layout_range": layout_range, "row_of": row_of}


def combine(received: List[Dict], ys: List[np.ndarray], home: int, ids: np.ndarray,
            weights: np.ndarray, num_experts: int,
            cut_off=lambda rank, peer: False) -> np.ndarray:
    """combined_x of rank `home` (bf16 bits [T, H]): acc = fmaf(w[t][k], y(t, k), acc) over k
    ascending from 0 in fp32, rounded once; y(t, k) is the row the expert of slot k returned
    for token t (a repeated id names the one row it was sent as); -1 adds nothing, nor does
    an expert on a rank d with cut_off(home, d)."""
    local = num_experts // len(received)
    num_tokens = ids.shape[0]
    hidden = ys[0].shape[2]
    out = np.zeros((num_tokens, hidden), np.float32)
    for t in range(num_tokens):
        acc = np.zeros(hidden, np.float32)
        for k, expert in enumerate(ids[t]):
            if expert < 0:
                continue
            dest = int(expert) // local
            if cut_off(home, dest):
                continue
            row = received[dest]["row_of"][(home, t, int(expert))]
            y = bf16_bits_to_f32(ys[dest][int(expert) % local, row])
            acc = fmaf(np.full(hidden, weights[t, k], np.float32), y, acc)
        out[t] = acc
    return f32_to_bf16_bits(out)


def recv_stats(received: List[Optional[Dict]]) -> np.ndarray:
    """The sum of recv_count over several dispatches of one rank."""
    return np.sum([r["recv_count"] for r in received], axis=0).astype(np.int32)
