"""The ways vLLM and SGLang construct DeepEP's Buffer and call it, reproduced (in this project's
own code) on epcomm's host backend with ranks as threads; every output is checked against the
numpy models (helpers/reference.py, helpers/ll_reference.py).

What each caller does, read from its public source:
- vLLM, high throughput (DeepEPHTAll2AllManager, DeepEPHTPrepareAndFinalize): Buffer(group=,
  num_nvl_bytes=MB << 20, num_rdma_bytes=0, low_latency_mode=False, num_qps_per_rank=1,
  explicitly_destroy=True); Buffer.set_num_sms to lower the count; keyword calls of
  get_dispatch_layout, dispatch (handle=None, expert_alignment=1, config from
  get_dispatch_config where DeepEP lists the rank count, else None) and combine
  (topk_weights=None); the handle kept between prepare and finalize, one per micro-batch.
- vLLM, low latency (DeepEPLLAll2AllManager, DeepEPLLPrepareAndFinalize): num_rdma_bytes from
  get_low_latency_rdma_size_hint by keyword, Buffer(low_latency_mode=True, num_qps_per_rank =
  local experts, allow_nvlink_for_low_latency_mode=True, allow_mnnvl, explicitly_destroy=True,
  enable_shrink = fault tolerance); low_latency_dispatch with return_recv_hook=True and two
  micro-batches' handles; fp8 rows dequantized from contiguous scales; low_latency_combine with
  zero_copy=False, out=.
- SGLang (DeepEPBuffer, DeepEPConfig, _DeepEPDispatcherImplNormal/LowLatency): Config(**json),
  buffer sizes from get_nvl_buffer_size_hint / get_rdma_buffer_size_hint over its dispatch and
  combine configs and get_low_latency_rdma_size_hint; Buffer(group, nvl, rdma,
  low_latency_mode=, num_qps_per_rank=, allow_mnnvl=True); capture() as previous_event when
  async; allocate_on_comm_stream when it has an event; clean_low_latency_buffer when it moves
  from normal to low-latency calls on one Buffer; the hook or event.current_stream_wait().
"""
from typing import Dict, List

import numpy as np
import pytest
import torch

import epcomm
from helpers import ll_reference, reference
from helpers.expect import _np_bits, assert_bits_equal, compare_round, expected_round
from helpers.ll_expect import compare_ll, compare_ll_case, expected_ll_case
from helpers.ll_runner import _record_dispatch, run_ll_case
from helpers.ll_workload import LLCase, ll_expert_output, ll_inputs
from helpers.runner import run_on_threads, run_overlapped
from helpers.workload import Case, inputs_for

# The rank counts DeepEP tabulates configs for, as vLLM lists them.
VLLM_RANK_CONFIGS = [2, 4, 8, 16, 24, 32, 64, 128, 144, 160]


# ---- checks against the numpy models ----------------------------------------------------------

def _check_high_throughput(case: Case, got: List[Dict], alignment: int) -> None:
    """got[rank]: the layout, dispatch outputs, the y it combined and the combined rows."""
    R, E = case.num_ranks, case.num_experts
    ranks = [reference.Rank(_np_bits(g["x"]).view(np.uint16), None,
                            g["topk_idx"].to(torch.int64).numpy(), g["topk_weights"].numpy())
             for g in got]
    received = [reference.dispatch(ranks, d, E, alignment) for d in range(R)]
    ys = [_np_bits(g["y"]).view(np.uint16) for g in got]
    for r, g in enumerate(got):
        per_rank, per_expert, in_rank = reference.layout(ranks[r].topk_idx, E, R)
        assert_bits_equal(f"rank {r} num_tokens_per_rank", g["per_rank"].numpy(),
                          per_rank.astype(np.int32))
        assert_bits_equal(f"rank {r} num_tokens_per_expert", g["per_expert"].numpy(),
                          per_expert.astype(np.int32))
        assert_bits_equal(f"rank {r} is_token_in_rank", g["in_rank"].numpy(), in_rank)
        want = received[r]
        assert g["counts"] == want["counts"], (r, g["counts"], want["counts"])
        assert_bits_equal(f"rank {r} recv_x", _np_bits(g["recv_x"]), want["recv_x"])
        assert_bits_equal(f"rank {r} recv_topk_idx", g["recv_topk_idx"].numpy(),
                          want["recv_topk_idx"])
        assert_bits_equal(f"rank {r} recv_topk_weights", g["recv_topk_weights"].numpy(),
                          want["recv_topk_weights"])
        assert_bits_equal(f"rank {r} combined_x", _np_bits(g["combined_x"]),
                          reference.combine(received, ys, r, case.num_tokens, case.hidden))


