"""EventOverlap: the event a Buffer call returns, for overlapping communication with compute;
EventHandle: DeepEP's event recorded on the current stream when it is made."""
from typing import Any, Optional, Tuple

import torch


class EventHandle:
    """DeepEP's EventHandle: a CUDA event recorded on torch.cuda.current_stream() when the
    handle is made; `EventOverlap(EventHandle())` is what Buffer.capture() returns in DeepEP.

    `event` is the torch.cuda.Event. Difference from DeepEP: where PyTorch has no CUDA device,
    `event` is None and current_stream_wait() returns at once; the only calls such a process
    can make run on CPU tensors, synchronously, so everything issued before is already done.
    """

    def __init__(self) -> None:
        self.event: Optional[torch.cuda.Event] = None
        if torch.cuda.is_available():
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream())

    def current_stream_wait(self) -> None:
        """Makes torch.cuda.current_stream() wait for the event (does not block the host)."""
        if self.event is not None:
            torch.cuda.current_stream().wait_event(self.event)


def cuda_event_of(event) -> Optional[torch.cuda.Event]:
    """The torch.cuda.Event behind an EventOverlap's `event` (a torch.cuda.Event, an
    EventHandle, or None)."""
    return event.event if isinstance(event, EventHandle) else event


class EventOverlap:
    """The end of a Buffer call on its communication stream.

    `event` is a torch.cuda.Event recorded after the call's work when it ran with
    async_finish=True, else None (an EventHandle is accepted too, as DeepEP callers build
    EventOverlap(EventHandle()) themselves). Differences from DeepEP: with event None (a call without
    async_finish, or any call on CPU tensors, which are synchronous) current_stream_wait() has
    nothing to wait for and returns, where DeepEP asserts.

    `extra_tensors` keeps tensors alive until this object is dropped (DeepEP's alternative to
    record_stream under CUDA graphs).
    """

    def __init__(self, event: Optional[torch.cuda.Event] = None,
                 extra_tensors: Optional[Tuple[torch.Tensor, ...]] = None) -> None:
        self.event = event
        self.extra_tensors = extra_tensors

    def current_stream_wait(self) -> None:
        """Makes torch.cuda.current_stream() wait for the call to finish (does not block the host)."""
        event = cuda_event_of(self.event)
        if event is not None:
            torch.cuda.current_stream().wait_event(event)

    def __enter__(self) -> "EventOverlap":
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        self.current_stream_wait()
