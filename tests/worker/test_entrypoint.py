"""``python -m rp_handler`` under the runpod SDK's own local paths, ComfyUI = the fake's main.py."""

from __future__ import annotations

import ast
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rp_handler.process import free_port
from tests.helpers import wait_until_answers
from tests.worker.conftest import copy_fake, post_json

pytestmark = pytest.mark.slow  # the worker as a process (`python -m rp_handler`) against the fake ComfyUI

REPO = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")} | {"RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true"}
    env.update(PYTHONPATH=str(REPO), COMFY_HOME=str(copy_fake(tmp_path / "ComfyUI")), COMFY_PORT="0",
               COMFY_FORCE_CPU="true", COMFY_CACHE_ROOT=str(tmp_path / "cache"), COMFY_IO_DIR=str(tmp_path / "io"),
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _job_result(stdout: str) -> dict:
    line = next(line for line in stdout.splitlines() if "Job result: " in line)
    return ast.literal_eval(line.split("Job result: ", 1)[1])


def test_test_input_json_in_cwd(tmp_path):
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "test_input.json").write_text((REPO / "test_input.json").read_text())
    proc = subprocess.run([sys.executable, "-m", "rp_handler"], cwd=work, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = _job_result(proc.stdout)["output"]
    assert base64.b64decode(result["outputs"][0]["data"])[:4] == b"\x89PNG"
    cold = result["timings"]["cold_start"]
    assert cold["imports_done"] <= cold["comfy_spawned"] <= cold["runpod_imported"] <= cold["result_returned"]
    assert cold["comfy_ready"] <= cold["submitted"]
    assert "job local_test ok: total=" in proc.stdout  # the one line per job
    assert not any((tmp_path / "io" / "output").rglob("*.png"))


def test_test_input_argument_error_exits_1(tmp_path):
    bad = json.dumps({"input": {"workflow": {"nodes": [], "links": []}}})
    proc = subprocess.run([sys.executable, "-m", "rp_handler", "--test_input", bad], cwd=tmp_path,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Save (API)" in proc.stdout + proc.stderr


def _post(url: str, body: dict, timeout: float = 60) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=timeout).read())


@pytest.mark.slow
def test_serve_api_runsync_crash_restart_and_sigterm(tmp_path):
    api_port, comfy_port = free_port(), free_port()
    env = _env(tmp_path, COMFY_PORT=str(comfy_port))
    log = open(tmp_path / "worker.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "rp_handler", "--rp_serve_api", "--rp_api_host", "127.0.0.1",
                             "--rp_api_port", str(api_port)], cwd=tmp_path, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{api_port}"
    try:
        wait_until_answers(f"{base}/docs", timeout=60, proc=proc, log=tmp_path / "worker.log")
        test_input = json.loads((REPO / "test_input.json").read_text())
        ok = _post(f"{base}/runsync", test_input)
        assert ok["status"] == "COMPLETED", ok
        assert base64.b64decode(ok["output"]["outputs"][0]["data"])[:4] == b"\x89PNG"

        bad = _post(f"{base}/runsync", {"input": {"workflow": {"1": {"class_type": "Nope", "inputs": {}}}}})
        assert bad["status"] == "FAILED" and "Nope" in bad["error"]

        status = _post(f"{base}/runsync", {"input": {"action": "status"}})["output"]
        first_pid = status["comfy"]["pid"]
        assert status["comfy"]["ready"] and status["comfy"]["url"].endswith(f":{comfy_port}")

        post_json(f"http://127.0.0.1:{comfy_port}/__fake__/faults", {"die_during_prompt": 1})
        died = _post(f"{base}/runsync", test_input)
        # JOB_RETRIES=1 (default): the job runs again on the restarted ComfyUI and says what happened first
        assert died["status"] == "COMPLETED", died
        first = died["output"]["retried"][0]
        assert first["details"]["code"] == "comfy_died" and "ComfyUI exited with code 1" in first["error"]
        assert "die_during_prompt" in first["error"]  # the last log line is in the one-line error
        assert base64.b64decode(died["output"]["outputs"][0]["data"])[:4] == b"\x89PNG"

        again = _post(f"{base}/runsync", test_input)
        assert again["status"] == "COMPLETED", again
        status = _post(f"{base}/runsync", {"input": {"action": "status"}})["output"]
        new_pid = status["comfy"]["pid"]
        assert new_pid != first_pid and status["comfy"]["restarts"] == 1

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 128 + signal.SIGTERM  # uvicorn re-raises SIGTERM after its shutdown
        with pytest.raises(ProcessLookupError):
            for _ in range(50):
                os.kill(new_pid, 0)  # ComfyUI must be gone too
                time.sleep(0.1)
        text = (tmp_path / "worker.log").read_text()
        assert "signal 15: forwarding to ComfyUI" in text
        assert "Stopped server" in text  # the fake logged its own graceful SIGTERM shutdown
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


