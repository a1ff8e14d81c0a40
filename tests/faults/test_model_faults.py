"""Model store and NVMe cache faults, each run FAULT_TRIALS times (default 20)."""

from __future__ import annotations

import pytest

from tests.faults.harness import run_scenario, trials_from_env
from tests.faults.model_scenarios import CacheDiskFull, cache_scenarios, model_scenarios

SCENARIOS = {s.name: s for s in model_scenarios() + cache_scenarios()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_model_fault(name, tmp_path):
    scenario = SCENARIOS[name]
    if isinstance(scenario, CacheDiskFull):
        try:
            scenario.setup(tmp_path / "probe")
        except PermissionError as err:
            pytest.skip(str(err))
        finally:
            scenario.teardown()
    report = run_scenario(scenario, trials_from_env(default=getattr(scenario, 'ci_trials', 20)), tmp_path / "run")
    assert report.ok, f"{report.passed}/{report.trials} passed; first failures: {report.failures[:3]}"
