"""DeepEP's deep_ep.utils names, so that `from deep_ep.utils import EventHandle, EventOverlap`
keeps working with epcomm in place of deep_ep. (DeepEP's check_nvlink_connections is not here:
it checks DeepEP's own NVLink requirement; see docs/python.md.)"""
from .event import EventHandle, EventOverlap

__all__ = ["EventHandle", "EventOverlap"]
