"""The DeepEP features this build cannot run raise EpcommError (ErrorCode.unsupported) naming the
feature, never a TypeError and never silently; the keywords DeepEP itself gives no effect on
results are accepted and change nothing (every output checked against the numpy models); the
DeepEP positional order reaches the right parameter."""
import pytest
import torch

import epcomm
from epcomm._unsupported import NOT_BUILT
from helpers.expect import compare_round, expected_round
from helpers.ll_expect import compare_ll_case, expected_ll_case
from helpers.ll_runner import run_ll_case
from helpers.ll_workload import LLCase, ll_inputs
from helpers.runner import run_case, run_on_threads
from helpers.workload import Case, inputs_for

T, H, K, E, M = 5, 128, 2, 4, 8


def _ll_buffer():
    return epcomm.Buffer(epcomm.make_thread_groups(1)[0], low_latency_mode=True)


def _ll_dispatched():
    buffer = _ll_buffer()
    x = torch.randn(T, H).to(torch.bfloat16)
    topk_idx = torch.arange(T * K).reshape(T, K) % E
    recv_x, _, handle, _, _ = buffer.low_latency_dispatch(x, topk_idx, M, E, use_fp8=False)
    return buffer, x, topk_idx, recv_x, handle


def _use_fabric():
    epcomm.Buffer(epcomm.make_thread_groups(1)[0], 10**6, use_fabric=True)


def _ll_dispatch(**options):
    buffer = _ll_buffer()
    x = torch.randn(T, H).to(torch.bfloat16)
    buffer.low_latency_dispatch(x, torch.zeros(T, K, dtype=torch.int64), M, E, **options)


def _ll_combine(**options):
    buffer, _, topk_idx, recv_x, handle = _ll_dispatched()
    buffer.low_latency_combine(recv_x, topk_idx, torch.ones(T, K), handle, **options)


# One way to reach each entry of NOT_BUILT.
RAISES = {
    "use_fabric": _use_fabric,
    "use_logfmt": lambda: _ll_combine(use_logfmt=True),
}


def test_every_feature_that_is_not_built_has_a_case():
    assert set(RAISES) == set(NOT_BUILT)


@pytest.mark.parametrize("feature", sorted(RAISES))
def test_features_not_built_raise_unsupported_naming_the_feature(feature):
    with pytest.raises(epcomm.EpcommError, match=f"^{feature} is not supported by this epcomm "
                                                 "build: ") as raised:
        RAISES[feature]()
    assert raised.value.code == epcomm.ErrorCode.unsupported
    assert NOT_BUILT[feature] in str(raised.value)


def test_use_ue8m0_needs_round_scale_as_in_deepep():
    for use_fp8 in (False, True):
        with pytest.raises(ValueError, match="use_ue8m0=True needs round_scale=True"):
            _ll_dispatch(use_fp8=use_fp8, use_ue8m0=True)


# ---- keywords DeepEP gives no effect on results: accepted, outputs unchanged ------------------

HT_CASE = Case(2, 21, 128, 3, 8, routing="with_holes", rounds=2, seed=5)


@pytest.mark.parametrize("keywords", [
    dict(num_rdma_bytes=12345, num_qps_per_rank=3, allow_nvlink_for_low_latency_mode=False,
         allow_mnnvl=True, use_fabric=False, explicitly_destroy=True, enable_shrink=False,
         comm=None),
    dict(low_latency_mode=True, num_qps_per_rank=2, allow_nvlink_for_low_latency_mode=True,
         allow_mnnvl=False),
], ids=["transport_keywords", "low_latency_mode_too"])
def test_transport_keywords_change_no_high_throughput_output(keywords):
    def body(rank, group):
        buffer = epcomm.Buffer(group, 10**6, max_tokens_per_rank=HT_CASE.max_tokens_per_rank,
                               **keywords)
        try:
            return run_case(buffer, HT_CASE, rank, torch.device("cpu"))
        finally:
            buffer.destroy()
    got = run_on_threads(HT_CASE.num_ranks, body)
    for index in range(HT_CASE.rounds):
        want = expected_round(HT_CASE.round(index))
        for rank in range(HT_CASE.num_ranks):
            compare_round(HT_CASE.round(index), rank, got[rank][index], want[rank])


