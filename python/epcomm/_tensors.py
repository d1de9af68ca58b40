"""Argument checks for tensors, and copies between tensors and the addresses _epcomm returns.

Every check raises TypeError (wrong kind or dtype) or ValueError (wrong shape, layout or device)
with a message that starts with the argument's name.
"""
from typing import Optional, Sequence

import torch

import _epcomm

# fp8 rows arrive as torch.float8_e4m3fn where this PyTorch has it; raw uint8 bytes are accepted
# too (PyTorch before 2.1 has no fp8 dtype).
FP8_DTYPES = tuple(d for d in (getattr(torch, "float8_e4m3fn", None), torch.uint8) if d is not None)
INDEX_DTYPES = {torch.int64: _epcomm.IndexType.int64, torch.int32: _epcomm.IndexType.int32}
TORCH_INDEX_DTYPES = {index_type: dtype for dtype, index_type in INDEX_DTYPES.items()}


def _dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    return " or ".join(str(d) for d in dtypes)


def check_tensor(name: str, value, dtypes: Sequence[torch.dtype], shape: Sequence[Optional[int]],
                 device: Optional[torch.device] = None) -> torch.Tensor:
    """Checks a contiguous tensor of one of `dtypes`; None in `shape` accepts any size."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, not {type(value).__name__}")
    if value.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {value.dtype}; expected {_dtype_names(dtypes)}")
    if value.dim() != len(shape) or any(
            want is not None and got != want for got, want in zip(value.shape, shape)):
        wanted = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} has shape {list(value.shape)}; expected {wanted}")
    if not value.is_contiguous():
        raise ValueError(f"{name} must be contiguous (row-major)")
    if device is not None and value.device != device:
        raise ValueError(f"{name} is on {value.device}; expected {device} like x")
    return value


def address(tensor: Optional[torch.Tensor]) -> int:
    """The tensor's data address for _epcomm, 0 for None or an empty tensor."""
    if tensor is None or tensor.numel() == 0:
        return 0
    return tensor.data_ptr()


def nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def copy_from_address(dst: torch.Tensor, src_address: int, stream: int) -> None:
    """Fills `dst` with its size in bytes from `src_address` (ordered on `stream` for CUDA)."""
    if dst.numel() == 0:
        return
    _epcomm.copy_bytes(dst.data_ptr(), src_address, nbytes(dst), stream, dst.is_cuda)
