"""SIGTERM to the worker process (``python -m rp_handler``) while a job runs.

Each trial starts a worker in RunPod's job loop (against a stand-in job API), in the same folders
as the last one, runs a good job (the recovery from the previous trial's SIGTERM), starts a slow job, sends SIGTERM
once the prompt is submitted, and checks: the worker exits promptly with 128+15, its ComfyUI is
gone, and nothing half-written is left in ComfyUI's folders.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rp_handler.process import free_port
from tests.faults.fake_job_api import FakeJobApi
from tests.faults.harness import half_written
from tests.worker.conftest import copy_fake, post_json

REPO = Path(__file__).resolve().parents[2]
JOB = {"input": {"workflow": {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 2, "color": 0x334455}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "term"}}}}}


def _gone(pid: int, within: float) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


class SigtermDuringJob:
    name = "SIGTERM during a job"
    bound_s = 60.0
    ci_trials = 5  # each trial boots a whole worker (runpod + ComfyUI): 5 in CI unless FAULT_TRIALS is set

    def setup(self, root: Path) -> None:
        self.root = root
        self.home = copy_fake(root / "ComfyUI")
        self.io = root / "io"

    def teardown(self) -> None:
        pass

    def _env(self, comfy_port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "FAKE_COMFY"))}
        env.update(PYTHONPATH=str(REPO), COMFY_HOME=str(self.home), COMFY_PORT=str(comfy_port),
                   COMFY_FORCE_CPU="true", COMFY_CACHE_ROOT=str(self.root / "cache"), COMFY_IO_DIR=str(self.io),
                   PYTHONUNBUFFERED="1", RUNPOD_SKIP_AUTO_SYSTEM_CHECKS="true")  # its checks dial 8.8.8.8
        return env

    def trial(self, i: int) -> None:
        comfy_port = free_port()
        log_path = self.root / f"worker-{i}.log"
        text = lambda: log_path.read_text(errors="replace")  # noqa: E731
        with FakeJobApi() as api, open(log_path, "w") as log:
            good, slow = f"good-{i}", f"slow-{i}"
            api.put(good, JOB["input"])
            env = {**self._env(comfy_port), **api.env()}
            proc = subprocess.Popen([sys.executable, "-m", "rp_handler"], cwd=self.root, env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
            try:
                res = api.wait_result(good, 45)  # the job after the previous trial's SIGTERM
                assert res is not None, f"no result for the good job; log: {text()[-2000:]}"
                outs = res.get("output", {}).get("outputs") or []
                assert len(outs) == 2 and len({o["filename"] for o in outs}) == 2, str(res)[:500]
                assert all(base64.b64decode(o["data"])[:4] == b"\x89PNG" for o in outs)
                api.put(f"status-{i}", {"action": "status"})
                status = api.wait_result(f"status-{i}", 30)
                assert status is not None, text()[-2000:]
                comfy_pid = status["output"]["comfy"]["pid"]
                post_json(f"http://127.0.0.1:{comfy_port}/__fake__/faults", {"node_delay_s": 30})
                api.put(slow, JOB["input"])
                deadline = time.monotonic() + 30
                while f"job {slow}: prompt" not in text():
                    assert proc.poll() is None and time.monotonic() < deadline, text()[-2000:]
                    time.sleep(0.02)
                proc.send_signal(signal.SIGTERM)
                rc = proc.wait(15)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        assert rc in (0, 128 + signal.SIGTERM), f"worker exit code {rc}; log: {text()[-1500:]}"
        assert _gone(comfy_pid, 10), f"ComfyUI (pid {comfy_pid}) outlived the worker"
        assert "forwarding signal 15 to ComfyUI" in text() or "signal 15: forwarding" in text()
        if slow in api.results:  # reported before the worker exited: a clear, retryable error
            res = api.results[slow][0]
            assert "error" in res and "\n" not in res["error"], f"a stopped job reported {str(res)[:300]}"
            assert "shutting down (signal 15)" in res["error"], res["error"]
        left = half_written(self.io, self.home)
        assert not left, f"half-written files: {left[:5]}"