LL_CASE = LLCase(2, 6, 6, 128, 3, 4, hook=True, rounds=2, seed=17)


@pytest.mark.parametrize("buffer_keywords, options", [
    (dict(num_qps_per_rank=1, allow_nvlink_for_low_latency_mode=False, allow_mnnvl=True), {}),
    # Without use_fp8 nothing is cast, so DeepEP's scale options do nothing either.
    ({}, dict(round_scale=True, use_ue8m0=True)),
    ({}, dict(round_scale=True, dispatch_wait_recv_cost_stats=None)),
], ids=["transport_keywords", "scale_options_without_fp8", "round_scale_without_fp8"])
def test_keywords_without_effect_change_no_low_latency_output(buffer_keywords, options):
    def body(rank, group):
        buffer = epcomm.Buffer(group, 0, 10**6, True, **buffer_keywords)
        try:
            return run_ll_case(buffer, LL_CASE, rank, torch.device("cpu"), options)
        finally:
            buffer.destroy()
    got = run_on_threads(LL_CASE.num_ranks, body)
    want = expected_ll_case(LL_CASE)
    for rank in range(LL_CASE.num_ranks):
        compare_ll_case(LL_CASE, rank, got[rank], [want[i][rank] for i in range(LL_CASE.rounds)])


def test_no_bias_in_any_spelling_is_no_bias():
    case = Case(2, 9, 64, 2, 4, seed=8)

    def body(rank, group):
        buffer = epcomm.Buffer(group, max_tokens_per_rank=16)
        inputs = inputs_for(case, rank)
        out = []
        for bias in (None, (None, None)):
            recv_x, _, _, _, handle, _ = buffer.dispatch(
                inputs["x"], topk_idx=inputs["topk_idx"], topk_weights=inputs["topk_weights"],
                num_tokens_per_expert=torch.zeros(case.num_experts, dtype=torch.int32))
            out.append(buffer.combine(recv_x, handle, bias=bias)[0])
        buffer.destroy()
        return out
    got = run_on_threads(2, body)
    for rank in range(2):
        assert torch.equal(got[rank][0].view(torch.int16), got[rank][1].view(torch.int16))


# ---- DeepEP's positional order reaches the right parameter ------------------------------------

def test_positional_arguments_land_where_deepep_puts_them():
    group = epcomm.make_thread_groups(1)[0]
    # group, nvl, rdma, low_latency_mode, qps, nvlink, mnnvl, use_fabric, explicitly_destroy
    buffer = epcomm.Buffer(group, 10**6, 0, True, 4, True, False, False, True)
    assert buffer.explicitly_destroy is True and buffer.low_latency_mode is True
    inputs = ll_inputs(LLCase(1, 4, 4, 128, 2, 4), 0, 0)
    # x, topk_idx, M, E, cumulative stats, wait-cost stats, use_fp8=False
    recv_x, _, handle, _, _ = buffer.low_latency_dispatch(inputs["x"], inputs["topk_idx"], 4, 4,
                                                          None, None, False)
    assert isinstance(recv_x, torch.Tensor) and recv_x.dtype == torch.bfloat16
    # x, topk_idx, topk_weights, handle, use_logfmt, zero_copy, async_finish, hook, out
    out = torch.zeros(4, 128, dtype=torch.bfloat16)
    combined, _, _ = buffer.low_latency_combine(recv_x, inputs["topk_idx"],
                                                inputs["topk_weights"], handle, False, False,
                                                False, False, out)
    assert combined is out
    # High throughput: combine(x, handle, topk_weights, bias, config)
    x = torch.randn(3, 128).to(torch.bfloat16)
    ids = torch.tensor([[0, 1], [2, -1], [3, 3]])
    recv_x, _, recv_weights, _, handle, _ = buffer.dispatch(
        x, None, None, None, None, torch.zeros(4, dtype=torch.int32), ids, torch.rand(3, 2))
    config = epcomm.Config(epcomm.Buffer.num_sms + 1)
    with pytest.raises(ValueError, match="config.num_sms"):  # config is the fifth argument
        buffer.combine(recv_x, handle, recv_weights, None, config)
    buffer.combine(recv_x, handle, recv_weights, None, epcomm.Buffer.get_combine_config(1))
    buffer.destroy()
