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


# The chunk sizes DeepEP's Buffer.get_dispatch_config / get_combine_config recommend per rank
# count (DeepEP V1 tabulates them for its ring buffers). Each entry is (nvl send, nvl receive,
# rdma send, rdma receive) chunk sizes in tokens; the SM count is always Buffer.num_sms.
DISPATCH_CHUNKS = {
    2: (24, 256, 6, 128), 4: (6, 256, 6, 128), 8: (6, 256, 6, 128), 16: (36, 288, 20, 128),
    24: (32, 288, 8, 128), 32: (32, 288, 8, 128), 48: (32, 288, 8, 128), 64: (32, 288, 8, 128),
    96: (20, 480, 12, 128), 128: (20, 560, 12, 128), 144: (32, 720, 12, 128),
    160: (28, 720, 12, 128),
}
COMBINE_CHUNKS = {
    2: (10, 256, 6, 128), 4: (9, 256, 6, 128), 8: (4, 256, 6, 128), 16: (4, 288, 12, 128),
    24: (1, 288, 8, 128), 32: (1, 288, 8, 128), 48: (1, 288, 8, 128), 64: (1, 288, 8, 128),
    96: (1, 480, 8, 128), 128: (1, 560, 8, 128), 144: (2, 720, 8, 128), 160: (2, 720, 8, 128),
}


class Config:
    """Tuning knobs of one dispatch or combine: DeepEP's Config, with its positional order,
    keyword names, defaults and checks (ValueError where DeepEP asserts).

    epcomm reads num_sms only: the number of thread blocks (one per SM) a dispatch sends with or
    a combine gathers with. It is fixed when Buffer creates a communicator (at the first dispatch
    of a kind; see Buffer), so a later call whose config asks for another num_sms raises
    ValueError. The four chunk sizes (tokens per chunk sent, and per ring buffer received, over
    NVLink and over RDMA) configure DeepEP's ring buffers, which epcomm's flat path does not
    have: they are checked as DeepEP checks them and otherwise do not change any result.
    As in DeepEP, num_max_rdma_chunked_recv_tokens is rounded up to a multiple of
    num_max_rdma_chunked_send_tokens. Difference: num_sms must be >= 1 (DeepEP accepts 0).
    """

    def __init__(self, num_sms: int = 20, num_max_nvl_chunked_send_tokens: int = 6,
                 num_max_nvl_chunked_recv_tokens: int = 256,
                 num_max_rdma_chunked_send_tokens: int = 6,
                 num_max_rdma_chunked_recv_tokens: int = 256) -> None:
        values = (("num_sms", num_sms),
                  ("num_max_nvl_chunked_send_tokens", num_max_nvl_chunked_send_tokens),
                  ("num_max_nvl_chunked_recv_tokens", num_max_nvl_chunked_recv_tokens),
                  ("num_max_rdma_chunked_send_tokens", num_max_rdma_chunked_send_tokens),
                  ("num_max_rdma_chunked_recv_tokens", num_max_rdma_chunked_recv_tokens))
        for name, value in values:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Config.{name} = {value!r}: must be a positive int")
        nvl_send, nvl_recv = num_max_nvl_chunked_send_tokens, num_max_nvl_chunked_recv_tokens
        if nvl_send >= nvl_recv:
            raise ValueError(f"Config: num_max_nvl_chunked_send_tokens = {nvl_send} must be less "
                             f"than num_max_nvl_chunked_recv_tokens = {nvl_recv}")
        rdma_send = num_max_rdma_chunked_send_tokens
        rdma_recv = _align(num_max_rdma_chunked_recv_tokens, rdma_send)
        # DeepEP's senders update the RDMA ring head lazily: half the ring must stay free.
        if rdma_send > rdma_recv // 2:
            raise ValueError(f"Config: num_max_rdma_chunked_send_tokens = {rdma_send} must be at "
                             f"most half of num_max_rdma_chunked_recv_tokens = {rdma_recv}")
        self.num_sms = num_sms
        self.num_max_nvl_chunked_send_tokens = nvl_send
        self.num_max_nvl_chunked_recv_tokens = nvl_recv
        self.num_max_rdma_chunked_send_tokens = rdma_send
        self.num_max_rdma_chunked_recv_tokens = rdma_recv

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
        return (f"Config({self.num_sms}, {self.num_max_nvl_chunked_send_tokens}, "
                f"{self.num_max_nvl_chunked_recv_tokens}, {self.num_max_rdma_chunked_send_tokens}, "
                f"{self.num_max_rdma_chunked_recv_tokens})")


def recommended_config(table: dict, num_ranks: int, num_sms: int) -> Config:
    """DeepEP's recommendation for num_ranks from `table`; for a rank count DeepEP does not list
    (it asserts), DeepEP's default chunk sizes, since epcomm runs any number of ranks."""
    chunks = table.get(num_ranks)
    return Config(num_sms, *chunks) if chunks is not None else Config(num_sms)
