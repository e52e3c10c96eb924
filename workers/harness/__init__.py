"""Tooling for the demo, the benchmarks and the tests: whole databases created and dropped
(``databases``) and ``catfleet`` child processes started, awaited and stopped (``processes``).
The product never imports it (``tests/unit/test_layers.py`` checks that)."""