def _check_low_latency(case: LLCase, got: List[List[Dict]], ids: List[List[np.ndarray]],
                       weights: List[List[np.ndarray]], xs: List[List[np.ndarray]]) -> None:
    """got[rank][micro_batch] as _record_dispatch gives it, plus "y" and "combined_x"."""
    R, E, M = case.num_ranks, case.num_experts, case.max_tokens
    for mb in range(len(got[0])):
        received = [ll_reference.dispatch([x[mb] for x in xs], [i[mb] for i in ids], d, E, M,
                                          case.fp8) for d in range(R)]
        ys = [_np_bits(got[d][mb]["y"]).view(np.uint16) for d in range(R)]
        for r in range(R):
            want = dict(received[r])
            want["combined_x"] = ll_reference.combine(received, ys, r, ids[r][mb],
                                                      weights[r][mb], E)
            compare_ll(f"rank {r} micro-batch {mb}", {k: v for k, v in got[r][mb].items()
                                                      if k != "y"}, want)


def _ll_model_inputs(case: LLCase, micro_batches: int):
    xs, ids, weights = [], [], []
    for r in range(case.num_ranks):
        per_rank = [ll_inputs(case, r, mb) for mb in range(micro_batches)]
        xs.append([_np_bits(i["x"]).view(np.uint16) for i in per_rank])
        ids.append([i["topk_idx"].to(torch.int64).numpy() for i in per_rank])
        weights.append([i["topk_weights"].numpy() for i in per_rank])
    return xs, ids, weights


def _dequantize(recv_x) -> torch.Tensor:
    """vLLM's dequant_fp8 of low-latency fp8 rows (scales made contiguous, one per 128
    elements); this PyTorch has no fp8 dtype, so the e4m3 bytes go through the model's table."""
    rows, scales = recv_x
    num_experts = rows.shape[0]
    magnitude = np.append(ll_reference._e4m3_table(), np.nan)  # code 0x7F is NaN
    codes = np.arange(256)
    table = np.where(codes & 0x80, -1.0, 1.0) * magnitude[codes & 0x7F]
    values = torch.from_numpy(table.astype(np.float32)[rows.numpy()])
    blocks = values.view(num_experts, -1, 128) * scales.contiguous().view(num_experts, -1, 1)
    return blocks.view(rows.shape)


# ---- vLLM -------------------------------------------------------------------------------------

BUFFER_MB = 4  # vLLM's VLLM_DEEPEP_BUFFER_SIZE_MB (1024 by default; small for host memory)


def _vllm_ht_buffer(group) -> epcomm.Buffer:
    """DeepEPHTAll2AllManager's Buffer for one node (no internode RDMA)."""
    kwargs = dict(group=group, num_nvl_bytes=BUFFER_MB * 1024 * 1024, num_rdma_bytes=0,
                  low_latency_mode=False, num_qps_per_rank=1, explicitly_destroy=True)
    return epcomm.Buffer(**kwargs)


