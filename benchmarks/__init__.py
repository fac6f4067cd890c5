"""Benchmarks of cml (``nox -s bench`` or ``./dev bench``); never part of the test run."""
