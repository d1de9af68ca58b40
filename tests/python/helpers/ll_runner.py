"""Runs one rank's side of a low-latency case through epcomm.Buffer and copies every output to
the host, so CUDA runs, the host backend and the numpy model can be compared bit for bit."""
from typing import Dict, List, Optional

import torch

import epcomm

from .ll_workload import LLCase, ll_expert_output, ll_inputs
from .runner import _bits, run_on_threads


def _record_dispatch(recv_x, recv_count, handle: epcomm.LowLatencyHandle, fp8: bool) -> Dict:
    out = {"recv_count": recv_count.cpu().clone(), "recv_src": handle.recv_src.cpu().clone(),
           "layout_range": handle.layout_range.cpu().clone()}
    if fp8:
        assert isinstance(recv_x, tuple) and len(recv_x) == 2
        out["recv_x"], out["recv_scales"] = _bits(recv_x[0]).clone(), _bits(recv_x[1]).clone()
    else:
        assert isinstance(recv_x, torch.Tensor)
        out["recv_x"] = _bits(recv_x).clone()
    return out


def _check_wait_stats(case: LLCase, rank: int, device: torch.device, before: torch.Tensor,
                      after: torch.Tensor) -> None:
    """[2, R] dispatch and combine wait-cost stats after a round against before it: no entry
    decreases, a masked peer's entry and (host backend, no device waits) every entry stays."""
    for phase in range(2):
        for peer in range(case.num_ranks):
            was, now = int(before[phase, peer]), int(after[phase, peer])
            fixed = case.masks(rank, peer) or device.type != "cuda"
            assert now >= was and (not fixed or now == was), (
                f"{case.name()} rank {rank}: {('dispatch', 'combine')[phase]} wait stats of "
                f"rank {peer} went from {was} to {now}")


def run_ll_round(buffer: epcomm.Buffer, case: LLCase, rank: int, device: torch.device,
                 stats: torch.Tensor, options: Optional[Dict] = None) -> List[Dict]:
    """The case's micro-batches on this rank: every dispatch (with hooks, all sends first and
    then the receives), then every combine likewise. Returns one dict per micro-batch.
    `options`: more keywords for every low_latency_dispatch."""
    cuda = device.type == "cuda"
    wait_stats = None
    if case.wait_stats:  # [dispatch, combine] x R, from values the calls may only increase
        wait_stats = (torch.arange(2 * case.num_ranks, dtype=torch.int64) * 1000 + rank).reshape(
            2, case.num_ranks).to(device)
        before = wait_stats.cpu().clone()
    options = dict(options or {})
    if case.fp8:
        options.update(round_scale=case.round_scale, use_ue8m0=case.use_ue8m0)
    if wait_stats is not None:
        options["dispatch_wait_recv_cost_stats"] = wait_stats[0]
    async_finish = case.async_finish and cuda

    def wait(event: epcomm.EventOverlap) -> None:
        if async_finish:
            assert event.event is not None
            event.current_stream_wait()
        else:
            assert event.event is None

    def finish(hooks) -> None:
        for hook in hooks:
            assert callable(hook)
            hook()

    batches = [{k: v.to(device) for k, v in ll_inputs(case, rank, mb).items()}
               for mb in range(case.micro_batches)]
    dispatched, hooks = [], []
    for inputs in batches:
        recv_x, recv_count, handle, event, hook = buffer.low_latency_dispatch(
            inputs["x"], inputs["topk_idx"], case.max_tokens, case.num_experts,
            cumulative_local_expert_recv_stats=stats, use_fp8=case.fp8,
            async_finish=async_finish, return_recv_hook=case.hook, **options)
        assert (hook is not None) == case.hook
        wait(event)
        dispatched.append((recv_x, recv_count, handle))
        hooks.append(hook)
    if case.hook:
        finish(hooks)
    if cuda:
        torch.cuda.current_stream().synchronize()
    outputs = [_record_dispatch(*d, case.fp8) for d in dispatched]

    combined, hooks = [], []
    for mb, (inputs, (_, _, handle)) in enumerate(zip(batches, dispatched)):
        y = ll_expert_output(case, rank, mb).to(device)
        if case.zero_copy:  # the rows go into the Buffer's tensor; x is then not read
            buffer.get_next_low_latency_combine_buffer(handle).copy_(y)
            y = torch.full_like(y, 3.0)
        out = None
        if case.out_arg:
            out = torch.full((case.tokens_of(rank), case.hidden), 7.0, dtype=torch.bfloat16,
                             device=device)
        combined_x, event, hook = buffer.low_latency_combine(
            y, inputs["topk_idx"], inputs["topk_weights"], handle, async_finish=async_finish,
            return_recv_hook=case.hook, out=out, zero_copy=case.zero_copy,
            combine_wait_recv_cost_stats=None if wait_stats is None else wait_stats[1])
        assert (hook is not None) == case.hook
        assert out is None or combined_x is out
        wait(event)
        combined.append(combined_x)
        hooks.append(hook)
    if case.hook:
        finish(hooks)
    if cuda:
        torch.cuda.current_stream().synchronize()
    for output, combined_x in zip(outputs, combined):
        output["combined_x"] = _bits(combined_x).clone()
    if wait_stats is not None:
        _check_wait_stats(case, rank, device, before, wait_stats.cpu())
    return outputs


def run_ll_case(buffer: epcomm.Buffer, case: LLCase, rank: int, device: torch.device,
                options: Optional[Dict] = None) -> List[List[Dict]]:
    """Every round of the case; the last round's first micro-batch also carries "stats", the
    cumulative_local_expert_recv_stats accumulated over all of them."""
    stats = torch.zeros(case.experts_per_rank, dtype=torch.int32, device=device)
    if case.masked:  # the Buffer was made with enable_shrink=True
        for peer in range(case.num_ranks):
            buffer.low_latency_update_mask_buffer(peer, case.masks(rank, peer))
    rounds = [run_ll_round(buffer, case.round(i), rank, device, stats, options)
              for i in range(case.rounds)]
    rounds[-1][0]["stats"] = stats.cpu()
    return rounds


def host_ll_reference(case: LLCase) -> List[List[List[Dict]]]:
    """Every rank's outputs from the C++ host reference backend (ranks as threads, CPU)."""
    def body(rank: int, group: epcomm.ThreadGroup):
        buffer = epcomm.Buffer(group, low_latency_mode=True, enable_shrink=bool(case.masked))
        try:
            return run_ll_case(buffer, case, rank, torch.device("cpu"))
        finally:
            buffer.destroy()
    return run_on_threads(case.num_ranks, body)