def _vllm_ht_prepare(buffer, x, topk_ids, topk_weights, num_experts, dp_size):
    config = (epcomm.Buffer.get_dispatch_config(dp_size) if dp_size in VLLM_RANK_CONFIGS
              else None)
    per_rank, per_rdma_rank, per_expert, in_rank, _ = buffer.get_dispatch_layout(
        topk_idx=topk_ids, num_experts=num_experts, previous_event=None, async_finish=False,
        allocate_on_comm_stream=False)
    recv_x, recv_ids, recv_weights, counts, handle, _ = buffer.dispatch(
        x=x, handle=None, num_tokens_per_rank=per_rank, num_tokens_per_rdma_rank=per_rdma_rank,
        is_token_in_rank=in_rank, num_tokens_per_expert=per_expert, topk_idx=topk_ids,
        topk_weights=topk_weights, expert_alignment=1, config=config, previous_event=None,
        async_finish=False, allocate_on_comm_stream=False)
    return dict(per_rank=per_rank, per_expert=per_expert, in_rank=in_rank, recv_x=recv_x,
                recv_topk_idx=recv_ids, recv_topk_weights=recv_weights, counts=counts), handle


def _vllm_ht_finalize(buffer, handle, y, num_tokens, dp_size):
    config = (epcomm.Buffer.get_combine_config(dp_size) if dp_size in VLLM_RANK_CONFIGS
              else None)
    output = torch.empty(num_tokens, y.shape[1], dtype=torch.bfloat16)
    combined_x, _, _ = buffer.combine(x=y, handle=handle, topk_weights=None, config=config,
                                      previous_event=None, async_finish=False,
                                      allocate_on_comm_stream=False)
    output.copy_(combined_x, non_blocking=True)  # vLLM respects in-place outputs
    return output


def _weighted_expert_rows(recv_x, recv_weights) -> torch.Tensor:
    """The experts stand-in: identity experts, weights applied and summed over the slots on
    the receiving rank (vLLM's TopKWeightAndReduce; DeepEP's combine adds without weights)."""
    return (recv_x.float() * recv_weights.sum(dim=1, keepdim=True)).to(torch.bfloat16)


@pytest.mark.parametrize("num_ranks", [2, 3])  # 3: a count DeepEP has no config for
def test_vllm_high_throughput(num_ranks):
    case = Case(num_ranks, 24, 128, 4, 4 * num_ranks, routing="with_holes", seed=31)
    before = epcomm.Buffer.num_sms

    def body(rank, group):
        buffer = _vllm_ht_buffer(group)
        epcomm.Buffer.set_num_sms(min(16, epcomm.Buffer.num_sms))  # only ever lowered
        inputs = inputs_for(case, rank)
        x, ids, weights = inputs["x"], inputs["topk_idx"], inputs["topk_weights"]
        out, handle = _vllm_ht_prepare(buffer, x, ids, weights, case.num_experts, num_ranks)
        # vLLM moves -1 slots to an expert outside this rank and local ids back to global ones.
        offset = rank * case.num_experts // num_ranks
        global_ids = torch.where(out["recv_topk_idx"] == -1,
                                 case.num_experts - 1 if offset == 0 else 0,
                                 out["recv_topk_idx"] + offset)
        assert bool(((global_ids >= 0) & (global_ids < case.num_experts)).all())
        y = _weighted_expert_rows(out["recv_x"], out["recv_topk_weights"])
        combined = _vllm_ht_finalize(buffer, handle, y, case.num_tokens, num_ranks)
        buffer.destroy()  # the manager's destroy(): explicitly_destroy=True
        return dict(out, x=x, topk_idx=ids, topk_weights=weights, y=y, combined_x=combined)
    try:
        got = run_on_threads(num_ranks, body)
    finally:
        epcomm.Buffer.set_num_sms(before)
    _check_high_throughput(case, got, alignment=1)


