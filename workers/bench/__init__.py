"""Benchmarks: every scenario runs its baseline in the same run (``catfleet bench ...``)."""
