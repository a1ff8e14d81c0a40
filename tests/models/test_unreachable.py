"""A host that refuses connections (the fake Hub / model server, stopped): one line per model, one
warning per retry, nothing left in the store or the models folder."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.fakes.hf_hub import FakeHfHub
from tests.fakes.model_server import ModelFileServer

SHA = "ab" * 32


def closed_url(server_cls) -> str:
    with server_cls() as srv:
        url = srv.url
    return url  # stopped: its port now refuses connections


def verify(tmp_path, spec: dict, **env) -> subprocess.CompletedProcess:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    full = {"HOME": str(tmp_path), "COMFY_CACHE_ROOT": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin",
            "MODELS_DIR": str(tmp_path / "models"), "MODEL_DOWNLOAD_CONNECTIONS": "1", **env}
    return subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "verify_models.py"), "--spec", str(path)],
                          env=full, capture_output=True, text=True, timeout=120)


def left_in(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_hub_unreachable_is_one_line_per_model_and_leaves_nothing(tmp_path):
    url = closed_url(FakeHfHub)
    host = url.split("//")[1].split(":")[0]
    proc = verify(tmp_path, {"models": [{"source": "hf://org/repo/m.safetensors", "checksum": f"sha256:{SHA}"},
                                        {"source": "hf://org/other/v.safetensors", "target_subdir": "vae"}]},
                  HF_ENDPOINT=url)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "thrown while requesting" not in proc.stderr
    errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("missing: ")]
    assert len(errors) == 2
    for line in errors:
        assert f"cannot reach {host} (" in line and "while reading the file's metadata" in line
        assert "gave up after 3 attempts" in line and "HF_ENDPOINT" in line and "COMFY_OFFLINE=1" in line
    retries = [ln for ln in proc.stderr.splitlines() if "; retry " in ln]
    assert len(retries) == 4 and len(set(retries)) == 4  # 2 per model, each logged once
    assert len(proc.stderr.splitlines()) == 4, proc.stderr
    assert left_in(tmp_path / "cache" / "store") == [] and left_in(tmp_path / "models") == []


def test_model_server_unreachable_names_the_host_and_the_fix(tmp_path):
    url = closed_url(ModelFileServer)
    proc = verify(tmp_path, {"models": [{"source": f"{url}/m.bin", "checksum": f"sha256:{SHA}"}]})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    [error] = [ln for ln in proc.stdout.splitlines() if ln.startswith("missing: ")]
    assert "cannot reach 127.0.0.1 (ConnectionError)" in error and "COMFY_OFFLINE=1" in error
    retries = [ln for ln in proc.stderr.splitlines() if "; retry " in ln]
    assert len(retries) == 4 and len(set(retries)) == 4 and retries[-1].endswith("retry 4 of 4")
    assert left_in(tmp_path / "cache" / "store") == [] and left_in(tmp_path / "models") == []


@pytest.mark.slow
def test_gcs_unreachable_is_one_line_within_the_retry_budget(tmp_path):
    url = closed_url(ModelFileServer)
    proc = verify(tmp_path, {"models": [{"source": "gs://bucket/m.bin", "checksum": f"sha256:{SHA}"}]},
                  STORAGE_EMULATOR_HOST=url)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    [error] = [ln for ln in proc.stdout.splitlines() if ln.startswith("missing: ")]
    host = url.split("//")[1]
    assert error.startswith(f"missing: gs://bucket/m.bin: cannot reach {host} (") and "COMFY_OFFLINE=1" in error
    assert left_in(tmp_path / "cache" / "store") == [] and left_in(tmp_path / "models") == []
