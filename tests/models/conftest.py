"""Fixtures for the model store tests: local file server, fake Hub, GCS emulator, configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.config import BuildConfig
from tests import helpers
from tests.fakes.hf_hub import FakeHfHub
from tests.fakes.model_server import ModelFileServer


@pytest.fixture
def server():
    with ModelFileServer() as srv:
        yield srv


@pytest.fixture
def hub():
    with FakeHfHub() as srv:
        yield srv


@pytest.fixture
def make_cfg(tmp_path):
    def make(**env) -> BuildConfig:
        base = {"HOME": str(tmp_path / "home"), "COMFY_CACHE_ROOT": str(tmp_path / "cache")}
        base.update({k: str(v) for k, v in env.items()})
        return BuildConfig.from_env(base, volume_root=tmp_path / "no-volume", container=False)

    return make


@pytest.fixture
def cfg(make_cfg):
    """One connection per download (tests of the ranged path ask for more)."""
    return make_cfg(MODEL_DOWNLOAD_CONNECTIONS=1)


@pytest.fixture
def models_dir(tmp_path) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    return d


@pytest.fixture(scope="session")
def gcs_emulator():
    """gcp-storage-emulator in its own process, with a default bucket ``test``."""
    if not helpers.GCS_EMULATOR.exists():
        pytest.skip("gcp-storage-emulator is not installed")
    with helpers.gcs_emulator("--default-bucket", "test") as url:
        yield url


@pytest.fixture
def gcs_client(gcs_emulator, monkeypatch):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    return storage.Client(project="test", credentials=AnonymousCredentials())
