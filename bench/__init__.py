"""Benchmarks of the pipeline on this machine, run as `python -m bench.<name>`; not tests."""
