"""Runs one rank's side of a test case through epcomm.Buffer and collects every output on the
host, so CPU (host backend) and CUDA runs, and the numpy reference, can be compared bit for bit.
"""
import threading
from typing import Callable, Dict, List

import torch

import epcomm

from .workload import Case, expert_output, fp8_view, inputs_for


def _x_arg(case: Case, x: torch.Tensor, scales, device: torch.device):
    if case.fp8:
        return (fp8_view(x).to(device), scales.to(device))
    return x.to(device)


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """Same-size integer view, so comparisons are bitwise (NaN, -0.0 included)."""
    tensor = tensor.detach().cpu()
    by_size = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return tensor.view(by_size[tensor.element_size()])


def _record_recv_x(out: Dict, key: str, recv_x) -> None:
    if isinstance(recv_x, tuple):
        out[key] = _bits(recv_x[0])
        out[key + "_scales"] = _bits(recv_x[1])
    else:
        out[key] = _bits(recv_x)


def _options(case: Case, cuda: bool) -> Dict:
    """The case's stream options for the next call, used as a DeepEP caller would: an event
    captured after everything the call reads was issued on the current stream; with
    case.with_config, the Config argument too (the Buffer's SM count)."""
    opts = {"config": epcomm.Config(epcomm.Buffer.num_sms)} if case.with_config else {}
    if not cuda:
        return opts
    opts.update(async_finish=case.async_finish,
                allocate_on_comm_stream=case.allocate_on_comm_stream)
    if case.previous_event:
        opts["previous_event"] = epcomm.Buffer.capture()
    return opts


def _wait(case: Case, cuda: bool, event: epcomm.EventOverlap) -> None:
    if cuda and case.async_finish:
        assert event.event is not None
        event.current_stream_wait()


def _dispatch_part(buffer: epcomm.Buffer, case: Case, rank: int, device: torch.device):
    """Layout, dispatch and (case.cached) a cached dispatch: (outputs so far, what the
    combine needs)."""
    cuda = device.type == "cuda"
    inputs = inputs_for(case, rank)
    topk_idx = inputs["topk_idx"].to(device)
    weights = inputs["topk_weights"]
    weights = weights.to(device) if weights is not None else None
    x = _x_arg(case, inputs["x"], inputs["x_scales"], device)
    layout_options = {k: v for k, v in _options(case, cuda).items() if k != "config"}
    per_rank, rdma, per_expert, in_rank, event = buffer.get_dispatch_layout(
        topk_idx, case.num_experts, **layout_options)
    assert rdma is None
    _wait(case, cuda, event)
    recv_x, recv_idx, recv_weights, counts, handle, event = buffer.dispatch(
        x, num_tokens_per_rank=per_rank, is_token_in_rank=in_rank,
        num_tokens_per_expert=per_expert, topk_idx=topk_idx, topk_weights=weights,
        expert_alignment=case.expert_alignment, num_worst_tokens=case.num_worst_tokens,
        **_options(case, cuda))
    _wait(case, cuda, event)
    out = {"num_tokens_per_rank": per_rank.cpu(), "num_tokens_per_expert": per_expert.cpu(),
           "is_token_in_rank": in_rank.cpu(), "counts": counts, "num_recv": handle.num_recv}
    if case.cached:
        x2 = _x_arg(case, inputs["x2"], inputs["x2_scales"], device)
        cached_x, none_idx, none_weights, none_counts, none_handle, event = buffer.dispatch(
            x2, handle=handle, **_options(case, cuda))
        assert (none_idx, none_weights, none_counts, none_handle) == (None,) * 4
        _wait(case, cuda, event)
        _record_recv_x(out, "cached_x", cached_x)
    return out, (handle, recv_x, recv_idx, recv_weights, weights)


def _combine_part(buffer: epcomm.Buffer, case: Case, rank: int, device: torch.device,
                  out: Dict, state) -> Dict:
    cuda = device.type == "cuda"
    handle, recv_x, recv_idx, recv_weights, weights = state
    y = expert_output(case, rank, handle.num_recv_rows).to(device)
    combined_x, combined_weights, event = buffer.combine(
        y, handle, topk_weights=recv_weights if weights is not None else None,
        **_options(case, cuda))
    _wait(case, cuda, event)
    if cuda:
        torch.cuda.current_stream().synchronize()
    _record_recv_x(out, "recv_x", recv_x)
    out["recv_topk_idx"] = recv_idx.cpu()
    out["recv_topk_weights"] = _bits(recv_weights)
    out["combined_x"] = _bits(combined_x)
    out["combined_topk_weights"] = (_bits(combined_weights) if combined_weights is not None
                                    else None)
    return out


def run_round(buffer: epcomm.Buffer, case: Case, rank: int, device: torch.device) -> Dict:
    """Layout, dispatch (and a cached dispatch when case.cached) and combine of one round.
    Returns the outputs as CPU integer tensors (bit patterns) plus the plain values."""
    out, state = _dispatch_part(buffer, case, rank, device)
    return _combine_part(buffer, case, rank, device, out, state)


def run_overlapped(buffer: epcomm.Buffer, cases: List[Case], rank: int,
                   device: torch.device) -> List[Dict]:
    """Every case's dispatch first, then every combine in the same order (vLLM's dual-batch
    overlap for two cases): one run_round output per case."""
    parts = [_dispatch_part(buffer, case, rank, device) for case in cases]
    return [_combine_part(buffer, case, rank, device, out, state)
            for case, (out, state) in zip(cases, parts)]


def run_case(buffer: epcomm.Buffer, case: Case, rank: int, device: torch.device) -> List[Dict]:
    return [run_round(buffer, case.round(i), rank, device) for i in range(case.rounds)]


def run_on_threads(num_ranks: int, body: Callable[[int, epcomm.ThreadGroup], object],
                   timeout_ms: int = 30000) -> List[object]:
    """Runs body(rank, group) on one thread per rank of a fresh thread group; re-raises the
    first exception any thread raised."""
    groups = epcomm.make_thread_groups(num_ranks, timeout_ms)
    results: List[object] = [None] * num_ranks
    errors: List[BaseException] = []

    def run(rank: int) -> None:
        try:
            results[rank] = body(rank, groups[rank])
        except BaseException as error:  # handed to the caller below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(num_ranks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def host_reference(case: Case, **buffer_kwargs) -> List[List[Dict]]:
    """Every rank's outputs from the C++ host reference backend (ranks as threads, CPU);
    buffer_kwargs go to each Buffer (ranks_per_domain: the combine's domain order)."""
    def body(rank: int, group: epcomm.ThreadGroup):
        buffer = epcomm.Buffer(group, max_tokens_per_rank=case.max_tokens_per_rank,
                               **buffer_kwargs)
        try:
            return run_case(buffer, case, rank, torch.device("cpu"))
        finally:
            buffer.destroy()
    return run_on_threads(case.num_ranks, body)
