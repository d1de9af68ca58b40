"""The stream discipline of one Buffer call (DeepEP's): the work runs on the Buffer's
communication stream, after `previous_event` or else after the caller's current stream; outputs
are allocated on the current stream unless allocate_on_comm_stream; with async_finish the call
returns an event to wait on, otherwise the current stream waits for the call. CPU tensors run
synchronously and need none of this."""
import contextlib
from typing import Iterable, Optional

import torch

from .event import EventOverlap, cuda_event_of


def _cuda_event(previous_event) -> Optional[torch.cuda.Event]:
    """The event to wait for; None for an EventOverlap without one (a call that did not use
    async_finish, which the current stream already waited for, or a capture where there is no
    CUDA device)."""
    event = cuda_event_of(getattr(previous_event, "event", previous_event))
    if event is not None and not isinstance(event, torch.cuda.Event):
        raise TypeError("previous_event must be an EventOverlap, an EventHandle or a "
                        f"torch.cuda.Event, not {type(previous_event).__name__}")
    return event


class CallStreams:
    def __init__(self, comm_stream: Optional[torch.cuda.Stream], previous_event,
                 async_finish: bool, allocate_on_comm_stream: bool) -> None:
        if allocate_on_comm_stream and (previous_event is None or not async_finish):
            raise ValueError("allocate_on_comm_stream=True needs previous_event and "
                             "async_finish=True (as in DeepEP)")
        # Checked on CPU too (where there is nothing to wait for), so both agree on what works.
        event = _cuda_event(previous_event) if previous_event is not None else None
        self.comm = comm_stream
        self.async_finish = async_finish
        self.allocate_on_comm_stream = allocate_on_comm_stream
        if comm_stream is None:
            return
        self.compute = torch.cuda.current_stream(comm_stream.device)
        if event is not None:
            comm_stream.wait_event(event)
        else:
            comm_stream.wait_stream(self.compute)

    @property
    def address(self) -> int:
        """The communication stream for _epcomm (0 for CPU tensors)."""
        return self.comm.cuda_stream if self.comm is not None else 0

    def allocating(self):
        """Context in which the call allocates its outputs."""
        if self.comm is None:
            return contextlib.nullcontext()
        return torch.cuda.stream(self.comm if self.allocate_on_comm_stream else self.compute)

    def working(self):
        """Context in which the call's own PyTorch ops run (the communication stream)."""
        return contextlib.nullcontext() if self.comm is None else torch.cuda.stream(self.comm)

    def finish(self, inputs: Iterable[Optional[torch.Tensor]],
               outputs: Iterable[Optional[torch.Tensor]],
               comm_allocated: Iterable[torch.Tensor] = ()) -> EventOverlap:
        """Ends the call: `inputs` were read and `outputs` (allocated in allocating()) written
        on the communication stream; `comm_allocated` are outputs made by PyTorch ops in
        working(), hence owned by the communication stream."""
        if self.comm is None:
            return EventOverlap(None)
        event = torch.cuda.Event()
        event.record(self.comm)
        for tensor in comm_allocated:  # the caller's stream will use them
            tensor.record_stream(self.compute)
        if not self.async_finish:
            self.compute.wait_event(event)
            return EventOverlap(None)
        # The caller may drop these before waiting on the event: keep their memory from being
        # reused while the other stream still reads or writes it.
        for tensor in inputs:
            if tensor is not None and tensor.is_cuda:
                tensor.record_stream(self.comm)
        for tensor in outputs:
            if tensor is not None and tensor.is_cuda:
                tensor.record_stream(self.compute if self.allocate_on_comm_stream else self.comm)
        return EventOverlap(event)
