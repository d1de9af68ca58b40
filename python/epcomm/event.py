"""EventOverlap: the event a Buffer call returns, for overlapping communication with compute."""
from typing import Any, Optional, Tuple

import torch


class EventOverlap:
    """The end of a Buffer call on its communication stream.

    `event` is a torch.cuda.Event recorded after the call's work when it ran with
    async_finish=True, else None. Differences from DeepEP: with event None (a call without
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
        if self.event is not None:
            torch.cuda.current_stream().wait_event(self.event)

    def __enter__(self) -> "EventOverlap":
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        self.current_stream_wait()
