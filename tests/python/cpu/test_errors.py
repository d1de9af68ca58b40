"""Bad input raises a clear error naming the argument, before anything is sent."""
import pytest
import torch

import _epcomm
import epcomm
from helpers.runner import run_on_threads

T, H, K, E = 6, 64, 2, 4


@pytest.fixture
def buffer():
    """A one-rank Buffer on the host backend (no peer to keep in step with)."""
    buffer = epcomm.Buffer(epcomm.make_thread_groups(1)[0], max_tokens_per_rank=8)
    yield buffer
    buffer.destroy()


def inputs(tokens: int = T, topk: int = K):
    x = torch.randn(tokens, H).to(torch.bfloat16)
    topk_idx = torch.arange(tokens * topk).reshape(tokens, topk) % E
    return dict(x=x, topk_idx=topk_idx, topk_weights=torch.rand(tokens, topk),
                num_tokens_per_expert=torch.zeros(E, dtype=torch.int32))


def dispatch(buffer, **changes):
    args = inputs()
    args.update(changes)
    return buffer.dispatch(**args)


@pytest.mark.parametrize("changes, error, message", [
    (dict(x=torch.randn(T, H)), TypeError, "x has dtype torch.float32"),
    (dict(x=torch.randn(T * H).to(torch.bfloat16)), ValueError, r"x has shape \[384\]"),
    (dict(x=torch.randn(T, 12).to(torch.bfloat16)), ValueError, "x has hidden = 12"),
    (dict(x=torch.randn(H, T).to(torch.bfloat16).t()), ValueError, "x must be contiguous"),
    (dict(x=(torch.zeros(T, 128, dtype=torch.uint8), torch.ones(T, 2))), ValueError,
     r"x\[1\] has shape \[6, 2\]; expected \[6, 1\]"),
    (dict(x=(torch.zeros(T, 64, dtype=torch.uint8), torch.ones(T, 1))), ValueError,
     r"x\[0\] has hidden = 64"),
    (dict(x=(torch.zeros(T, 128, dtype=torch.int8), torch.ones(T, 1))), TypeError,
     r"x\[0\] has dtype torch.int8"),
    (dict(topk_idx=None), ValueError, "topk_idx is None"),
    (dict(topk_idx=torch.zeros(T, K)), TypeError, "topk_idx has dtype torch.float32"),
    (dict(topk_idx=torch.zeros(T + 1, K, dtype=torch.int64)), ValueError,
     r"topk_idx has shape \[7, 2\]; expected \[6, \*\]"),
    (dict(topk_weights=torch.rand(T, K + 1)), ValueError, r"topk_weights has shape \[6, 3\]"),
    (dict(topk_weights=torch.rand(T, K).double()), TypeError, "topk_weights has dtype"),
    (dict(num_tokens_per_expert=None), ValueError, "num_tokens_per_expert is None"),
    (dict(num_tokens_per_expert=torch.zeros(0, dtype=torch.int32)), ValueError,
     "num_tokens_per_expert's length = 0"),
    (dict(is_token_in_rank=torch.zeros(T, 2, dtype=torch.bool)), ValueError,
     r"is_token_in_rank has shape \[6, 2\]; expected \[6, 1\]"),
    (dict(num_tokens_per_rank=torch.zeros(1, dtype=torch.float32)), TypeError,
     "num_tokens_per_rank has dtype"),
    (dict(num_tokens_per_rdma_rank=torch.zeros(1, dtype=torch.int32)), ValueError,
     "num_tokens_per_rdma_rank must be None"),
    (dict(expert_alignment=0), ValueError, "expert_alignment = 0"),
    (dict(num_worst_tokens=-1), ValueError, "num_worst_tokens = -1"),
    (dict(config=epcomm.Config(num_sms=3), x=torch.randn(T, H).to(torch.bfloat16)), None, None),
    (dict(allocate_on_comm_stream=True), ValueError, "allocate_on_comm_stream=True needs"),
    (dict(config="fast"), TypeError, "config must be an epcomm.Config"),
])
def test_dispatch_names_the_bad_argument(buffer, changes, error, message):
    if error is None:  # a valid call, so that the parametrization also proves the baseline
        dispatch(buffer, **changes)
        return
    with pytest.raises(error, match=message):
        dispatch(buffer, **changes)


def test_capacity_and_topk_limits(buffer):
    with pytest.raises(ValueError, match="x has 9 tokens.*max_tokens_per_rank = 8"):
        buffer.dispatch(**inputs(tokens=9))
    buffer.dispatch(**inputs())  # creates the communicator with max_topk = max(8, K)
    with pytest.raises(ValueError, match="topk_idx has 9 columns.*max_topk = 8"):
        buffer.dispatch(**inputs(topk=9))


