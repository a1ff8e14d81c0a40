"""Faults of a real ComfyUI injected from outside the worker (FAULT_TRIALS each, 1 by default here;
``bench/faults_report.py --real`` runs 20). Needs COMFYUI_DIR/COMFYUI_PYTHON, and root for the
``ss -K`` and tmpfs scenarios."""

from __future__ import annotations

import os

import pytest

from tests.faults.harness import run_scenario, trials_from_env
from tests.faults.real_scenarios import RealFaultWorker, real_scenarios
from tests.helpers import REAL_COMFY_MARKS

pytestmark = REAL_COMFY_MARKS

SCENARIOS = {s.name: s for s in real_scenarios()}
NEEDS_ROOT = ("ss -K", "disk full")


@pytest.fixture(scope="module")
def real_fault_worker(tmp_path_factory):
    w = RealFaultWorker(tmp_path_factory.mktemp("real-faults"))
    yield w
    w.close()


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_real_comfy_fault(name, real_fault_worker, tmp_path):
    if any(word in name for word in NEEDS_ROOT) and os.geteuid() != 0:
        pytest.skip("needs root (ss -K, mount -t tmpfs)")
    scenario = SCENARIOS[name]
    scenario.worker = real_fault_worker
    report = run_scenario(scenario, trials_from_env(default=1), tmp_path)
    assert report.ok, f"{report.passed}/{report.trials} passed; first failures: {report.failures[:3]}"
