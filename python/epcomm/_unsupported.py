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
    "use_logfmt": "low_latency_combine sends bf16 rows; the 10-bit LogFMT encoding is not built",
}


def unsupported(feature: str) -> EpcommError:
    """The error for `feature` (a key of NOT_BUILT): raise it."""
    error = EpcommError(f"{feature} is not supported by this epcomm build: {NOT_BUILT[feature]}")
    error.code = ErrorCode.unsupported
    return error
