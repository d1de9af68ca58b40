"""Checks of Buffer's arguments. Each raises TypeError (wrong kind or dtype) or ValueError
(wrong value or shape) naming the argument, before anything is sent."""
from typing import Optional

import torch

import _epcomm

from . import _tensors
from .config import Config


def split_x(x):
    """(rows, scales or None, _epcomm.DType) of dispatch's x: bf16 rows, or (fp8 rows, scales)."""
    if isinstance(x, tuple):
        if len(x) != 2:
            raise ValueError(f"x is a tuple of {len(x)}; expected (fp8 rows, fp32 scales)")
        rows, scales = x
        _tensors.check_tensor("x[0]", rows, _tensors.FP8_DTYPES, (None, None))
        hidden = rows.shape[1]
        if hidden % _epcomm.FP8_SCALE_BLOCK:
            raise ValueError(f"x[0] has hidden = {hidden}: fp8 rows need a multiple of "
                             f"{_epcomm.FP8_SCALE_BLOCK} (one scale per block)")
        _tensors.check_tensor("x[1]", scales, (torch.float32,),
                              (rows.shape[0], hidden // _epcomm.FP8_SCALE_BLOCK), rows.device)
        return rows, scales, _epcomm.DType.fp8_e4m3
    _tensors.check_tensor("x", x, (torch.bfloat16,), (None, None))
    if x.shape[1] % 8:
        raise ValueError(f"x has hidden = {x.shape[1]}: must be a multiple of 8 (rows move as "
                         "16-byte vectors)")
    return x, None, _epcomm.DType.bf16


def check_num_experts(name: str, num_experts, num_ranks: int) -> None:
    if not isinstance(num_experts, int) or num_experts < 1 or num_experts % num_ranks:
        raise ValueError(f"{name} = {num_experts!r}: the number of experts must be a positive "
                         f"multiple of the number of ranks ({num_ranks})")


def check_count(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} = {value!r}: must be an int >= {minimum}")


def check_layout_args(num_tokens: int, num_ranks: int, num_tokens_per_rank,
                      num_tokens_per_rdma_rank, is_token_in_rank) -> None:
    """dispatch's layout arguments: only their shapes matter (routing comes from topk_idx)."""
    if num_tokens_per_rdma_rank is not None:
        raise ValueError("num_tokens_per_rdma_rank must be None: epcomm works within one NVLink "
                         "domain")
    if num_tokens_per_rank is not None:
        _tensors.check_tensor("num_tokens_per_rank", num_tokens_per_rank,
                              (torch.int32, torch.int64), (num_ranks,))
    if is_token_in_rank is not None:
        _tensors.check_tensor("is_token_in_rank", is_token_in_rank, (torch.bool,),
                              (num_tokens, num_ranks))


def sms_of(config: Optional[Config]) -> Optional[int]:
    """The SM count a call asks for: its config's, or None (no config: whatever the
    communicator was made with; the SM count never changes a result)."""
    if config is not None and not isinstance(config, Config):
        raise TypeError(f"config must be an epcomm.Config, not {type(config).__name__}")
    return config.num_sms if config is not None else None


def check_sms(wanted: Optional[int], fixed: int) -> None:
    if wanted is not None and wanted != fixed:
        raise ValueError(f"config.num_sms = {wanted}, but this communicator was created with "
                         f"{fixed} SMs (epcomm fixes the SM count at creation)")


def check_fits(config: _epcomm.Config, num_tokens: int, num_topk: int) -> None:
    """What the communicator `config` describes can take this dispatch."""
    if num_tokens > config.max_tokens_per_rank:
        raise ValueError(f"x has {num_tokens} tokens, but this Buffer's communicator takes at "
                         f"most max_tokens_per_rank = {config.max_tokens_per_rank} (raise "
                         "num_nvl_bytes or max_tokens_per_rank)")
    if num_topk > config.max_topk:
        raise ValueError(f"topk_idx has {num_topk} columns, but this Buffer's communicator was "
                         f"created for max_topk = {config.max_topk} (pass max_topk)")
