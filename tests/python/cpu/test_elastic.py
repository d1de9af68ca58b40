"""The elastic low-latency mode's calls (enable_shrink, the mask buffer) and the wait-cost stats
arguments, on the host backend: their checks, and masks kept before the low-latency buffers
exist. Outputs under masks are checked against the numpy model in test_low_latency.py."""
import pytest
import torch

import epcomm
from helpers.runner import run_on_threads

T, H, K, E, M = 3, 128, 2, 4, 4


def _buffer(num_ranks_group=None, **keywords):
    group = num_ranks_group or epcomm.make_thread_groups(1)[0]
    return epcomm.Buffer(group, low_latency_mode=True, **keywords)


def test_masks_need_enable_shrink_as_in_deepep():
    buffer = _buffer()
    for call in (lambda: buffer.low_latency_update_mask_buffer(0, True),
                 lambda: buffer.low_latency_query_mask_buffer(torch.zeros(1, dtype=torch.int32)),
                 buffer.low_latency_clean_mask_buffer):
        with pytest.raises(ValueError, match="needs enable_shrink=True"):
            call()
    off = epcomm.Buffer(epcomm.make_thread_groups(1)[0], 10**6, enable_shrink=True)
    with pytest.raises(ValueError, match="low_latency_mode"):
        off.low_latency_update_mask_buffer(0, True)


def test_mask_arguments_are_checked():
    buffer = _buffer(enable_shrink=True)
    for bad in (-1, 1, True, 0.0):
        with pytest.raises(ValueError, match=f"rank_to_mask = {bad!r}"):
            buffer.low_latency_update_mask_buffer(bad, True)
    with pytest.raises(ValueError, match="mask_status"):
        buffer.low_latency_query_mask_buffer(torch.zeros(2, dtype=torch.int32))
    with pytest.raises(TypeError, match="mask_status has dtype torch.int64"):
        buffer.low_latency_query_mask_buffer(torch.zeros(1, dtype=torch.int64))


def test_masks_set_before_the_first_dispatch_are_kept_and_apply_to_it():
    def body(rank, group):
        buffer = _buffer(group, enable_shrink=True)
        status = torch.full((2,), 9, dtype=torch.int32)
        buffer.low_latency_update_mask_buffer(1 - rank, True)
        buffer.low_latency_query_mask_buffer(status)
        assert status.tolist() == [int(p != rank) for p in range(2)]
        x = torch.ones(T, H, dtype=torch.bfloat16)
        topk_idx = torch.tensor([[0, 3], [1, 2], [3, -1]])  # experts 0, 1 on rank 0; 2, 3 on 1
        _, count, _, _, _ = buffer.low_latency_dispatch(x, topk_idx, M, E, use_fp8=False)
        # Each rank masks the other: each expert receives only its own rank's tokens.
        want = {0: [1, 1], 1: [1, 2]}[rank]
        assert count.tolist() == want
        buffer.low_latency_query_mask_buffer(status)
        assert status.tolist() == [int(p != rank) for p in range(2)]
        buffer.low_latency_clean_mask_buffer()
        buffer.low_latency_query_mask_buffer(status)
        assert status.tolist() == [0, 0]
        buffer.destroy()

    run_on_threads(2, body)


def test_wait_cost_stats_are_checked_and_left_unchanged_on_the_host():
    buffer = _buffer()
    x = torch.ones(T, H, dtype=torch.bfloat16)
    topk_idx = torch.zeros(T, K, dtype=torch.int64)
    for bad, error in ((torch.zeros(2, dtype=torch.int64), ValueError),
                       (torch.zeros(1, dtype=torch.int32), TypeError)):
        with pytest.raises(error, match="dispatch_wait_recv_cost_stats"):
            buffer.low_latency_dispatch(x, topk_idx, M, E, dispatch_wait_recv_cost_stats=bad)
    stats = torch.tensor([5], dtype=torch.int64)
    recv_x, _, handle, _, _ = buffer.low_latency_dispatch(
        x, topk_idx, M, E, use_fp8=False, dispatch_wait_recv_cost_stats=stats)
    with pytest.raises(ValueError, match="combine_wait_recv_cost_stats"):
        buffer.low_latency_combine(recv_x, topk_idx, torch.ones(T, K), handle,
                                   combine_wait_recv_cost_stats=torch.zeros(3, dtype=torch.int64))
    buffer.low_latency_combine(recv_x, topk_idx, torch.ones(T, K), handle,
                               combine_wait_recv_cost_stats=stats)
    assert stats.tolist() == [5]


def test_ue8m0_needs_a_hidden_size_of_whole_int32_words():
    buffer = _buffer()
    x = torch.ones(T, 256, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="multiple of 512"):
        buffer.low_latency_dispatch(x, torch.zeros(T, K, dtype=torch.int64), M, E,
                                    use_fp8=True, round_scale=True, use_ue8m0=True)
