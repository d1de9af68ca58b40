"""DeepEP's smaller Buffer features that epcomm implements in Python: get_local_buffer_tensor
(against a numpy model of the bytes), capture and EventHandle, get_comm_stream."""
import numpy as np
import pytest
import torch

import epcomm

NO_CUDA = not torch.cuda.is_available()


def _buffer(**keywords) -> epcomm.Buffer:
    return epcomm.Buffer(epcomm.make_thread_groups(1)[0], **keywords)


# ---- get_local_buffer_tensor ------------------------------------------------------------------

def test_local_buffer_tensor_views_one_memory_like_the_numpy_model():
    nvl, rdma = 4096, 1024
    buffer = _buffer(num_nvl_bytes=nvl, num_rdma_bytes=rdma, low_latency_mode=True)
    model = {False: np.zeros(nvl, np.uint8), True: np.zeros(rdma, np.uint8)}
    rng = np.random.default_rng(3)
    writes = [(torch.int32, 0, False), (torch.bfloat16, 6, False), (torch.float32, 1000, False),
              (torch.int8, 17, True), (torch.int64, 1016, True), (torch.uint8, 4095, False)]
    for dtype, offset, rdma_side in writes:
        tensor = buffer.get_local_buffer_tensor(dtype, offset=offset, use_rdma_buffer=rdma_side)
        size = model[rdma_side].size
        assert tensor.dtype == dtype and tensor.numel() == (size - offset) // tensor.element_size()
        raw = rng.integers(0, 256, tensor.numel() * tensor.element_size(), dtype=np.uint8)
        tensor.view(torch.uint8).copy_(torch.from_numpy(raw))
        model[rdma_side][offset:offset + raw.size] = raw
    for rdma_side in (False, True):
        whole = buffer.get_local_buffer_tensor(torch.uint8, use_rdma_buffer=rdma_side)
        assert np.array_equal(whole.cpu().numpy(), model[rdma_side])
    # A slice shaped as `size`: the first size.numel() elements from offset, same memory.
    shaped = buffer.get_local_buffer_tensor(torch.int16, torch.Size([3, 5]), offset=8)
    want = model[False][8:8 + 30].view(np.int16).reshape(3, 5)
    assert shaped.shape == (3, 5) and np.array_equal(shaped.cpu().numpy(), want)
    shaped.fill_(7)  # vLLM zeroes the RDMA side to clean it; any write reaches the memory
    assert (buffer.get_local_buffer_tensor(torch.int16, offset=8)[:15] == 7).all()
    buffer.destroy()


def test_local_buffer_tensor_checks():
    buffer = _buffer(num_nvl_bytes=256, num_rdma_bytes=0, max_tokens_per_rank=4)
    assert buffer.get_local_buffer_tensor(torch.float32, use_rdma_buffer=True).numel() == 0
    assert buffer.get_local_buffer_tensor(torch.float32, offset=256).numel() == 0
    device = torch.device("cpu") if NO_CUDA else torch.device("cuda", torch.cuda.current_device())
    assert buffer.get_local_buffer_tensor(torch.uint8).device == device
    for kwargs, error, message in (
            (dict(offset=2), ValueError, r"offset = 2: must be a multiple of 4"),
            (dict(offset=260), ValueError, r"offset = 260: .* in \[0, 256\]"),
            (dict(size=torch.Size([65])), ValueError, r"size = \[65\] needs 65 elements; .* 64"),
            (dict(dtype="float32"), TypeError, "dtype must be a torch.dtype")):
        args = dict(dtype=torch.float32)
        args.update(kwargs)
        with pytest.raises(error, match=message):
            buffer.get_local_buffer_tensor(**args)
    assert buffer.get_local_buffer_tensor(torch.float32, torch.Size([64])).shape == (64,)
    buffer.destroy()
    with pytest.raises(RuntimeError, match="destroyed"):
        buffer.get_local_buffer_tensor(torch.float32)


# ---- events and the communication stream ------------------------------------------------------

@pytest.mark.skipif(not NO_CUDA, reason="checks the behaviour where there is no CUDA device")
def test_capture_and_event_handle_without_cuda():
    captured = epcomm.Buffer.capture()
    assert isinstance(captured, epcomm.EventOverlap)
    assert isinstance(captured.event, epcomm.EventHandle) and captured.event.event is None
    captured.current_stream_wait()
    with captured:
        pass
    handle = epcomm.utils.EventHandle()
    handle.current_stream_wait()
    with pytest.raises(RuntimeError, match="get_comm_stream: no CUDA device"):
        _buffer(max_tokens_per_rank=4).get_comm_stream()


def test_captured_events_order_cpu_calls():
    """DeepEP callers pass capture(), EventHandle() or EventOverlap(EventHandle()) as
    previous_event; CPU calls are synchronous, and accept each."""
    buffer = _buffer(max_tokens_per_rank=4)
    topk_idx = torch.tensor([[0, 1], [1, -1]])
    for event in (epcomm.Buffer.capture(), epcomm.EventHandle(),
                  epcomm.EventOverlap(epcomm.EventHandle()), None):
        per_rank, _, per_expert, in_rank, done = buffer.get_dispatch_layout(
            topk_idx, 2, previous_event=event, async_finish=True,
            allocate_on_comm_stream=event is not None)
        assert per_rank.tolist() == [2] and per_expert.tolist() == [1, 2]
        done.current_stream_wait()
    with pytest.raises(TypeError, match="previous_event must be an EventOverlap, an EventHandle"):
        buffer.get_dispatch_layout(topk_idx, 2, previous_event="now")
    buffer.destroy()
