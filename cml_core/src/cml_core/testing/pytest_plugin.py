"""pytest plugin shipped with cml-core: hypothesis profiles for op tests, and a true exit status.

Profiles: ``dev`` (default) and ``ci`` (derandomized, no deadline, used when ``CI`` is set).
Select explicitly with ``HYPOTHESIS_PROFILE``.

A test that uses concrete-python directly would otherwise let concrete's exit handler turn a red
run's exit status into 0 (see ``cml_core.fhe.keep_exit_status``); the session's end removes it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", deadline=None, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", deadline=None, max_examples=25, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_sessionfinish(session: object, exitstatus: int) -> None:
    from cml_core.fhe import keep_exit_status

    keep_exit_status()
