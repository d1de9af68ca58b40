"""The DeepEP features this epcomm build accepts by name but cannot run, and the one error they
raise: EpcommError with code ErrorCode.unsupported, naming the feature and what is missing.

Kept in one table so that docs/python.md and the tests can list exactly these. Each entry needs
C++ or CUDA work (a transport, a kernel change with its host reference), not more Python.
"""
from _epcomm import Error as EpcommError
from _epcomm import ErrorCode

NOT_BUILT = {
    "use_fabric": "fabric memory (cuMemCreate with fabric handles, for multi-node NVLink) is not "
                  "built; regions are shared with CUDA IPC inside one node",
    "enable_shrink": "the elastic low-latency mode (masking ranks, and masking a rank whose wait "
                     "times out) is not built: the kernels cannot skip a masked rank yet",
    "internode_dispatch": "the inter-node path (RDMA between NVLink domains) is not built; epcomm "
                          "runs within one NVLink domain, where dispatch is the call to use",
    "internode_combine": "the inter-node path (RDMA between NVLink domains) is not built; epcomm "
                         "runs within one NVLink domain, where combine is the call to use",
    "dispatch_wait_recv_cost_stats": "the receive kernels do not time their waits per source rank",
    "combine_wait_recv_cost_stats": "the receive kernels do not time their waits per source rank",
    "round_scale": "the fp8 cast computes scales as amax / 448 in fp32, not rounded to powers of "
                   "two (the kernels and the host reference would both need the rounded form)",
    "use_ue8m0": "the fp8 scales are fp32, not packed as UE8M0 exponents (four to an int32); "
                 "the packing needs the power-of-two scales of round_scale, not built either",
    "use_logfmt": "low_latency_combine sends bf16 rows; the 10-bit LogFMT encoding is not built",
    "low_latency_update_mask_buffer": "masking ranks needs enable_shrink=True, which this build "
                                      "does not support (no elastic low-latency mode)",
    "low_latency_query_mask_buffer": "masking ranks needs enable_shrink=True, which this build "
                                     "does not support (no elastic low-latency mode)",
    "low_latency_clean_mask_buffer": "masking ranks needs enable_shrink=True, which this build "
                                     "does not support (no elastic low-latency mode)",
}


def unsupported(feature: str) -> EpcommError:
    """The error for `feature` (a key of NOT_BUILT): raise it."""
    error = EpcommError(f"{feature} is not supported by this epcomm build: {NOT_BUILT[feature]}")
    error.code = ErrorCode.unsupported
    return error
