"""DeepEP's Config (positional order, keyword names, defaults, checks), the recommended configs
DeepEP tabulates per rank count, and how a call's config.num_sms meets the SM count epcomm fixes
per communicator."""
import pytest
import torch

import epcomm
from helpers.runner import run_on_threads


def test_set_num_sms_sets_the_class_attribute():
    before = epcomm.Buffer.num_sms
    try:
        epcomm.Buffer.set_num_sms(24)
        assert epcomm.Buffer.num_sms == 24
        assert epcomm.Buffer.get_dispatch_config(8).num_sms == 24
    finally:
        epcomm.Buffer.set_num_sms(before)


# ---- Config and DeepEP's tables ---------------------------------------------------------------

# (rank count): (nvl send, nvl receive, rdma send, rdma receive) as DeepEP's get_*_config lists
# them, before DeepEP's Config rounds the rdma receive count up to a multiple of the send count.
DEEPEP_DISPATCH = {2: (24, 256, 6, 128), 4: (6, 256, 6, 128), 8: (6, 256, 6, 128),
                   16: (36, 288, 20, 128), 24: (32, 288, 8, 128), 32: (32, 288, 8, 128),
                   48: (32, 288, 8, 128), 64: (32, 288, 8, 128), 96: (20, 480, 12, 128),
                   128: (20, 560, 12, 128), 144: (32, 720, 12, 128), 160: (28, 720, 12, 128)}
DEEPEP_COMBINE = {2: (10, 256, 6, 128), 4: (9, 256, 6, 128), 8: (4, 256, 6, 128),
                  16: (4, 288, 12, 128), 24: (1, 288, 8, 128), 32: (1, 288, 8, 128),
                  48: (1, 288, 8, 128), 64: (1, 288, 8, 128), 96: (1, 480, 8, 128),
                  128: (1, 560, 8, 128), 144: (2, 720, 8, 128), 160: (2, 720, 8, 128)}


def _chunks(config: epcomm.Config):
    return (config.num_max_nvl_chunked_send_tokens, config.num_max_nvl_chunked_recv_tokens,
            config.num_max_rdma_chunked_send_tokens, config.num_max_rdma_chunked_recv_tokens)


def _rounded(chunks):
    nvl_send, nvl_recv, rdma_send, rdma_recv = chunks
    return nvl_send, nvl_recv, rdma_send, -(-rdma_recv // rdma_send) * rdma_send


@pytest.mark.parametrize("getter, table", [("get_dispatch_config", DEEPEP_DISPATCH),
                                           ("get_combine_config", DEEPEP_COMBINE)])
def test_recommended_configs_are_deepeps(getter, table):
    for num_ranks, chunks in table.items():
        config = getattr(epcomm.Buffer, getter)(num_ranks)
        assert config.num_sms == epcomm.Buffer.num_sms
        assert _chunks(config) == _rounded(chunks), (getter, num_ranks)
    # A rank count DeepEP does not list (it asserts): epcomm runs it, with Config's defaults.
    assert _chunks(getattr(epcomm.Buffer, getter)(3)) == _chunks(epcomm.Config())
    with pytest.raises(ValueError, match="num_ranks = 0"):
        getattr(epcomm.Buffer, getter)(0)


def test_config_positional_order_defaults_and_checks():
    config = epcomm.Config(7, 5, 100, 4, 30)
    assert config.num_sms == 7 and _chunks(config) == (5, 100, 4, 32)  # 30 rounded up to 4s
    assert _chunks(epcomm.Config()) == (6, 256, 6, 258)
    keywords = dict(num_sms=3, num_max_nvl_chunked_send_tokens=2,
                    num_max_nvl_chunked_recv_tokens=9, num_max_rdma_chunked_send_tokens=1,
                    num_max_rdma_chunked_recv_tokens=2)
    assert _chunks(epcomm.Config(**keywords)) == (2, 9, 1, 2)  # SGLang passes a JSON dict
    for args, message in (((20, 0), "num_max_nvl_chunked_send_tokens = 0"),
                          ((20, 8, 8), "must be less than num_max_nvl_chunked_recv_tokens"),
                          ((20, 6, 256, 5, 5), "at most half of num_max_rdma_chunked_recv"),
                          ((0,), "num_sms = 0")):
        with pytest.raises(ValueError, match=message):
            epcomm.Config(*args)
    assert epcomm.Config().get_rdma_buffer_size_hint(7168 * 2, 8) == 0
    assert epcomm.Config().get_nvl_buffer_size_hint(7168 * 2, 8) > 0


def test_one_sm_count_per_communicator_from_its_first_call():
    """SGLang passes its own Config (here 24 SMs, not Buffer.num_sms) to dispatch and combine:
    the communicator takes the first call's count for both; config=None uses it too."""
    def body(rank, group):
        buffer = epcomm.Buffer(group, max_tokens_per_rank=8)
        x = torch.randn(4, 64).to(torch.bfloat16)
        args = dict(topk_idx=torch.tensor([[0, 3], [1, -1], [2, 2], [-1, -1]]),
                    num_tokens_per_expert=torch.zeros(4, dtype=torch.int32))
        config = epcomm.Config(epcomm.Buffer.num_sms + 4)
        recv_x, _, _, _, handle, _ = buffer.dispatch(x, config=config, **args)
        buffer.combine(recv_x, handle, config=epcomm.Config(config.num_sms))
        recv_x, _, _, _, handle, _ = buffer.dispatch(x, **args)  # config=None: the same count
        with pytest.raises(ValueError, match=f"config.num_sms = {epcomm.Buffer.num_sms}, but .* "
                                             f"created with {config.num_sms} SMs"):
            buffer.combine(recv_x, handle, config=epcomm.Buffer.get_combine_config(2))
        combined, _, _ = buffer.combine(recv_x, handle)
        buffer.destroy()
        return combined
    run_on_threads(2, body)
