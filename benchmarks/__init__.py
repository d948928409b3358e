"""Measurement scripts (not part of the installed package): run with `python -m benchmarks.<name>`."""