def _identity_combined(case: Case, rank: int, micro_case: Case) -> torch.Tensor:
    """What combine returns for identity experts: x times the number of ranks reached."""
    ids = inputs_for(micro_case, rank)["topk_idx"]
    reached = torch.zeros(case.num_tokens, case.num_ranks, dtype=torch.bool)
    per_rank = case.num_experts // case.num_ranks
    for k in range(case.num_topk):
        valid = ids[:, k] >= 0
        reached[valid, ids[valid, k] // per_rank] = True
    return (inputs_for(micro_case, rank)["x"].float() * reached.sum(1, keepdim=True)).to(
        torch.bfloat16)


def test_vllm_dual_batch_overlap_two_high_throughput_micro_batches():
    """vLLM's dual-batch overlap keeps one handle per micro-batch: micro-batch 0 and 1 are
    dispatched, then combined in order. The two go to the Buffer's two pools and both combine
    correctly. A third dispatch while both await their combines overwrites the older pool:
    combining that handle then raises stale_handle on every rank (before anything is sent)."""
    case = Case(2, 10, 64, 2, 4, seed=32)
    micro = [case, Case(2, 10, 64, 2, 4, seed=33), Case(2, 10, 64, 2, 4, seed=34)]

    def body(rank, group):
        buffer = _vllm_ht_buffer(group)
        handles, outs, combined = [None] * 3, [None] * 3, []
        for mb in (0, 1):
            inputs = inputs_for(micro[mb], rank)
            outs[mb], handles[mb] = _vllm_ht_prepare(
                buffer, inputs["x"], inputs["topk_idx"], inputs["topk_weights"],
                case.num_experts, 2)
        for mb in (0, 1):
            combined.append(_vllm_ht_finalize(buffer, handles[mb], outs[mb]["recv_x"],
                                              case.num_tokens, 2))
        # Both pools await a combine, then a third dispatch takes the older one (pool 0).
        for mb in (0, 1, 2):
            inputs = inputs_for(micro[mb], rank)
            outs[mb], handles[mb] = _vllm_ht_prepare(
                buffer, inputs["x"], inputs["topk_idx"], inputs["topk_weights"],
                case.num_experts, 2)
        with pytest.raises(epcomm.EpcommError, match="latest dispatch") as raised:
            _vllm_ht_finalize(buffer, handles[0], outs[0]["recv_x"], case.num_tokens, 2)
        assert raised.value.code == epcomm.ErrorCode.stale_handle
        for mb in (1, 2):
            combined.append(_vllm_ht_finalize(buffer, handles[mb], outs[mb]["recv_x"],
                                              case.num_tokens, 2))
        buffer.destroy()
        return combined
    got = run_on_threads(2, body)
    for rank in range(2):
        for index, mb in enumerate((0, 1, 1, 2)):
            assert torch.equal(got[rank][index], _identity_combined(case, rank, micro[mb])), \
                (rank, index)


def _vllm_ll_kwargs(group, case: LLCase, fault_tolerance: bool) -> Dict:
    """DeepEPLLAll2AllManager._make_all2all_kwargs."""
    num_rdma_bytes = epcomm.Buffer.get_low_latency_rdma_size_hint(
        num_max_dispatch_tokens_per_rank=case.max_tokens, hidden=case.hidden,
        num_ranks=case.num_ranks, num_experts=case.num_experts)
    return dict(group=group, num_nvl_bytes=BUFFER_MB * 1024 * 1024, num_rdma_bytes=num_rdma_bytes,
                low_latency_mode=True, num_qps_per_rank=case.experts_per_rank,
                allow_nvlink_for_low_latency_mode=True, allow_mnnvl=False,
                explicitly_destroy=True, enable_shrink=fault_tolerance)


@pytest.mark.parametrize("fp8", [False, True])
def test_vllm_low_latency_two_micro_batches_with_hooks(fp8):
    case = LLCase(2, 5, 8, 256, 3, 8, fp8=fp8, seed=41)
    micro_batches = 2

    def body(rank, group):
        buffer = epcomm.Buffer(**_vllm_ll_kwargs(group, case, fault_tolerance=False))
        inputs = [ll_inputs(case, rank, mb) for mb in range(micro_batches)]
        handles, received, hooks = [None, None], [], []
        for mb in range(micro_batches):  # prepare_async of each micro-batch, then the hooks
            expert_x, expert_num_tokens, handles[mb], _, hook = buffer.low_latency_dispatch(
                inputs[mb]["x"], inputs[mb]["topk_idx"], case.max_tokens, case.num_experts,
                use_fp8=fp8, round_scale=False, use_ue8m0=False, async_finish=False,
                return_recv_hook=True)
            hooks.append(hook)
            received.append((expert_x, expert_num_tokens))
        for hook in hooks:
            hook()
        records, finals = [], []
        for mb, (expert_x, count) in enumerate(received):
            record = _record_dispatch(expert_x, count, handles[mb], fp8)
            rows = _dequantize(expert_x) if fp8 else expert_x.float()
            y = (rows * 0.5).to(torch.bfloat16)  # the experts stand-in
            output = torch.empty(inputs[mb]["x"].shape, dtype=torch.bfloat16)
            _, _, recv_hook = buffer.low_latency_combine(
                y, inputs[mb]["topk_idx"], inputs[mb]["topk_weights"], handles[mb],
                async_finish=False, zero_copy=False, return_recv_hook=True, out=output)
            finals.append(recv_hook)
            records.append(dict(record, y=y, combined_x=output))
        for hook in finals:
            hook()
        for record in records:
            record["combined_x"] = _np_bits(record["combined_x"]).copy()
        buffer.destroy()
        return records
    got = run_on_threads(case.num_ranks, body)
    xs, ids, weights = _ll_model_inputs(case, micro_batches)
    _check_low_latency(case, got, ids, weights, xs)


def test_vllm_fault_tolerance_builds_the_elastic_mode_and_masks_a_rank():
    """vLLM's fault-tolerance setting passes enable_shrink=True; a rank masked on every rank
    then adds nothing, and each output equals the numpy model with that rank cut off."""
    case = LLCase(3, 5, 8, 256, 3, 6, seed=43, masked=0b100)

    def body(rank, group):
        buffer = epcomm.Buffer(**_vllm_ll_kwargs(group, case, fault_tolerance=True))
        assert buffer.enable_shrink
        try:
            got = run_ll_case(buffer, case, rank, torch.device("cpu"))
            status = torch.full((case.num_ranks,), 7, dtype=torch.int32)
            buffer.low_latency_query_mask_buffer(status)
            return got, status.tolist()
        finally:
            buffer.destroy()
    results = run_on_threads(case.num_ranks, body)
    want = expected_ll_case(case)
    for rank, (got, status) in enumerate(results):
        compare_ll_case(case, rank, got, [want[i][rank] for i in range(case.rounds)])
        assert status == [int(case.masks(rank, p)) for p in range(case.num_ranks)]


# ---- SGLang -----------------------------------------------------------------------------------

def _sglang_configs(json_config):
    """DeepEPConfig: Config(**json) when the user gave a config, else None and Buffer.num_sms."""
    if json_config is None:
        return None, None, epcomm.Buffer.num_sms
    dispatch = epcomm.Config(**json_config["normal_dispatch"])
    combine = epcomm.Config(**json_config["normal_combine"])
    assert json_config["normal_dispatch"]["num_sms"] == json_config["normal_combine"]["num_sms"]
    return dispatch, combine, json_config["normal_dispatch"]["num_sms"]


def _sglang_buffer(group, hidden, params_bytes, normal, low_latency, configs, max_tokens=-1,
                   num_experts=-1) -> epcomm.Buffer:
    """DeepEPBuffer.get_deepep_buffer for mode NORMAL, LOW_LATENCY or AUTO (both)."""
    dispatch_config, combine_config, num_sms = configs
    num_nvl_bytes, num_rdma_bytes = 0, 0
    if normal:
        hidden_bytes = hidden * params_bytes
        for config in (dispatch_config or epcomm.Buffer.get_dispatch_config(group.size()),
                       combine_config or epcomm.Buffer.get_combine_config(group.size())):
            num_nvl_bytes = max(config.get_nvl_buffer_size_hint(hidden_bytes, group.size()),
                                num_nvl_bytes)
            num_rdma_bytes = max(config.get_rdma_buffer_size_hint(hidden_bytes, group.size()),
                                 num_rdma_bytes)
    if low_latency:
        num_rdma_bytes = max(epcomm.Buffer.get_low_latency_rdma_size_hint(
            max_tokens, hidden, group.size(), num_experts), num_rdma_bytes)
    qps = {(True, False): num_sms, (False, True): num_experts // group.size(),
           (True, True): max(num_sms, num_experts // group.size())}[(normal, low_latency)]
    return epcomm.Buffer(group, num_nvl_bytes, num_rdma_bytes, low_latency_mode=low_latency,
                         num_qps_per_rank=qps, allow_mnnvl=True)


def _sglang_normal_round(buffer, configs, inputs, num_experts, async_finish, deepgemm):
    dispatch_config, combine_config, _ = configs
    topk_ids = inputs["topk_idx"].to(torch.int64)
    previous_event = epcomm.Buffer.capture() if async_finish else None
    per_rank, per_rdma_rank, per_expert, in_rank, previous_event = buffer.get_dispatch_layout(
        topk_ids, num_experts, previous_event=previous_event, async_finish=async_finish,
        allocate_on_comm_stream=previous_event is not None)
    recv_x, recv_ids, recv_weights, counts, handle, event = buffer.dispatch(
        inputs["x"], topk_idx=topk_ids, topk_weights=inputs["topk_weights"],
        num_tokens_per_rank=per_rank, num_tokens_per_rdma_rank=per_rdma_rank,
        is_token_in_rank=in_rank, num_tokens_per_expert=per_expert,
        previous_event=previous_event, async_finish=async_finish,
        allocate_on_comm_stream=(previous_event is not None) and async_finish,
        expert_alignment=128 if deepgemm else 1, config=dispatch_config)
    event.current_stream_wait() if async_finish else ()
    y = _weighted_expert_rows(recv_x, recv_weights)
    previous_event = epcomm.Buffer.capture() if async_finish else None
    combined_x, _, event = buffer.combine(y, handle, async_finish=async_finish,
                                          previous_event=previous_event,
                                          allocate_on_comm_stream=previous_event is not None,
                                          config=combine_config)
    event.current_stream_wait() if async_finish else ()
    return dict(per_rank=per_rank, per_expert=per_expert, in_rank=in_rank, recv_x=recv_x,
                recv_topk_idx=recv_ids, recv_topk_weights=recv_weights, counts=counts, y=y,
                combined_x=combined_x, x=inputs["x"], topk_idx=topk_ids,
                topk_weights=inputs["topk_weights"])


SGLANG_JSON = {  # a --deepep-config file; its SM count differs from Buffer.num_sms on purpose
    "normal_dispatch": {"num_sms": 24, "num_max_nvl_chunked_send_tokens": 16,
                        "num_max_nvl_chunked_recv_tokens": 256,
                        "num_max_rdma_chunked_send_tokens": 6,
                        "num_max_rdma_chunked_recv_tokens": 128},
    "normal_combine": {"num_sms": 24, "num_max_nvl_chunked_send_tokens": 6,
                       "num_max_nvl_chunked_recv_tokens": 256,
                       "num_max_rdma_chunked_send_tokens": 6,
                       "num_max_rdma_chunked_recv_tokens": 128},
}


@pytest.mark.parametrize("json_config, async_finish, deepgemm", [
    (None, False, False), (None, True, True), (SGLANG_JSON, True, False)],
    ids=["defaults", "async_deepgemm_alignment", "json_config_async"])
def test_sglang_normal_dispatcher(json_config, async_finish, deepgemm):
    case = Case(2, 30, 128, 4, 8, routing="skewed", seed=51)

    def body(rank, group):
        configs = _sglang_configs(json_config)
        buffer = _sglang_buffer(group, case.hidden, 2, True, False, configs)
        out = _sglang_normal_round(buffer, configs, inputs_for(case, rank), case.num_experts,
                                   async_finish, deepgemm)
        buffer.destroy()
        return out
    _check_high_throughput(case, run_on_threads(2, body), alignment=128 if deepgemm else 1)


def _sglang_low_latency_round(buffer, case, rank, micro, return_recv_hook):
    inputs = ll_inputs(case, rank, micro)
    topk_ids = inputs["topk_idx"].to(torch.int64)
    recv_x, recv_count, handle, event, hook = buffer.low_latency_dispatch(
        inputs["x"], topk_ids, case.max_tokens, case.num_experts, use_fp8=case.fp8,
        async_finish=not return_recv_hook, return_recv_hook=return_recv_hook)
    hook() if return_recv_hook else event.current_stream_wait()
    record = _record_dispatch(recv_x, recv_count, handle, case.fp8)  # masked_m = recv_count
    y = ll_expert_output(case, rank, micro)
    combined, event, hook = buffer.low_latency_combine(
        x=y, topk_idx=topk_ids, topk_weights=inputs["topk_weights"], handle=handle,
        async_finish=not return_recv_hook, return_recv_hook=return_recv_hook)
    hook() if return_recv_hook else event.current_stream_wait()
    return dict(record, y=y, combined_x=_np_bits(combined).copy())


@pytest.mark.parametrize("fp8, return_recv_hook", [(False, True), (True, False)])
def test_sglang_low_latency_dispatcher(fp8, return_recv_hook):
    case = LLCase(2, 6, 8, 256, 4, 8, fp8=fp8, seed=61)

    def body(rank, group):
        configs = _sglang_configs(None)
        buffer = _sglang_buffer(group, case.hidden, 1 if fp8 else 2, False, True, configs,
                                case.max_tokens, case.num_experts)
        out = [_sglang_low_latency_round(buffer, case, rank, mb, return_recv_hook)
               for mb in range(2)]
        buffer.destroy()
        return out
    got = run_on_threads(2, body)
    xs, ids, weights = _ll_model_inputs(case, 2)
    _check_low_latency(case, got, ids, weights, xs)


def test_sglang_auto_mode_moves_between_normal_and_low_latency_calls():
    """DeepEPMode.AUTO: one Buffer sized for both; a normal (prefill) round, then
    clean_low_latency_buffer and a low-latency (decode) round, then normal again."""
    ht = Case(2, 16, 256, 4, 8, routing="uniform", seed=71)
    ll = LLCase(2, 6, 8, 256, 4, 8, seed=72)

    def body(rank, group):
        configs = _sglang_configs(None)
        buffer = _sglang_buffer(group, ht.hidden, 2, True, True, configs, ll.max_tokens,
                                ll.num_experts)
        first = _sglang_normal_round(buffer, configs, inputs_for(ht, rank), ht.num_experts,
                                     False, False)
        buffer.clean_low_latency_buffer(ll.max_tokens, ll.hidden, ll.num_experts)
        decode = _sglang_low_latency_round(buffer, ll, rank, 0, True)
        again = _sglang_normal_round(buffer, configs, inputs_for(ht, rank), ht.num_experts,
                                     False, False)
        buffer.destroy()
        return first, decode, again
    got = run_on_threads(2, body)
    _check_high_throughput(ht, [g[0] for g in got], alignment=1)
    _check_high_throughput(ht, [g[2] for g in got], alignment=1)
    xs, ids, weights = _ll_model_inputs(ll, 1)
    _check_low_latency(ll, [[g[1]] for g in got], ids, weights, xs)


@pytest.mark.parametrize("fp8", [False, True])
def test_two_overlapped_micro_batches_match_the_numpy_model(fp8):
    """The GPU suite's dual-batch pattern (run_overlapped) on the host backend: both
    micro-batches dispatched, then both combined; each equals the numpy model alone."""
    cases = [Case(2, 11 + 4 * mb, 128, 3, 8, routing="with_holes", fp8=fp8, cached=mb == 1,
                  with_config=True, seed=60 + mb + 2 * fp8) for mb in (0, 1)]

    def body(rank, group):
        buffer = epcomm.Buffer(group, max_tokens_per_rank=32)
        try:
            return run_overlapped(buffer, cases, rank, torch.device("cpu"))
        finally:
            buffer.destroy()
    got = run_on_threads(2, body)
    for case_index, case in enumerate(cases):
        want = expected_round(case)
        for rank in range(2):
            compare_round(case, rank, got[rank][case_index], want[rank])