def test_sigterm_during_a_job_reaches_comfyui(tmp_path):
    env = _env(tmp_path, FAKE_COMFY_FAULTS=json.dumps({"node_delay_s": 30}))
    job = (REPO / "test_input.json").read_text()
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rp_handler", "--test_input", job], cwd=tmp_path, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while "submitted (3 nodes)" not in log_path.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.05)
            text = log_path.read_text()
            comfy_pid = int(text.split("ComfyUI (pid ", 1)[1].split(")", 1)[0]) if "ComfyUI (pid " in text else None
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 128 + signal.SIGTERM
            assert time.monotonic() - started < 15  # did not wait for the 30 s node
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log_path.read_text()
    assert "forwarding signal 15 to ComfyUI" in text and "Stopped server" in text
    pid = int(text.split("forwarding signal 15 to ComfyUI (pid ", 1)[1].split(")", 1)[0])
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert comfy_pid is None or comfy_pid == pid


@pytest.mark.slow
def test_production_loop_against_a_fake_runpod_api(tmp_path):
    """runpod's real job loop: job-take → handler → progress + result POSTs; SIGTERM chained to ComfyUI."""
    from tests.worker.fake_runpod_api import FakeRunPodApi

    api = FakeRunPodApi()
    env = _env(tmp_path, PROGRESS_INTERVAL_S="0", FAKE_COMFY_FAULTS=json.dumps({"node_delay_s": 0.3}), **api.env())
    job = json.loads((REPO / "test_input.json").read_text())["input"]
    api.queue("job-a", job)
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rp_handler"], cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            result = api.wait_result("job-a", 90)
            assert "error" not in result, result
            assert base64.b64decode(result["output"]["outputs"][0]["data"])[:4] == b"\x89PNG"
            assert "cold_start" in result["output"]["timings"]
            api.queue("job-b", {"workflow": {"nodes": [], "links": []}})
            bad = api.wait_result("job-b", 60)
            assert "Save (API)" in bad["error"]
            seqs = [p["seq"] for p in api.progress.get("job-a", [])]
            assert seqs and seqs == sorted(seqs)  # progress reached RunPod, in order
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
            api.close()
    text = log_path.read_text()
    assert "forwarding signal 15 to ComfyUI" in text and "Stopped server" in text, text[-3000:]


@pytest.mark.parametrize("raw, says", [
    ('{"input": {"action": ', "--test_input is not valid JSON (Expecting value"),
    ('["input"]', '--test_input must be a JSON object with an "input" object'),
])
def test_malformed_test_input_is_one_line_before_runpod_or_comfyui(tmp_path, raw, says):
    proc = subprocess.run([sys.executable, "-m", "rp_handler", "--test_input", raw], cwd=tmp_path,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {says}") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and "starting ComfyUI" not in proc.stdout


def test_no_comfyui_at_comfy_home_is_one_line_and_debug_shows_the_traceback(tmp_path):
    env = _env(tmp_path, COMFY_HOME=str(tmp_path / "nothing-here"))
    status = '{"input": {"action": "status"}}'
    proc = subprocess.run([sys.executable, "-m", "rp_handler", "--test_input", status], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr == (f"error: no ComfyUI at {tmp_path / 'nothing-here'} (main.py missing): realize the version "
                           "first (scripts/version.py realize <id>) or set COMFY_HOME\n")
    assert "Traceback" not in proc.stdout and "; cache " in proc.stdout  # the paths line, logged once
    debug = subprocess.run([sys.executable, "-m", "rp_handler", "--test_input", status], cwd=tmp_path,
                           env=env | {"LOG_LEVEL": "DEBUG"}, capture_output=True, text=True, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_plain_python3_reexecs_in_the_project_venv(tmp_path):
    """python3 without the pinned packages: builder.entry re-runs the command with .venv/bin/python."""
    bare = subprocess.run(["python3", "-I", "-c", "import tenacity"], capture_output=True)
    if bare.returncode == 0:
        pytest.skip("this python3 has the pinned packages; nothing to re-exec")
    env = _env(tmp_path, COMFY_HOME=str(tmp_path / "nothing-here"))
    proc = subprocess.run(["python3", "-m", "rp_handler", "--test_input", "{"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --test_input is not valid JSON"), proc.stderr
    for script in ("version.py", "verify_models.py", "submit.py"):
        out = subprocess.run(["python3", f"scripts/{script}", "--help"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.startswith("usage: "), out.stderr
