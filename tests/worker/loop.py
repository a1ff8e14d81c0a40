"""``python -m rp_handler`` in runpod's production job loop against ``FakeRunPodApi``, for tests and benches.

``worker_loop(env, api)`` spawns the worker with its ComfyUI on a known port (``WorkerLoop.comfy_url``),
waits until that ComfyUI answers, and stops the worker with SIGTERM at the end. Helpers read
ComfyUI's queue and history the way an observer would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rp_handler.process import free_port
from tests.helpers import wait_until_answers

REPO = Path(__file__).resolve().parents[2]


@dataclass
class WorkerLoop:
    proc: subprocess.Popen
    comfy_url: str
    log: Path

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.comfy_url + path, timeout=10) as resp:
            return json.loads(resp.read() or b"{}")

    def history(self) -> dict:
        return self.get("/history")

    def queue(self) -> dict:
        return self.get("/queue")

    def interrupted(self, timeout: float) -> dict[str, float]:
        """Wait for at least one prompt interrupted; prompt id -> ``execution_interrupted`` timestamp (s)."""
        deadline = time.monotonic() + timeout
        while True:
            found = interrupted_prompts(self.history())
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


def interrupted_prompts(history: dict) -> dict[str, float]:
    out = {}
    for pid, entry in history.items():
        for kind, data in (entry.get("status") or {}).get("messages") or []:
            if kind == "execution_interrupted":
                out[pid] = data["timestamp"] / 1000.0
    return out


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    return struct.unpack(">II", data[16:24])


def blur_chain(n: int, color: int, size: int) -> dict:
    wf = {"0": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1, "color": color}}}
    for i in range(1, n + 1):
        wf[str(i)] = {"class_type": "ImageBlur", "inputs": {"image": [str(i - 1), 0], "blur_radius": 9, "sigma": 3.0}}
    wf[str(n + 1)] = {"class_type": "SaveImage", "inputs": {"images": [str(n), 0], "filename_prefix": "stopme"}}
    return wf


def small_job(color: int) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": color}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "next"}}}


def worker_env_for(home: Path, python: str, root: Path, api_env: dict[str, str], real: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    env.update(PYTHONPATH=str(REPO), COMFY_HOME=str(home), COMFY_PYTHON=python, COMFY_FORCE_CPU="true",
               COMFY_IO_DIR=str(root / "io"), COMFY_CACHE_ROOT=str(root / "cache"), HOME=str(root),
               MODELS_DIR=str(root / "models"), PROGRESS_INTERVAL_S="0", COMFY_BOOT_TIMEOUT_S="240", **api_env)
    if real:
        env["COMFY_EXTRA_ARGS"] = f"--database-url sqlite:///{root / 'io' / 'user' / 'comfyui.db'}"
    else:
        env["FAKE_COMFY_FAULTS"] = json.dumps({"class_delay_s": {"ImageBlur": 0.25}})
    return env


@contextlib.contextmanager
def worker_loop(env: dict[str, str], log: Path, *, boot_timeout: float = 240) -> Iterator[WorkerLoop]:
    """Spawn the worker (``env`` holds the fake API's variables); its ComfyUI gets a free port."""
    port = free_port()
    env = {**env, "COMFY_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "rp_handler"], cwd=str(REPO), env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    loop = WorkerLoop(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_until_answers(loop.comfy_url + "/system_stats", timeout=boot_timeout, proc=proc, log=log)
        yield loop
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
