"""get_dispatch_layout (PyTorch ops) against the numpy model and against the C++ host
reference's own layout call, plus its argument checks."""
import pytest
import torch

import _epcomm
import epcomm
from helpers import reference
from helpers.expect import assert_bits_equal
from helpers.runner import run_on_threads
from helpers.workload import ROUTINGS, Case, topk_idx_for

CASES = [Case(R, T, 64, K, E, routing=routing, index_dtype=dtype)
         for R, T, K, E in ((1, 7, 2, 4), (2, 0, 4, 8), (3, 50, 6, 12), (4, 97, 8, 32))
         for routing in ROUTINGS
         for dtype in (torch.int64, torch.int32)]


def _cpp_layout(case: Case):
    """Each rank's layout from the C++ host backend (a communicator per rank, as threads)."""
    def body(rank: int, group: epcomm.ThreadGroup):
        config = _epcomm.Config()
        config.num_experts, config.hidden = case.num_experts, case.hidden
        config.max_tokens_per_rank, config.max_topk = max(case.num_tokens, 1), case.num_topk
        config.index_type = (_epcomm.IndexType.int64 if case.index_dtype == torch.int64
                             else _epcomm.IndexType.int32)
        comm = _epcomm.Communicator.create(group.bootstrap, config, _epcomm.Backend.host)
        topk_idx = topk_idx_for(case, rank)
        per_rank = torch.empty(case.num_ranks, dtype=torch.int32)
        per_expert = torch.empty(case.num_experts, dtype=torch.int32)
        in_rank = torch.empty(case.num_tokens, case.num_ranks, dtype=torch.bool)
        comm.get_dispatch_layout(topk_idx.data_ptr(), case.num_tokens, case.num_topk,
                                 per_rank.data_ptr(), per_expert.data_ptr(),
                                 in_rank.data_ptr() if case.num_tokens else 0)
        return per_rank, per_expert, in_rank
    return run_on_threads(case.num_ranks, body)


@pytest.mark.parametrize("case", CASES, ids=Case.name)
def test_layout_matches_numpy_and_cpp(case: Case):
    groups = epcomm.make_thread_groups(case.num_ranks)
    cpp = _cpp_layout(case)
    for rank in range(case.num_ranks):
        buffer = epcomm.Buffer(groups[rank], max_tokens_per_rank=128)  # layout is local
        topk_idx = topk_idx_for(case, rank)
        per_rank, rdma, per_expert, in_rank, event = buffer.get_dispatch_layout(
            topk_idx, case.num_experts)
        assert rdma is None and event.event is None
        assert (per_rank.dtype, per_expert.dtype, in_rank.dtype) == (torch.int32, torch.int32,
                                                                     torch.bool)
        want = reference.layout(topk_idx.to(torch.int64).numpy(), case.num_experts,
                                case.num_ranks)
        for name, got, numpy_want, cpp_want in zip(
                ("num_tokens_per_rank", "num_tokens_per_expert", "is_token_in_rank"),
                (per_rank, per_expert, in_rank), want, cpp[rank]):
            dtype = bool if name == "is_token_in_rank" else "int32"
            assert_bits_equal(f"{name} vs numpy", got.numpy(), numpy_want.astype(dtype))
            assert_bits_equal(f"{name} vs C++", got.numpy(), cpp_want.numpy())


def test_layout_rejects_bad_arguments():
    buffer = epcomm.Buffer(epcomm.make_thread_groups(2)[0], max_tokens_per_rank=8)
    good = torch.tensor([[0, 3], [-1, 2]])
    with pytest.raises(ValueError, match=r"topk_idx\[1\]\[1\] = 4 is outside \[-1, 4\)"):
        buffer.get_dispatch_layout(torch.tensor([[0, 3], [-1, 4]]), 4)
    with pytest.raises(ValueError, match=r"topk_idx\[0\]\[0\] = -2"):
        buffer.get_dispatch_layout(torch.tensor([[-2, 3], [-1, 1]]), 4)
    with pytest.raises(ValueError, match="num_experts = 5"):
        buffer.get_dispatch_layout(good, 5)
    with pytest.raises(TypeError, match="topk_idx has dtype torch.float32"):
        buffer.get_dispatch_layout(good.float(), 4)
    with pytest.raises(ValueError, match=r"topk_idx has shape \[4\]"):
        buffer.get_dispatch_layout(good.reshape(-1), 4)
    with pytest.raises(ValueError, match="topk_idx must be contiguous"):
        buffer.get_dispatch_layout(good.t(), 4)
