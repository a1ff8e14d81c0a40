"""The end-to-end tests record their wall times here; pytest prints them after the run."""

from __future__ import annotations

TIMINGS: dict[str, float] = {}
NOTES: list[str] = []  # what the steps did (realize's actions, the CPU-only workaround)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if TIMINGS:
        terminalreporter.section("e2e timings")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{name}: {seconds:.1f} s")
        for line in NOTES:
            terminalreporter.write_line(line)