def test_expert_out_of_range_is_reported_by_the_library(buffer):
    args = inputs()
    args["topk_idx"][2, 1] = E
    with pytest.raises(epcomm.EpcommError, match=r"topk_idx\[2\]\[1\] = 4") as raised:
        buffer.dispatch(**args)
    assert raised.value.code == epcomm.ErrorCode.invalid_expert


def test_sm_count_is_fixed_at_creation(buffer):
    buffer.dispatch(**inputs(), config=epcomm.Config(num_sms=4))
    with pytest.raises(ValueError, match="config.num_sms = 5, but .* created with 4 SMs"):
        buffer.dispatch(**inputs(), config=epcomm.Config(num_sms=5))


def test_combine_checks_x_and_handle(buffer):
    recv_x, _, recv_weights, _, handle, _ = buffer.dispatch(**inputs())
    rows = handle.num_recv_rows
    with pytest.raises(ValueError, match=rf"x has shape \[{rows + 1}, 64\]"):
        buffer.combine(torch.zeros(rows + 1, H, dtype=torch.bfloat16), handle)
    with pytest.raises(TypeError, match="x has dtype torch.float32"):
        buffer.combine(recv_x.float(), handle)
    with pytest.raises(ValueError, match="topk_weights has shape"):
        buffer.combine(recv_x, handle, topk_weights=recv_weights[:, :1].contiguous())
    with pytest.raises(ValueError, match="handle must be a DispatchHandle from this Buffer"):
        buffer.combine(recv_x, ("a", "deepep", "tuple"))
    other = epcomm.Buffer(epcomm.make_thread_groups(1)[0], max_tokens_per_rank=8)
    with pytest.raises(ValueError, match="handle must be a DispatchHandle from this Buffer"):
        other.combine(recv_x, handle)
    # Two newer dispatches while this one awaits its combine: the first takes the Buffer's
    # second pool, the second reuses this one's.
    buffer.dispatch(**inputs())
    buffer.dispatch(**inputs())
    with pytest.raises(epcomm.EpcommError, match="latest dispatch") as raised:
        buffer.combine(recv_x, handle)
    assert raised.value.code == epcomm.ErrorCode.stale_handle


def test_cached_dispatch_checks(buffer):
    args = inputs()
    _, _, _, _, handle, _ = buffer.dispatch(**args)
    with pytest.raises(ValueError, match="topk_idx and topk_weights must be None"):
        buffer.dispatch(args["x"], handle=handle, topk_idx=args["topk_idx"])
    with pytest.raises(ValueError, match=r"x is \(6, 128\) of torch.uint8; .* rows of bf16"):
        buffer.dispatch((torch.zeros(T, 128, dtype=torch.uint8), torch.ones(T, 1)), handle=handle)
    with pytest.raises(ValueError, match=r"x is \(5, 64\)"):
        buffer.dispatch(args["x"][:5], handle=handle)


def test_buffer_arguments():
    group = epcomm.make_thread_groups(1)[0]
    with pytest.raises(ValueError, match="num_nvl_bytes = 0 and no max_tokens_per_rank"):
        epcomm.Buffer(group)
    with pytest.raises(ValueError, match="algorithm = 'tree'"):
        epcomm.Buffer(group, 10**6, algorithm="tree")
    with pytest.raises(ValueError, match="max_topk = 0"):
        epcomm.Buffer(group, 10**6, max_topk=0)
    with pytest.raises(ValueError, match="new_num_sms = 0"):
        epcomm.Buffer.set_num_sms(0)
    tiny = epcomm.Buffer(group, num_nvl_bytes=100)
    with pytest.raises(ValueError, match="num_nvl_bytes = 100 holds no token"):
        tiny.dispatch(**inputs())


def test_destroyed_buffer_refuses_calls(buffer):
    buffer.destroy()
    with pytest.raises(RuntimeError, match="destroyed"):
        buffer.dispatch(**inputs())


def test_cpu_tensors_need_thread_ranks():
    class OtherProcesses(_epcomm.Bootstrap):  # a one-rank group of "processes"
        def __init__(self):
            super().__init__(0, 1, False)

        def all_gather(self, data):
            return data

        def barrier(self):
            pass

    buffer = epcomm.Buffer(OtherProcesses(), max_tokens_per_rank=8)
    with pytest.raises(ValueError, match="CPU tensors run epcomm's host reference backend"):
        buffer.dispatch(**inputs())


def test_ranks_that_disagree_fail_together():
    def body(rank, group):
        buffer = epcomm.Buffer(group, max_tokens_per_rank=8)
        args = inputs()
        if rank == 1:
            args["x"] = torch.randn(T, 2 * H).to(torch.bfloat16)
        with pytest.raises(ValueError, match="ranks disagree .*: hidden = "):
            buffer.dispatch(**args)
    run_on_threads(2, body)
