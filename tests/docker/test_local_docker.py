"""scripts/local_docker.sh without an action: its usage, and nothing started (the real run is the image test)."""

from __future__ import annotations

import subprocess

from tests.docker.dockerfile_model import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "local_docker.sh"


def test_parses_under_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_no_action_prints_usage_and_exits_2():
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "scripts/local_docker.sh up" in proc.stdout and "scripts/local_docker.sh down" in proc.stdout


def test_defaults_are_the_dockerfiles_base_images():
    text = SCRIPT.read_text()
    assert 'default_arg CUDA_IMAGE' in text and 'default_arg UV_IMAGE' in text
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "ARG CUDA_IMAGE=" in dockerfile and "ARG UV_IMAGE=" in dockerfile
