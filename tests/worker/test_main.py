"""Start-up helpers of ``rp_handler.main``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from rp_handler.main import write_models_yaml, yield_cpu_to_comfyui

REPO = Path(__file__).resolve().parents[2]


def test_imports_run_at_lower_priority_then_restored():
    before = os.nice(0)
    with yield_cpu_to_comfyui(5):
        assert os.nice(0) == min(19, before + 5)
    if os.geteuid() == 0:
        assert os.nice(0) == before
    now = os.nice(0)
    with yield_cpu_to_comfyui(0):  # 0 turns it off
        assert os.nice(0) == now


def test_light_cpuinfo_spares_the_probe_and_keeps_the_cpu_name():
    code = ("from rp_handler.runpod_sdk import import_runpod; import_runpod(); "
            "import runpod.serverless.utils.rp_debugger as d, sys; print(d.PROCESSOR); "
            "print(d.cpuinfo.__doc__); print('cpuinfo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout.splitlines()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), None)
    if model:
        assert out[0] == model
    assert "light stand-in" in out[1]
    assert out[2] == "False"  # not left in sys.modules for anything imported later


def test_models_yaml_points_every_folder_at_models_dir(tmp_path):
    path = write_models_yaml(tmp_path / "m", tmp_path / "x" / "extra.yaml")
    [group] = yaml.safe_load(path.read_text()).values()
    assert group["base_path"] == str(tmp_path / "m")
    assert all(group[name] == name for name in ("checkpoints", "loras", "upscale_models"))
    assert not list(path.parent.glob("*.incomplete"))
