"""``version.py run-handler`` / ``run-ui`` (rp_handler.localrun) on the fake ComfyUI."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rp_handler.localrun import run_handler
from rp_handler.process import free_port
from tests.helpers import wait_until_answers
from tests.worker.conftest import copy_fake

pytestmark = pytest.mark.slow  # `version.py run-handler` / `run-ui` as processes

REPO = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {"HOME": str(tmp_path / "home"), "COMFY_HOME": str(copy_fake(tmp_path / "ComfyUI")), "COMFY_PORT": "0",
           "COMFY_FORCE_CPU": "true", "COMFY_CACHE_ROOT": str(tmp_path / "cache")}
    env.update(extra)
    return env


def test_run_handler_base64_out_files(tmp_path, capsys):
    env = _env(tmp_path)
    out_png, out_json = tmp_path / "art" / "out.png", tmp_path / "art" / "result.json"
    rc = run_handler(["v1", "--workflow", str(REPO / "test_input.json"), "--output", "base64",
                      "--out-file", str(out_png)], env=env)
    assert rc == 0
    assert out_png.read_bytes()[:4] == b"\x89PNG"
    summary = json.loads(capsys.readouterr().out)
    assert summary["outputs"][0]["data"].endswith("chars)") and summary["version"] == "v1"
    # A bare API graph works too; .json writes the whole result.
    graph = tmp_path / "graph.json"
    graph.write_text(json.dumps(json.loads((REPO / "test_input.json").read_text())["input"]["workflow"]))
    assert run_handler(["v1", "--workflow", str(graph), "--out-file", str(out_json)], env=env) == 0
    result = json.loads(out_json.read_text())
    assert base64.b64decode(result["outputs"][0]["data"])[:4] == b"\x89PNG"


def test_run_handler_error_exit_code_and_gcs_without_credentials(tmp_path, capsys):
    rc = run_handler(["v1", "--workflow", str(REPO / "test_input.json"), "--output", "gcs", "--gcs-bucket", "b"],
                     env=_env(tmp_path))
    assert rc == 1
    assert "GOOGLE_APPLICATION_CREDENTIALS" in json.loads(capsys.readouterr().out)["error"]


def test_run_handler_gcs_with_emulator(tmp_path, gcs_bucket, gcs_emulator, capsys):
    client, bucket = gcs_bucket
    rc = run_handler(["v1", "--workflow", str(REPO / "test_input.json"), "--output", "gcs", "--gcs-bucket", bucket,
                      "--gcs-prefix", "cli"], env=_env(tmp_path, STORAGE_EMULATOR_HOST=gcs_emulator))
    assert rc == 0
    obj = json.loads(capsys.readouterr().out)["outputs"][0]["object"]
    assert obj.startswith("cli/local-") and client.bucket(bucket).blob(obj).exists()


def test_run_ui_listens_where_asked_with_extra_args_and_stops_on_sigterm(tmp_path):
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")} | {"RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true"}, **_env(tmp_path),
           "PYTHONPATH": str(REPO)}
    code = "import sys; from rp_handler.localrun import run_ui; sys.exit(run_ui(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "v1", "--host", "127.0.0.1", "--port", str(port),
                             "--extra-args", "--", "--preview-method", "auto"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/system_stats", timeout=60, proc=proc)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert f"is up at http://127.0.0.1:{port}" in out
    assert "--preview-method auto" in out  # passed through to main.py (the fake logs unknown flags)
    assert "--input-directory" not in out.split("starting ComfyUI:", 1)[1].splitlines()[0]  # its own folders
