"""The end-to-end tests record their wall times here; each report carries them (a ``timings`` user
property) so that pytest prints them after the run, also from pytest-xdist workers (tests/conftest.py)."""

from __future__ import annotations

import pytest

TIMINGS: dict[str, float] = {}
NOTES: list[str] = []  # what the steps did (realize's actions, the CPU-only workaround)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" and TIMINGS:  # the last call report holds them all
        report.user_properties.append(("timings", {"seconds": dict(TIMINGS), "notes": list(NOTES)}))
    return report
