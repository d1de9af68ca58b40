"""Buffer.low_latency_dispatch / low_latency_combine on CPU tensors (the host reference backend,
ranks as threads) against the numpy model of the low-latency contract, bit for bit; the
numpy model's own corners; argument errors."""
import numpy as np
import pytest
import torch

import epcomm
from helpers import ll_reference
from helpers.expect import _np_bits, assert_bits_equal
from helpers.ll_expect import compare_ll, compare_ll_case, expected_ll_case
from helpers.ll_runner import run_ll_case
from helpers.ll_workload import PROBE_A, PROBE_BITS, PROBE_W, PROBE_Y, LLCase, ll_inputs, \
    rounding_probe
from helpers.runner import run_on_threads

M = 6


def _cases():
    """R in {1, 2, 4} x T in {0, 1, M} x {bf16, fp8}; hooks, two micro-batches in flight, out=,
    index type, routing, ragged token counts and rounds vary with the case index so that each
    meets several shapes (every hook x in-flight pair occurs with both dtypes)."""
    cases, i = [], 0
    for R in (1, 2, 4):
        for T in (0, 1, M):
            for fp8 in (False, True):
                K = (1, 2, 4, 3)[i % 4]
                cases.append(LLCase(
                    R, T, M, 256 if i % 3 == 0 else 128, K, (2, 4)[i % 2] * R,
                    routing="distinct" if i % 5 == 4 else "random", fp8=fp8,
                    index_dtype=torch.int32 if i % 4 == 2 else torch.int64,
                    ragged=i % 6 == 5, hook=(i // 2) % 2 == 1, in_flight=(i // 4) % 2 == 1,
                    out_arg=i % 7 == 3, rounds=2 if i % 3 == 1 else 1, seed=100 + i))
                i += 1
    cases.append(LLCase(3, M, M, 128, 2, 6, routing="none", hook=True, in_flight=True))
    cases.append(LLCase(2, M, M, 384, 8, 4, fp8=True, in_flight=True, rounds=3, seed=7))
    # zero_copy: combine reads the rows from get_next_low_latency_combine_buffer (one tensor per
    # alternating buffer: two micro-batches in flight use both), never from x.
    cases.append(LLCase(2, M, M, 128, 3, 4, zero_copy=True, rounds=2, seed=21))
    cases.append(LLCase(4, M, M, 256, 2, 8, fp8=True, hook=True, in_flight=True, zero_copy=True,
                        ragged=True, rounds=2, seed=22))
    # Power-of-two scales and their UE8M0 codes; masked ranks (cut off on every rank, so no wait
    # times out); the wait-cost stats (unchanged on the host backend).
    cases.append(LLCase(2, M, M, 512, 3, 4, fp8=True, scales="pow2", seed=31))
    cases.append(LLCase(4, M, M, 512, 2, 8, fp8=True, scales="ue8m0", hook=True, in_flight=True,
                        rounds=2, seed=32))
    cases.append(LLCase(4, M, M, 128, 3, 8, masked=0b0100, wait_stats=True, rounds=2, seed=33))
    cases.append(LLCase(3, M, M, 512, 2, 6, fp8=True, scales="ue8m0", masked=0b001,
                        wait_stats=True, hook=True, ragged=True, seed=34))
    return cases


CASES = _cases()


def _run(case: LLCase):
    def body(rank: int, group: epcomm.ThreadGroup):
        buffer = epcomm.Buffer(group, low_latency_mode=True, num_qps_per_rank=1,
                               enable_shrink=bool(case.masked))
        try:
            return run_ll_case(buffer, case, rank, torch.device("cpu"))
        finally:
            buffer.destroy()
    return run_on_threads(case.num_ranks, body)


def test_cases_cover_every_mode_with_both_dtypes():
    modes = {(c.fp8, c.hook, c.in_flight) for c in CASES}
    assert len(modes) == 8, sorted(modes)
    assert {(c.num_ranks, c.num_tokens) for c in CASES} >= {(r, t) for r in (1, 2, 4)
                                                            for t in (0, 1, M)}


@pytest.mark.parametrize("case", CASES, ids=LLCase.name)
def test_every_output_matches_the_numpy_model(case: LLCase):
    got = _run(case)
    want = expected_ll_case(case)
    for rank in range(case.num_ranks):
        compare_ll_case(case, rank, got[rank], [want[i][rank] for i in range(case.rounds)])


def test_the_comparison_catches_a_flipped_bit():
    case = LLCase(2, M, M, 128, 2, 4, fp8=True, seed=3)
    got = _run(case)
    want = expected_ll_case(case)
    compare_ll("baseline", got[1][0][0], want[0][1][0])
    for key, index in (("recv_x", (0, 0, 5)), ("recv_scales", (1, 0, 0)),
                       ("combined_x", (0, 3)), ("recv_src", (0, 0, 1))):
        changed = {k: v.clone() for k, v in got[1][0][0].items()}
        changed[key][index] ^= 1
        with pytest.raises(AssertionError, match=key):
            compare_ll("flipped", changed, want[0][1][0])


# ---- the model's own corners ------------------------------------------------------------------

def test_e4m3_rounds_to_nearest_even_and_saturates():
    values = np.array([0.0, -0.0, 1.0, 1.0625, 1.1875, 448.0, 464.0, 1e6, -1e6, 2.0 ** -9,
                       2.0 ** -10, 2.0 ** -10 * 1.01, -2.0 ** -11, 0.015625, 7.5 * 2.0 ** -9],
                      np.float32)
    # 1.0625 lies halfway between 1.0 (0x38) and 1.125 (0x39): even 0x38; 1.1875 between 1.125
    # and 1.25: even 0x3A; 464 between 448 and 480 (not finite): 448; 2^-10 halfway to 2^-9:
    # even 0; 7.5 * 2^-9 between the last subnormal and 2^-6: 0x08.
    want = [0x00, 0x80, 0x38, 0x38, 0x3A, 0x7E, 0x7E, 0x7E, 0xFE, 0x01, 0x00, 0x01, 0x80, 0x08,
            0x08]
    assert ll_reference.e4m3_bits(values).tolist() == want


def test_fmaf_rounds_once():
    # (1 + 2^-12)^2 - 1 = 2^-11 + 2^-24 fused; rounding the product first loses the 2^-24.
    a = np.float32(1 + 2.0 ** -12)
    assert ll_reference.fmaf(a, a, np.float32(-1.0)) == np.float32(2.0 ** -11 + 2.0 ** -24)
    # Exact sum 1 + 2^-23 + 2^-24 - 2^-70: just below halfway, so fp32 rounds down. Rounded to
    # float64 first it would be exactly halfway and go to the even 1 + 2^-22.
    a, b = np.float32(2.0 ** -24 * (1 + 2.0 ** -23)), np.float32(1 - 2.0 ** -23)
    c = np.float32(1 + 2.0 ** -23)
    assert np.float32(np.float64(a) * np.float64(b) + np.float64(c)) == np.float32(1 + 2.0 ** -22)
    assert ll_reference.fmaf(a, b, c) == c
    # Arrays, with signs: -a * -b + c, and the negation of the whole.
    a3, b3, c3 = (np.array(v, np.float32) for v in ([a, -a, -a], [b, -b, b], [c, c, -c]))
    assert ll_reference.fmaf(a3, b3, c3).tolist() == [c, c, -c]


def test_the_probe_separates_one_rounding_from_two():
    w, y, a = np.float32(PROBE_W), np.float32(PROBE_Y), np.float32(PROBE_A)
    once = ll_reference.fmaf(w, y, ll_reference.fmaf(np.float32(1), a, np.float32(0)))
    assert ll_reference.f32_to_bf16_bits(np.array([once, -once])).tolist() == list(PROBE_BITS)
    product_first = np.float32(w * y) + a
    float64_first = np.float32(np.float64(w) * np.float64(y) + np.float64(a))
    for twice in (product_first, float64_first):
        assert ll_reference.f32_to_bf16_bits(np.array([twice])).tolist() == [0x3F80]


def test_combine_rounds_once_where_two_roundings_would_differ():
    case = LLCase(2, 1, 2, 128, 2, 4, index_dtype=torch.int32)
    probes = [rounding_probe(case, r) for r in range(2)]

    def body(rank, group):
        buffer = epcomm.Buffer(group, low_latency_mode=True)
        probe = probes[rank]
        _, _, handle, _, _ = buffer.low_latency_dispatch(
            probe["x"], probe["topk_idx"], case.max_tokens, case.num_experts, use_fp8=False)
        combined, _, _ = buffer.low_latency_combine(probe["y"], probe["topk_idx"],
                                                    probe["topk_weights"], handle)
        buffer.destroy()
        return _np_bits(combined).view(np.uint16)
    got = run_on_threads(2, body)
    xs = [_np_bits(p["x"]).view(np.uint16) for p in probes]
    ids = [p["topk_idx"].to(torch.int64).numpy() for p in probes]
    received = [ll_reference.dispatch(xs, ids, d, 4, 2, False) for d in range(2)]
    ys = [_np_bits(p["y"]).view(np.uint16) for p in probes]
    for rank in range(2):
        assert got[rank][0, :2].tolist() == list(PROBE_BITS)
        want = ll_reference.combine(received, ys, rank, ids[rank],
                                    probes[rank]["topk_weights"].numpy(), 4)
        assert_bits_equal(f"rank {rank} combined_x", got[rank], want)


# ---- behaviour ----------------------------------------------------------------------------------

def _one_rank_buffer(**kwargs) -> epcomm.Buffer:
    return epcomm.Buffer(epcomm.make_thread_groups(1)[0], low_latency_mode=True, **kwargs)


def _dispatch(buffer, case: LLCase, micro: int = 0, **kwargs):
    inputs = ll_inputs(case, 0, micro)
    return buffer.low_latency_dispatch(inputs["x"], inputs["topk_idx"], case.max_tokens,
                                       case.num_experts, **kwargs)


BASE = LLCase(1, 4, 4, 128, 2, 4, seed=11)


def test_outputs_are_views_of_two_alternating_buffers():
    buffer = _one_rank_buffer()
    first_x, first_count, first, _, _ = _dispatch(buffer, BASE, use_fp8=False)
    kept = first_x.clone()
    buffer.low_latency_combine(torch.zeros_like(first_x), ll_inputs(BASE, 0, 0)["topk_idx"],
                               torch.ones(4, 2), first)
    second_x, _, second, _, _ = _dispatch(buffer, BASE, micro=1, use_fp8=False)
    assert second_x.data_ptr() != first_x.data_ptr()
    assert torch.equal(first_x, kept)  # the other buffer: untouched by the second call
    buffer.low_latency_combine(torch.zeros_like(second_x), ll_inputs(BASE, 0, 1)["topk_idx"],
                               torch.ones(4, 2), second)
    third_x, third_count, third, _, _ = _dispatch(buffer, BASE, micro=1, use_fp8=False)
    assert third_x.data_ptr() == first_x.data_ptr()
    assert third_count.data_ptr() == first_count.data_ptr()
    assert third.recv_src.data_ptr() == first.recv_src.data_ptr()
    # The first call's tensors now show the third call's rows (micro-batch 1's inputs).
    assert torch.equal(first_x, third_x) and not torch.equal(first_x, kept)
    buffer.destroy()


def test_at_most_two_dispatches_in_flight_on_every_rank():
    def body(rank, group):
        buffer = epcomm.Buffer(group, low_latency_mode=True)
        case = LLCase(2, 3, 4, 128, 2, 4, seed=5)
        inputs = ll_inputs(case, rank, 0)
        args = (inputs["x"], inputs["topk_idx"], 4, 4)
        _, _, first, _, _ = buffer.low_latency_dispatch(*args)
        buffer.low_latency_dispatch(*args)
        with pytest.raises(epcomm.EpcommError, match="at most two") as raised:
            buffer.low_latency_dispatch(*args)
        assert raised.value.code == epcomm.ErrorCode.invalid_argument
        y = torch.zeros(2, 2 * 4, 128, dtype=torch.bfloat16)
        buffer.low_latency_combine(y, inputs["topk_idx"], inputs["topk_weights"], first)
        buffer.low_latency_dispatch(*args)  # the first buffer is free again
        buffer.destroy()
    run_on_threads(2, body)


def test_stale_handles_and_hooks():
    buffer = _one_rank_buffer()
    inputs = ll_inputs(BASE, 0, 0)
    y = torch.zeros(4, 4, 128, dtype=torch.bfloat16)
    _, _, handle, _, hook = _dispatch(buffer, BASE, return_recv_hook=True)
    with pytest.raises(epcomm.EpcommError, match="waiting for its receive") as raised:
        buffer.low_latency_combine(y, inputs["topk_idx"], inputs["topk_weights"], handle)
    assert raised.value.code == epcomm.ErrorCode.stale_handle
    hook()
    with pytest.raises(epcomm.EpcommError) as raised:
        hook()  # nothing left to receive
    assert raised.value.code == epcomm.ErrorCode.stale_handle
    buffer.low_latency_combine(y, inputs["topk_idx"], inputs["topk_weights"], handle)
    with pytest.raises(epcomm.EpcommError, match="finished") as raised:
        buffer.low_latency_combine(y, inputs["topk_idx"], inputs["topk_weights"], handle)
    assert raised.value.code == epcomm.ErrorCode.stale_handle
    buffer.destroy()


def test_stats_count_every_received_row():
    buffer = _one_rank_buffer()
    stats = torch.full((4,), 5, dtype=torch.int32)
    _, count, _, _, hook = _dispatch(buffer, BASE, cumulative_local_expert_recv_stats=stats,
                                     return_recv_hook=True)
    assert stats.tolist() == [5] * 4  # added once received
    hook()
    ids = ll_inputs(BASE, 0, 0)["topk_idx"]
    per_expert = [sum(int((row == e).any()) for row in ids) for e in range(4)]
    assert count.tolist() == per_expert and sum(per_expert) > 0
    assert stats.tolist() == [5 + n for n in per_expert]
    buffer.destroy()


def test_size_hint_follows_the_region_layout():
    M_, H, R, E, K = 128, 7168, 8, 256, 8
    # bf16 row, scales, header (all multiples of 16 here), padded to whole 128-byte lines
    message = (2 * H + 4 * (H // 128) + 16 + 127) // 128 * 128
    per_buffer = E * M_ * message + 2 * M_ * K * H + 8 * E + 128  # + counts, signals (aligned)
    assert epcomm.Buffer.get_low_latency_rdma_size_hint(M_, H, R, E) == 2 * per_buffer
    assert epcomm.Buffer.get_low_latency_rdma_size_hint(M_, H, R, E, max_topk=9) > 2 * per_buffer


def test_next_combine_buffer_is_one_tensor_per_alternating_buffer():
    case = LLCase(1, 4, 4, 128, 2, 4, seed=4)
    buffer = _one_rank_buffer()
    inputs = ll_inputs(case, 0, 0)
    args = (inputs["x"], inputs["topk_idx"], 4, 4)
    recv_x, _, first, _, _ = buffer.low_latency_dispatch(*args, use_fp8=False)
    _, _, second, _, _ = buffer.low_latency_dispatch(*args, use_fp8=False)
    rows_first = buffer.get_next_low_latency_combine_buffer(first)
    rows_second = buffer.get_next_low_latency_combine_buffer(second)
    assert rows_first.shape == (4, 4, 128) and rows_first.dtype == torch.bfloat16
    assert rows_first.data_ptr() != rows_second.data_ptr()
    assert buffer.get_next_low_latency_combine_buffer(first) is rows_first
    rows_first.copy_(recv_x)
    weights = inputs["topk_weights"]
    want, _, _ = buffer.low_latency_combine(recv_x, inputs["topk_idx"], weights, first)
    with pytest.raises(ValueError, match=r"x has shape \[4, 3, 128\]"):  # x is still checked
        buffer.low_latency_combine(recv_x[:, :3].contiguous(), inputs["topk_idx"], weights,
                                   second, zero_copy=True)
    buffer.get_next_low_latency_combine_buffer(second).copy_(recv_x)
    got, _, _ = buffer.low_latency_combine(torch.zeros_like(recv_x), inputs["topk_idx"], weights,
                                           second, zero_copy=True)
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))
    # The third dispatch reuses the first buffer, and with it the first tensor.
    _, _, third, _, _ = buffer.low_latency_dispatch(*args, use_fp8=False)
    assert buffer.get_next_low_latency_combine_buffer(third) is rows_first
    buffer.destroy()


def test_zero_copy_needs_the_buffer_and_a_handle_of_this_buffer():
    buffer = _one_rank_buffer()
    inputs = ll_inputs(LLCase(1, 4, 4, 128, 2, 4), 0, 0)
    recv_x, _, handle, _, _ = buffer.low_latency_dispatch(inputs["x"], inputs["topk_idx"], 4, 4,
                                                          use_fp8=False)
    with pytest.raises(ValueError, match="get_next_low_latency_combine_buffer.*never called"):
        buffer.low_latency_combine(recv_x, inputs["topk_idx"], inputs["topk_weights"], handle,
                                   zero_copy=True)
    with pytest.raises(ValueError, match="handle must be a LowLatencyHandle from this Buffer"):
        _one_rank_buffer().get_next_low_latency_combine_buffer(handle)
    plain = epcomm.Buffer(epcomm.make_thread_groups(1)[0], max_tokens_per_rank=4)
    with pytest.raises(ValueError, match="needs a Buffer created with low_latency_mode=True"):
        plain.get_next_low_latency_combine_buffer(handle)
    buffer.destroy()


# ---- argument errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("changes, error, message", [
    (dict(num_max_dispatch_tokens_per_rank=3), ValueError,
     "x has 4 tokens, more than num_max_dispatch_tokens_per_rank = 3"),
    (dict(num_max_dispatch_tokens_per_rank=0), ValueError,
     "num_max_dispatch_tokens_per_rank = 0"),
    (dict(x=torch.zeros(4, 64, dtype=torch.bfloat16)), ValueError, "x has hidden = 64"),
    (dict(x=torch.zeros(4, 128)), TypeError, "x has dtype torch.float32"),
    (dict(topk_idx=torch.zeros(5, 2, dtype=torch.int64)), ValueError,
     r"topk_idx has shape \[5, 2\]"),
    (dict(num_experts=0), ValueError, "num_experts = 0"),
    (dict(cumulative_local_expert_recv_stats=torch.zeros(3, dtype=torch.int32)), ValueError,
     r"cumulative_local_expert_recv_stats has shape \[3\]; expected \[4\]"),
    (dict(cumulative_local_expert_recv_stats=torch.zeros(4, dtype=torch.int64)), TypeError,
     "cumulative_local_expert_recv_stats has dtype torch.int64"),
    (dict(async_finish=True, return_recv_hook=True), ValueError, "pick one"),
    (dict(), None, None),
])
def test_dispatch_names_the_bad_argument(changes, error, message):
    buffer = _one_rank_buffer()
    inputs = ll_inputs(BASE, 0, 0)
    args = dict(x=inputs["x"], topk_idx=inputs["topk_idx"], num_max_dispatch_tokens_per_rank=4,
                num_experts=4)
    args.update(changes)
    if error is None:  # the baseline is valid
        buffer.low_latency_dispatch(**args)
    else:
        with pytest.raises(error, match=message):
            buffer.low_latency_dispatch(**args)
    buffer.destroy()


