"""Fixtures for the worker's tests: config from plain dicts, a GCS emulator, throwaway ComfyUIs."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rp_handler.config import WorkerConfig
from rp_handler.process import free_port


def make_cfg(tmp_path: Path | None = None, **env: str) -> WorkerConfig:
    base = {"HOME": str(tmp_path or Path("/nonexistent")), "COMFY_PORT": "0", "COMFY_FORCE_CPU": "true"}
    if tmp_path is not None:
        base["COMFY_CACHE_ROOT"] = str(tmp_path / "cache")
    base.update(env)
    return WorkerConfig.from_env(base, container=False, volume_root=Path("/nonexistent-volume"))


@pytest.fixture
def cfg_factory(tmp_path):
    return lambda **env: make_cfg(tmp_path, **env)


@pytest.fixture(scope="session")
def gcs_emulator():
    """A real gcp-storage-emulator on 127.0.0.1 (in memory); yields its URL."""
    port = free_port()
    exe = Path(sys.executable).with_name("gcp-storage-emulator")
    proc = subprocess.Popen([str(exe), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory", "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).read()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("gcp-storage-emulator did not start")
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def gcs_bucket(gcs_emulator, request):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": gcs_emulator})
    name = "b-" + re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    bucket = client.bucket(name)
    if not bucket.exists():
        client.create_bucket(name)
    return client, name
