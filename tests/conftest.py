"""Shared fixtures: every cache, home and token points inside tmp_path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# Transcripts recorded from a real ComfyUI (copied from shared/comfyui-protocol).
PROTOCOL_DIR = REPO_ROOT / "tests" / "data" / "protocol"

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No test reads or writes the real home, caches or tokens."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("COMFY_CACHE_ROOT", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("GIT_AUTHOR_NAME", "test")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "test@example.invalid")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "test")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "test@example.invalid")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    # runpod's production fitness checks dial 8.8.8.8: tests stay on loopback
    monkeypatch.setenv("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS", "true")
    for name in ("COMFY_HOME", "MODELS_DIR", "COMFY_OFFLINE", "HF_TOKEN", "CIVITAI_TOKEN",
                 "GCS_BUCKET", "GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST",
                 "COMFY_VERSION_ID", "COMFY_VERSION_NAME", "OUTPUT_MODE", "NVME_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT
