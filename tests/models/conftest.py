"""Fixtures for the model store tests: local file server, fake Hub, GCS emulator, configs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.config import BuildConfig
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_emulator():
    """gcp-storage-emulator in its own process, with a default bucket ``test``."""
    exe = Path(sys.executable).parent / "gcp-storage-emulator"
    if not exe.exists():
        pytest.skip("gcp-storage-emulator is not installed")
    port = _free_port()
    proc = subprocess.Popen([str(exe), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory",
                             "--default-bucket", "test"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail("gcp-storage-emulator exited at start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("gcp-storage-emulator did not listen within 30 s")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def gcs_client(gcs_emulator, monkeypatch):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    return storage.Client(project="test", credentials=AnonymousCredentials())
