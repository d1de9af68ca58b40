"""Shared pieces of the Python tests: workloads, the numpy reference, a per-rank runner."""
