"""ComfyUI faults, each run FAULT_TRIALS times (default 20) against one supervised fake ComfyUI."""

from __future__ import annotations

import pytest

from tests.faults.harness import run_scenario, trials_from_env
from tests.faults.worker_scenarios import comfy_scenarios

SCENARIOS = {s.name: s for s in comfy_scenarios()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_worker_recovers_from(name, tmp_path):
    scenario = SCENARIOS[name]
    report = run_scenario(scenario, trials_from_env(default=getattr(scenario, 'ci_trials', 20)), tmp_path)
    assert report.ok, f"{report.passed}/{report.trials} passed; first failures: {report.failures[:3]}"


@pytest.mark.slow
def test_sigterm_during_a_job(tmp_path):
    from tests.faults.sigterm_scenario import SigtermDuringJob

    report = run_scenario(SigtermDuringJob(), trials_from_env(default=SigtermDuringJob.ci_trials), tmp_path)
    assert report.ok, f"{report.passed}/{report.trials} passed; first failures: {report.failures[:3]}"
