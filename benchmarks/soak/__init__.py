"""Soak suites for encordfs: faults, crashes, network loss, hostile input and concurrency, with numbers.

``scripts/soak [--quick] [--json FILE]`` runs them all (``python -m benchmarks.soak``); the tests run short forms
of the same functions (``tests/test_faults.py``, ``tests/test_hostile.py``, ``tests/test_network_loss.py``).
See ``harness.scenarios`` for what each suite does and which of its numbers must be zero.
"""
