"""GCS faults on output uploads, each run FAULT_TRIALS times (default 20)."""

from __future__ import annotations

import pytest

from tests.faults.gcs_scenarios import gcs_scenarios
from tests.faults.harness import run_scenario, trials_from_env

SCENARIOS = {s.name: s for s in gcs_scenarios()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_gcs_fault(name, tmp_path):
    scenario = SCENARIOS[name]
    report = run_scenario(scenario, trials_from_env(default=getattr(scenario, 'ci_trials', 20)), tmp_path)
    assert report.ok, f"{report.passed}/{report.trials} passed; first failures: {report.failures[:3]}"