@pytest.mark.parametrize("changes, message", [
    (dict(num_max_dispatch_tokens_per_rank=8), "num_max_dispatch_tokens_per_rank = 8, but .* "
                                               "made for 4"),
    (dict(num_experts=8), "num_experts = 8, but .* made for 4"),
    (dict(x=torch.zeros(4, 256, dtype=torch.bfloat16)), "x's hidden size = 256, but .* made for "
                                                        "128"),
    (dict(topk_idx=torch.zeros(4, 2, dtype=torch.int32)), "topk_idx's dtype = int32, but .* "
                                                          "made for int64"),
    (dict(topk_idx=torch.zeros(4, 9, dtype=torch.int64)), "9 columns.*max_topk = 8"),
])
def test_later_dispatches_must_fit_the_first(changes, message):
    buffer = _one_rank_buffer()
    inputs = ll_inputs(BASE, 0, 0)
    args = dict(x=inputs["x"], topk_idx=inputs["topk_idx"], num_max_dispatch_tokens_per_rank=4,
                num_experts=4)
    recv_x, _, handle, _, _ = buffer.low_latency_dispatch(**args, use_fp8=False)
    buffer.low_latency_combine(recv_x, inputs["topk_idx"], inputs["topk_weights"], handle)
    args.update(changes)
    with pytest.raises(ValueError, match=message):
        buffer.low_latency_dispatch(**args)
    buffer.clean_low_latency_buffer(4, 128, 4)  # what the first call made: nothing to say
    with pytest.raises(ValueError, match="num_max_dispatch_tokens_per_rank = 5"):
        buffer.clean_low_latency_buffer(5, 128, 4)
    buffer.destroy()


