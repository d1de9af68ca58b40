"""Tensors that view memory the C++ library owns (the low-latency mode's receive buffers).

No copy is made: the tensor reads and writes the communicator's buffer, so it is valid only as
long as the library says the buffer holds its data. Host memory is wrapped with
torch.frombuffer over a ctypes array; device memory through __cuda_array_interface__ (which
PyTorch parses with numpy).
"""
import ctypes
import math
from typing import Sequence

import torch

# Each dtype is first viewed as a same-size integer type both interfaces know.
_CARRIER = {1: (torch.uint8, ctypes.c_uint8, "|u1"), 2: (torch.int16, ctypes.c_int16, "<i2"),
            4: (torch.int32, ctypes.c_int32, "<i4")}


class _CudaMemory:
    """Device memory at an address, described for torch.as_tensor (no ownership)."""

    def __init__(self, address: int, numel: int, typestr: str) -> None:
        self.__cuda_array_interface__ = {"shape": (numel,), "typestr": typestr,
                                         "data": (address, False), "version": 2}


def view(address: int, shape: Sequence[int], dtype: torch.dtype,
         device: torch.device) -> torch.Tensor:
    """A contiguous tensor of `shape` and `dtype` over the memory at `address` on `device`."""
    numel = math.prod(shape)
    if address == 0 or numel == 0:
        raise ValueError(f"view of {list(shape)} {dtype} at address {address:#x}: nothing to view")
    carrier, c_type, typestr = _CARRIER[torch.empty(0, dtype=dtype).element_size()]
    if device.type == "cuda":
        flat = torch.as_tensor(_CudaMemory(address, numel, typestr))
        if flat.device != device:  # PyTorch reads the device off the pointer
            raise ValueError(f"memory at {address:#x} is on {flat.device}, expected {device}")
    else:
        flat = torch.frombuffer((c_type * numel).from_address(address), dtype=carrier)
    return flat.view(dtype).view(*shape)
