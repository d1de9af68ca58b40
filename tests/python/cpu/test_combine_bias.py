"""combine(bias=...): one tensor or a pair, added to the sum of the rows in fp32 (rows, then
bias, then the pair's second) and rounded once; checked against a torch model on the host
backend, with values spread so that rounding before the biases changes bits."""
import pytest
import torch

import epcomm

T, H, E = 6, 128, 4


def _wide(shape, generator):
    """bf16 values over many binades and both signs."""
    mantissa = torch.rand(shape, generator=generator) + 1.0
    exponent = torch.randint(-12, 12, shape, generator=generator).float()
    sign = torch.randint(0, 2, shape, generator=generator).float() * 2 - 1
    return (sign * mantissa * torch.pow(2.0, exponent)).to(torch.bfloat16)


def _dispatched(generator, topk_idx):
    buffer = epcomm.Buffer(epcomm.make_thread_groups(1)[0], max_tokens_per_rank=8)
    x = _wide((T, H), generator)
    recv_x, _, _, _, handle, _ = buffer.dispatch(
        x, topk_idx=topk_idx, num_tokens_per_expert=torch.zeros(E, dtype=torch.int32))
    return buffer, x, recv_x, handle


@pytest.mark.parametrize("form", ["one", "first", "second", "both"])
def test_bias_is_added_in_fp32_before_the_one_rounding(form):
    generator = torch.Generator().manual_seed(11)
    topk_idx = torch.tensor([[0, 1], [2, -1], [-1, -1], [3, 0], [1, 2], [-1, -1]])
    buffer, x, recv_x, handle = _dispatched(generator, topk_idx)
    b0, b1 = _wide((T, H), generator), _wide((T, H), generator)
    bias = {"one": b0, "first": (b0, None), "second": (None, b1), "both": (b0, b1)}[form]
    combined, _, _ = buffer.combine(recv_x, handle, bias=bias)
    # One rank: every token sent somewhere comes back once; tokens 2 and 5 were sent nowhere.
    sent = (topk_idx >= 0).any(dim=1, keepdim=True).float()
    acc = x.float() * sent
    if form in ("one", "first", "both"):
        acc = acc + b0.float()
    if form in ("second", "both"):
        acc = acc + b1.float()
    want = acc.to(torch.bfloat16)
    assert torch.equal(combined.view(torch.int16), want.view(torch.int16))
    if form == "both":  # rounding the rows' sum first would differ somewhere for these values
        twice = ((x.float() * sent).to(torch.bfloat16).float() + b0.float()).to(
            torch.bfloat16).float() + b1.float()
        assert not torch.equal(twice.to(torch.bfloat16).view(torch.int16), want.view(torch.int16))
    buffer.destroy()


def test_a_bad_bias_is_named_and_leaves_the_handle_usable():
    generator = torch.Generator().manual_seed(12)
    topk_idx = torch.zeros(T, 2, dtype=torch.int64)
    buffer, x, recv_x, handle = _dispatched(generator, topk_idx)
    with pytest.raises(TypeError, match="bias has dtype torch.float32"):
        buffer.combine(recv_x, handle, bias=torch.zeros(T, H))
    with pytest.raises(ValueError, match=r"bias\[1\] has shape \[5, 128\]"):
        buffer.combine(recv_x, handle, bias=(None, torch.zeros(T - 1, H, dtype=torch.bfloat16)))
    with pytest.raises(TypeError, match="bias must be None, a torch.Tensor or a pair"):
        buffer.combine(recv_x, handle, bias=[None])
    with pytest.raises(ValueError, match="bias is a tuple of 3"):
        buffer.combine(recv_x, handle, bias=(None, None, None))
    combined, _, _ = buffer.combine(recv_x, handle)
    assert torch.equal(combined.view(torch.int16), x.view(torch.int16))
    buffer.destroy()