def test_combine_names_the_bad_argument():
    buffer = _one_rank_buffer()
    inputs = ll_inputs(BASE, 0, 0)
    recv_x, _, handle, _, _ = _dispatch(buffer, BASE, use_fp8=False)
    ids, weights = inputs["topk_idx"], inputs["topk_weights"]
    with pytest.raises(ValueError, match=r"x has shape \[4, 3, 128\]; expected \[4, 4, 128\]"):
        buffer.low_latency_combine(recv_x[:, :3].contiguous(), ids, weights, handle)
    with pytest.raises(TypeError, match="topk_idx has dtype torch.int32"):
        buffer.low_latency_combine(recv_x, ids.int(), weights, handle)
    with pytest.raises(ValueError, match=r"topk_weights has shape \[4, 1\]"):
        buffer.low_latency_combine(recv_x, ids, weights[:, :1].contiguous(), handle)
    with pytest.raises(ValueError, match=r"out has shape \[3, 128\]"):
        buffer.low_latency_combine(recv_x, ids, weights, handle,
                                   out=torch.zeros(3, 128, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="handle must be a LowLatencyHandle from this Buffer"):
        buffer.low_latency_combine(recv_x, ids, weights, ("src_info", "layout_range"))
    other = _one_rank_buffer()
    with pytest.raises(ValueError, match="handle must be a LowLatencyHandle from this Buffer"):
        other.low_latency_combine(recv_x, ids, weights, handle)
    buffer.low_latency_combine(recv_x, ids, weights, handle)
    buffer.destroy()


def test_buffer_arguments_of_the_mode():
    group = epcomm.make_thread_groups(1)[0]
    with pytest.raises(ValueError, match="num_qps_per_rank = 0"):
        epcomm.Buffer(group, low_latency_mode=True, num_qps_per_rank=0)
    plain = epcomm.Buffer(group, max_tokens_per_rank=8)
    inputs = ll_inputs(BASE, 0, 0)
    with pytest.raises(ValueError, match="low_latency_dispatch needs a Buffer created with "
                                         "low_latency_mode=True"):
        plain.low_latency_dispatch(inputs["x"], inputs["topk_idx"], 4, 4)
    # num_nvl_bytes = 0 is fine for the mode; the high-throughput calls then say why not.
    buffer = epcomm.Buffer(group, 0, 10**6, low_latency_mode=True, num_qps_per_rank=4)
    with pytest.raises(ValueError, match="num_nvl_bytes = 0 holds no token"):
        buffer.dispatch(inputs["x"], topk_idx=inputs["topk_idx"],
                        num_tokens_per_expert=torch.zeros(4, dtype=torch.int32))
    buffer.low_latency_dispatch(inputs["x"], inputs["topk_idx"], 4, 4)
    buffer.destroy()
    with pytest.raises(RuntimeError, match="destroyed"):
        buffer.low_latency_dispatch(inputs["x"], inputs["topk_idx"], 4, 4)


def test_expert_out_of_range_fails_every_rank_and_leaves_the_buffer_usable():
    def body(rank, group):
        buffer = epcomm.Buffer(group, low_latency_mode=True)
        case = LLCase(2, 3, 4, 128, 2, 4, seed=9)
        inputs = ll_inputs(case, rank, 0)
        bad = inputs["topk_idx"].clone()
        if rank == 1:
            bad[2, 1] = 4
        with pytest.raises(epcomm.EpcommError) as raised:
            buffer.low_latency_dispatch(inputs["x"], bad, 4, 4)
        assert raised.value.code == epcomm.ErrorCode.invalid_expert
        assert ("topk_idx[2][1] = 4" if rank == 1 else "peer rank 1") in str(raised.value)
        recv_x, count, handle, _, _ = buffer.low_latency_dispatch(
            inputs["x"], inputs["topk_idx"], 4, 4, use_fp8=False)
        assert int(count.sum()) > 0
        buffer.low_latency_combine(recv_x, inputs["topk_idx"], inputs["topk_weights"], handle)
        buffer.destroy()
    run_on_threads(2, body)


def test_a_repeated_expert_is_sent_once_and_combined_per_slot():
    buffer = _one_rank_buffer()
    x = torch.randn(2, 128).to(torch.bfloat16)
    ids = torch.tensor([[1, 1, -1], [-1, -1, -1]])
    recv_x, count, handle, _, _ = buffer.low_latency_dispatch(x, ids, 2, 2, use_fp8=False)
    assert count.tolist() == [0, 1]
    assert handle.recv_src[1, 0].tolist() == [0, 0, 0]  # rank 0, token 0, first slot 0
    weights = torch.tensor([[0.5, 0.25, 9.0], [1.0, 1.0, 1.0]])
    combined, event, hook = buffer.low_latency_combine(recv_x, ids, weights, handle)
    assert event.event is None and hook is None
    want = (x[0].float() * 0.5 + x[0].float() * 0.25).to(torch.bfloat16)  # exact here
    assert_bits_equal("token 0", combined[0].view(torch.int16).numpy(),
                      want.view(torch.int16).numpy())
    assert torch.equal(combined[1], torch.zeros(128, dtype=torch.bfloat16))
    buffer.destroy()
