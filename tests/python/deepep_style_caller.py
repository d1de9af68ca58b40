"""A caller written against DeepEP's intranode high-throughput API (deep_ep.Buffer): layout,
dispatch of bf16 and fp8 rows, cached dispatch, combine, worst-case sizes, events, and a short
timing. tests/python/gpu/test_scripts.py runs it on epcomm with one change, the import line
(`import epcomm as deep_ep`), and nothing else.

Launch: torchrun --nproc_per_node N deepep_style_caller.py  (one GPU per rank, or several
ranks per GPU under MPS).
"""
import os
import time

import torch
import torch.distributed as dist

import deep_ep


def init_dist():
    rank, num_ranks = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    # NCCL wants a GPU of its own per rank; ranks sharing GPUs talk over gloo.
    backend = "nccl" if torch.cuda.device_count() >= num_ranks else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=num_ranks)
    return rank, num_ranks, dist.new_group(list(range(num_ranks)))


def group_sum(tensor, group):
    """All-reduce (sum) that works on both NCCL and gloo groups."""
    on_cpu = dist.get_backend(group) == "gloo"
    buf = tensor.cpu() if on_cpu else tensor.clone()
    dist.all_reduce(buf, group=group)
    return buf.to(tensor.device)


def per_token_cast_to_fp8(x):
    """fp8 e4m3 rows with one fp32 scale per 128 elements."""
    num_tokens, hidden = x.shape
    blocks = x.float().view(num_tokens, hidden // 128, 128)
    amax = blocks.abs().amax(dim=2, keepdim=True).clamp(min=1e-4)
    fp8 = (blocks * (448.0 / amax)).to(torch.float8_e4m3fn).view(num_tokens, hidden)
    return fp8, (amax / 448.0).view(num_tokens, hidden // 128)


def fp8_to_bf16(x_fp8, scales):
    num_tokens, hidden = x_fp8.shape
    blocks = x_fp8.float().view(num_tokens, hidden // 128, 128) * scales.unsqueeze(2)
    return blocks.view(num_tokens, hidden).to(torch.bfloat16)


def check_received(rank, num_ranks, group, recv_x, recv_topk_idx, recv_counts,
                   num_tokens_per_rank, num_tokens_per_expert, expert_alignment):
    experts_per_rank = num_tokens_per_expert.numel() // num_ranks
    num_recv = int(group_sum(num_tokens_per_rank, group)[rank])
    assert recv_x.size(0) == num_recv, (recv_x.size(0), num_recv)
    local = recv_topk_idx[recv_topk_idx >= 0]
    assert local.numel() == 0 or int(local.max()) < experts_per_rank
    assert bool((recv_topk_idx >= 0).any(dim=1).all()), "a received token with no local expert"
    expected = group_sum(num_tokens_per_expert, group)[rank * experts_per_rank:
                                                       (rank + 1) * experts_per_rank]
    aligned = [(int(c) + expert_alignment - 1) // expert_alignment * expert_alignment
               for c in expected]
    assert recv_counts == aligned, (recv_counts, aligned)
    # The last column carries the source rank: rows arrive grouped by source, in rank order.
    sources = recv_x[:, -1].float()
    assert bool((sources[1:] >= sources[:-1]).all()), "rows are not in source-rank order"


def main():
    rank, num_ranks, group = init_dist()
    num_tokens, hidden, num_topk, num_experts = 1024, 7168, 8, 8 * num_ranks
    torch.manual_seed(rank)
    x = torch.randn(num_tokens, hidden, device="cuda").to(torch.bfloat16)
    x[:, -128:] = rank  # the whole last fp8 block, so it survives the fp8 cast
    scores = torch.randn(num_tokens, num_experts, device="cuda").abs() + 1
    topk_weights, topk_idx = torch.topk(scores, num_topk, dim=-1, sorted=False)
    topk_idx[torch.rand(num_tokens, num_topk, device="cuda") < 0.05] = -1

    deep_ep.Buffer.set_num_sms(24)
    buffer = deep_ep.Buffer(group, int(1e9), explicitly_destroy=True)

    num_tokens_per_rank, num_tokens_per_rdma_rank, num_tokens_per_expert, is_token_in_rank, event = \
        buffer.get_dispatch_layout(topk_idx, num_experts, previous_event=buffer.capture(),
                                   async_finish=True)
    event.current_stream_wait()
    ref_in_rank = torch.zeros(num_tokens, num_ranks, dtype=torch.bool, device="cuda")
    for k in range(num_topk):
        valid = topk_idx[:, k] >= 0
        ref_in_rank[valid.nonzero().squeeze(1), topk_idx[valid, k] // (num_experts // num_ranks)] = True
    assert torch.equal(is_token_in_rank, ref_in_rank)
    assert torch.equal(num_tokens_per_rank, ref_in_rank.sum(dim=0).int())
    assert int(num_tokens_per_expert.sum()) == int((topk_idx >= 0).sum())

    layout = dict(num_tokens_per_rank=num_tokens_per_rank,
                  num_tokens_per_rdma_rank=num_tokens_per_rdma_rank,
                  is_token_in_rank=is_token_in_rank, num_tokens_per_expert=num_tokens_per_expert)
    sent_to = is_token_in_rank.sum(dim=1, keepdim=True).float()
    for use_fp8 in (False, True):
        expert_alignment = 4 if use_fp8 else 1
        dispatch_x = per_token_cast_to_fp8(x) if use_fp8 else x
        recv_x, recv_topk_idx, recv_topk_weights, recv_counts, handle, event = buffer.dispatch(
            dispatch_x, topk_idx=topk_idx, topk_weights=topk_weights,
            expert_alignment=expert_alignment, config=buffer.get_dispatch_config(num_ranks),
            previous_event=buffer.capture(), async_finish=True, **layout)
        event.current_stream_wait()
        rows = fp8_to_bf16(*recv_x) if use_fp8 else recv_x
        check_received(rank, num_ranks, group, rows, recv_topk_idx, recv_counts,
                       num_tokens_per_rank, num_tokens_per_expert, expert_alignment)
        weights_here = recv_topk_weights[recv_topk_idx >= 0]
        assert bool((weights_here >= 1).all()) and bool((recv_topk_weights[recv_topk_idx < 0] == 0).all())

        if not use_fp8:  # the same routing again, without the layout step
            cached_x, _, _, _, _, event = buffer.dispatch(x, handle=handle, async_finish=True,
                                                          previous_event=buffer.capture())
            event.current_stream_wait()
            assert torch.equal(cached_x, recv_x)

        # Identity experts: each token comes back as its row times the ranks it reached.
        combined_x, combined_topk_weights, event = buffer.combine(
            rows, handle, topk_weights=recv_topk_weights,
            config=buffer.get_combine_config(num_ranks), previous_event=buffer.capture(),
            async_finish=True)
        event.current_stream_wait()
        # n equal bf16 rows add up exactly in fp32; the one rounding to bf16 matches.
        sent_rows = fp8_to_bf16(*dispatch_x) if use_fp8 else x
        assert torch.equal(combined_x, (sent_rows.float() * sent_to).to(torch.bfloat16))
        assert torch.equal(combined_topk_weights,
                           torch.where(topk_idx >= 0, topk_weights, torch.zeros_like(topk_weights)))

    # Worst-case sizes: no host sync (CUDA-graph friendly), padded outputs.
    num_worst_tokens = num_tokens * num_ranks
    recv_x, recv_topk_idx, _, recv_counts, handle, _ = buffer.dispatch(
        x, topk_idx=topk_idx, topk_weights=topk_weights, num_worst_tokens=num_worst_tokens,
        **layout)
    assert recv_x.size(0) == num_worst_tokens and recv_counts == []
    num_recv = int(group_sum(num_tokens_per_rank, group)[rank])
    assert int((recv_topk_idx >= 0).any(dim=1).sum()) == num_recv
    combined_x, _, _ = buffer.combine(recv_x, handle)
    assert torch.equal(combined_x, (x.float() * sent_to).to(torch.bfloat16))

    # A short timing, DeepEP style.
    torch.cuda.synchronize()
    iterations, start = 10, time.perf_counter()
    for _ in range(iterations):
        recv_x, _, _, _, handle, _ = buffer.dispatch(x, topk_idx=topk_idx,
                                                     topk_weights=topk_weights, **layout)
        buffer.combine(recv_x, handle)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / iterations
    if rank == 0:
        moved = 2 * int(is_token_in_rank.sum()) * hidden * 2
        print(f"dispatch + combine: {seconds * 1e6:.0f} us per iteration, "
              f"{moved / seconds / 1e9:.1f} GB/s from rank 0")

    buffer.destroy()
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        print("deepep_style_caller: all checks passed")


if __name__ == "__main__":
    main()
