"""Helpers shared by the benchmarks: statistics, a ComfyUI home to run, timed subprocess starts."""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FAKE = REPO / "tests" / "fakes" / "comfyui"


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(0.95 * (len(s) - 1))))]


def fake_home(root: Path) -> Path:
    """A runnable copy of the fake ComfyUI (symlinked data resolved)."""
    home = root / "ComfyUI"
    if not home.exists():
        shutil.copytree(FAKE, home, ignore=shutil.ignore_patterns("__pycache__", "input", "output", "temp", "user"))
        if not (home / "object_info.json.gz").exists():
            shutil.copy2(REPO / "tests" / "data" / "protocol" / "object_info.json.gz", home / "object_info.json.gz")
    return home


TEMP_DIRS: list[Path] = []


def temp_dir(prefix: str) -> Path:
    """A temporary folder removed by ``cleanup()`` at the end of the benchmark."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    TEMP_DIRS.append(path)
    return path


def cleanup() -> None:
    while TEMP_DIRS:
        shutil.rmtree(TEMP_DIRS.pop(), ignore_errors=True)


def comfy_target(args) -> tuple[Path, str, str]:
    """(COMFY_HOME, python, label): the real ComfyUI when --comfy-dir/COMFYUI_DIR is given, else the fake."""
    if args.comfy_dir:
        return Path(args.comfy_dir), args.comfy_python or sys.executable, f"real ComfyUI at {args.comfy_dir}"
    return fake_home(temp_dir("bench-comfy-")), sys.executable, "fake ComfyUI"


def add_comfy_args(p) -> None:
    p.add_argument("--comfy-dir", default=os.environ.get("COMFYUI_DIR"), help="a real ComfyUI checkout (COMFYUI_DIR)")
    p.add_argument("--comfy-python", default=os.environ.get("COMFYUI_PYTHON"), help="its python (COMFYUI_PYTHON)")


def wait_http(url: str, deadline: float, proc: subprocess.Popen | None = None) -> None:
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
            if time.monotonic() > deadline:
                raise TimeoutError(url)
            time.sleep(0.01)


def worker_env(home: Path, python: str, io_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    env.update(PYTHONPATH=str(REPO), COMFY_HOME=str(home), COMFY_PYTHON=python, COMFY_PORT="0",
               COMFY_IO_DIR=str(io_dir), COMFY_CACHE_ROOT=str(io_dir / "cache"), PYTHONUNBUFFERED="1",
               LOG_LEVEL="INFO")
    env.update(extra)
    return env


def queued_job_run(home: Path, python: str, job_input: dict, env_extra: dict[str, str], *,
                   take_latency: float = 0.05) -> tuple[float, dict]:
    """Spawn ``python -m rp_handler`` in RunPod's production loop against the fake job API with one job
    queued; seconds from spawn to the result POST, and the job's output. Stops the worker with SIGTERM."""
    from tests.worker.fake_runpod_api import FakeRunPodApi

    api = FakeRunPodApi(take_latency_s=take_latency)
    io_dir = Path(tempfile.mkdtemp(prefix="coldstart-"))
    env = worker_env(home, python, io_dir, **env_extra, **api.env())
    api.queue("cold-1", job_input)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "rp_handler"], cwd=str(REPO), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        result = api.wait_result("cold-1", 600)
        elapsed = api.result_times["cold-1"] - t0
        if "error" in result:
            raise RuntimeError(f"worker failed: {result['error']}")
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        return elapsed, result["output"]
    finally:
        if proc.poll() is None:
            proc.kill()
        api.close()
        shutil.rmtree(io_dir, ignore_errors=True)


def run_worker_once(env: dict[str, str], job: dict, timeout: float = 300) -> tuple[float, dict]:
    """Spawn ``python -m rp_handler --test_input JOB``; seconds until its result line, and the result."""
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "rp_handler", "--test_input", json.dumps(job)], cwd=str(REPO),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    result = None
    elapsed = None
    tail: list[str] = []
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        if "Job result: " in line and result is None:
            elapsed = time.monotonic() - t0
            result = ast.literal_eval(line.split("Job result: ", 1)[1])
        if time.monotonic() - t0 > timeout:
            proc.kill()
            break
    proc.wait(60)
    if result is None or elapsed is None:
        raise RuntimeError("worker gave no result:\n" + "".join(tail))
    return elapsed, result


def boot_plus_job(home: Path, python: str, io_dir: Path, workflow: dict, env_extra: dict[str, str]) -> tuple[float, float]:
    """Baseline: spawn ComfyUI's main.py the way the worker does, wait for /system_stats, run one job with
    the bare client. Returns (boot seconds, boot + job seconds)."""
    sys.path.insert(0, str(REPO))
    from bench._bare import BareClient
    from rp_handler.process import free_port

    port = free_port()
    env = {**os.environ, **env_extra}
    for sub in ("input", "output", "temp", "user"):
        (io_dir / sub).mkdir(parents=True, exist_ok=True)  # ComfyUI refuses a missing --user-directory
    cmd = [python, "-u", str(home / "main.py"), "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
           "--cpu", "--input-directory", str(io_dir / "input"), "--output-directory", str(io_dir / "output"),
           "--temp-directory", str(io_dir / "temp"), "--user-directory", str(io_dir / "user")]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=str(home), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/system_stats", t0 + 300, proc)
        boot = time.monotonic() - t0
        client = BareClient(f"http://127.0.0.1:{port}")
        client.run(workflow)
        total = time.monotonic() - t0
        client.close()
        return boot, total
    finally:
        proc.terminate()
        proc.wait(30)
