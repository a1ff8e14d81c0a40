"""Run one fault scenario N times and record, per trial, whether the worker recovered and how fast.

A scenario is an object with ``name``, ``bound_s`` (the most one trial may take: fault, the faulty
job's answer and the next good job), ``setup(root)``, ``trial(i)`` (raises on any broken promise)
and ``teardown()``. ``run_scenario`` times each trial; the tests assert every trial passed and
``bench/faults_report.py`` prints the table.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol

DEFAULT_TRIALS = 20
TEMP_MARKERS = (".incomplete", ".tmp", ".part", ".partial")


def trials_from_env(env: dict | None = None, default: int = DEFAULT_TRIALS) -> int:
    raw = (env if env is not None else os.environ).get("FAULT_TRIALS", "")
    return max(1, int(raw)) if raw.strip() else default


class Scenario(Protocol):
    name: str
    bound_s: float

    def setup(self, root: Path) -> None: ...

    def trial(self, i: int) -> None: ...

    def teardown(self) -> None: ...


@dataclass
class Report:
    name: str
    trials: int = 0
    passed: int = 0
    worst_s: float = 0.0
    failures: list[str] = field(default_factory=list)
    worst_result_s: float = 0.0  # the faulty job's answer (scenarios that report ``last_result_s``)
    next_ok: int = 0  # trials whose next job succeeded (scenarios that report ``last_next_ok``)

    @property
    def ok(self) -> bool:
        return self.trials > 0 and self.passed == self.trials


def run_scenario(scenario: Scenario, trials: int, root: Path | None = None) -> Report:
    """``trials`` timed trials of one scenario; a trial over ``bound_s`` counts as failed."""
    own = root is None
    root = Path(tempfile.mkdtemp(prefix="faults-")) if root is None else Path(root)
    report = Report(scenario.name)
    try:
        scenario.setup(root)
        for i in range(trials):
            report.trials += 1
            started = time.monotonic()
            try:
                scenario.trial(i)
                took = time.monotonic() - started
                if took > scenario.bound_s:
                    raise AssertionError(f"trial took {took:.2f} s, over the bound {scenario.bound_s} s")
                report.passed += 1
            except Exception as err:  # a broken promise: recorded, the next trial goes on
                took = time.monotonic() - started
                tb = traceback.format_exception_only(type(err), err)[-1].strip()
                report.failures.append(f"trial {i}: {tb[:1500]}")
            report.worst_s = max(report.worst_s, took)
            report.worst_result_s = max(report.worst_result_s, getattr(scenario, "last_result_s", 0.0))
            report.next_ok += bool(getattr(scenario, "last_next_ok", False))
    finally:
        scenario.teardown()
        if own:
            shutil.rmtree(root, ignore_errors=True)
    return report


def half_written(*dirs: Path | None) -> list[Path]:
    """Every temp/partial file (``*.incomplete`` and friends) under the given folders."""
    found: list[Path] = []
    for d in dirs:
        if d is None or not Path(d).exists():
            continue
        for base, _subdirs, files in os.walk(d):
            found += [Path(base) / f for f in files if any(m in f for m in TEMP_MARKERS)]
    return found


def assert_one_line_error(result: dict, codes: Iterable[str]) -> None:
    """A failed job: ``error`` is one non-empty line and its code is one we expect (never 'internal')."""
    assert isinstance(result, dict) and "error" in result, f"expected an error, got {str(result)[:300]}"
    err = result["error"]
    assert isinstance(err, str) and err.strip() and "\n" not in err, f"error is not one line: {err!r}"
    assert "Traceback" not in err, err
    code = result.get("details", {}).get("code")
    assert code in set(codes), f"error code {code!r} not in {sorted(codes)}: {err}"
