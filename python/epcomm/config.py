"""Config: DeepEP's per-call tuning object, how Buffer sizes its receive pool from bytes, and
the size of the low-latency region."""

# Rows are padded to this many bytes in the receive pool's meta area (region_layout.hpp).
_META_ALIGN = 16
_FP8_SCALE_BLOCK = 128
# What get_nvl_buffer_size_hint assumes when the caller cannot say (DeepEP's hint has no token
# count, but epcomm's pool holds every received row).
HINT_TOKENS_PER_RANK = 4096
HINT_MAX_TOPK = 8


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def pool_row_bytes(hidden: int, max_topk: int, fp8: bool) -> int:
    """About how many bytes of the receive pool one received row takes: the row itself (bf16
    width, since combine reuses the slot) plus its meta row (source, top-k ids and weights,
    fp8 scales)."""
    scales = hidden // _FP8_SCALE_BLOCK if fp8 else 0
    meta = 8 + 8 * max_topk + 4 * scales
    meta = _align(meta, _META_ALIGN)
    return 2 * hidden + meta


def low_latency_region_bytes(max_tokens: int, hidden: int, num_ranks: int, num_experts: int,
                             max_topk: int) -> int:
    """Bytes of a rank's low-latency region, two buffers of: message counts [Le][R] and combine
    signals [R] (8 bytes each), messages [Le][R][M] (room for a bf16 row, fp32 scales, a 16-byte
    header; 128-byte multiples), combine rows [M][K][H] bf16; each part 128-byte aligned
    (docs/design.md section 20)."""
    experts_per_rank = num_experts // num_ranks
    message = _align(_align(2 * hidden, 16) + _align(4 * (hidden // _FP8_SCALE_BLOCK), 16) + 16,
                     128)
    parts = (8 * experts_per_rank * num_ranks, 8 * num_ranks, message * num_experts * max_tokens,
             2 * hidden * max_topk * max_tokens)
    return 2 * sum(_align(part, 128) for part in parts)


class Config:
    """Tuning knobs of one dispatch or combine, shaped like DeepEP's Config.

    epcomm reads num_sms only: the number of thread blocks (one per SM) a dispatch sends with or
    a combine gathers with. It is fixed when Buffer creates a communicator (at the first dispatch
    of a kind; see Buffer), so a later call whose config asks for another num_sms raises
    ValueError. The chunk and buffer sizes configure DeepEP's ring buffers, which epcomm does
    not have: they are kept, checked to be positive, and otherwise unused.
    """

    def __init__(self, num_sms: int = 20, nvl_chunk_size: int = 6, nvl_buffer_size: int = 256,
                 rdma_chunk_size: int = 6, rdma_buffer_size: int = 128) -> None:
        for name, value in (("num_sms", num_sms), ("nvl_chunk_size", nvl_chunk_size),
                            ("nvl_buffer_size", nvl_buffer_size),
                            ("rdma_chunk_size", rdma_chunk_size),
                            ("rdma_buffer_size", rdma_buffer_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Config.{name} = {value!r}: must be a positive int")
        self.num_sms = num_sms
        self.nvl_chunk_size = nvl_chunk_size
        self.nvl_buffer_size = nvl_buffer_size
        self.rdma_chunk_size = rdma_chunk_size
        self.rdma_buffer_size = rdma_buffer_size

    def get_nvl_buffer_size_hint(self, hidden_bytes: int, num_ranks: int,
                                 max_tokens_per_rank: int = HINT_TOKENS_PER_RANK) -> int:
        """Bytes for a Buffer whose ranks each dispatch up to max_tokens_per_rank tokens of
        hidden_bytes (a bf16 row: hidden * 2). DeepEP's hint sizes ring buffers and has no token
        count; epcomm's pool holds every received row, so the extra argument (default 4096)
        says how many tokens to plan for. Assumes fp8 scales and top-8, an upper bound."""
        hidden = hidden_bytes // 2
        return num_ranks * max_tokens_per_rank * pool_row_bytes(hidden, HINT_MAX_TOPK, True)

    def get_rdma_buffer_size_hint(self, hidden_bytes: int, num_ranks: int) -> int:
        """Always 0: epcomm works within one NVLink domain and has no RDMA buffer."""
        return 0

    def __repr__(self) -> str:
        return (f"Config(num_sms={self.num_sms}, nvl_chunk_size={self.nvl_chunk_size}, "
                f"nvl_buffer_size={self.nvl_buffer_size}, rdma_chunk_size={self.rdma_chunk_size}, "
                f"rdma_buffer_size={self.rdma_buffer_size})")
