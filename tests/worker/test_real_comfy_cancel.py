"""A RunPod stop on the real ComfyUI, through runpod's own job loop: the running prompt is
interrupted, a queued one removed, and the next job's result is right. Needs COMFYUI_DIR and
COMFYUI_PYTHON."""

from __future__ import annotations

import base64
import time

import pytest

from tests.helpers import COMFYUI_DIR, COMFYUI_PYTHON, REAL_COMFY_MARKS
from tests.worker.fake_runpod_api import FakeRunPodApi
from tests.worker.loop import blur_chain, png_size, small_job, worker_env_for, worker_loop

pytestmark = REAL_COMFY_MARKS


def executing(n: int):
    return lambda updates: sum(1 for u in updates if u.get("stage") == "executing") >= n


def test_stop_interrupts_the_running_prompt_removes_the_queued_one_and_the_next_job_is_right(tmp_path):
    from pathlib import Path

    api = FakeRunPodApi()
    env = worker_env_for(Path(COMFYUI_DIR), COMFYUI_PYTHON, tmp_path, api.env(), real=True)
    env["JOB_CONCURRENCY"] = "2"
    try:
        with worker_loop(env, tmp_path / "worker.log") as w:
            api.queue("running", {"workflow": blur_chain(150, 1, 512)})
            api.wait_progress("running", executing(3), 120)
            api.queue("queued", {"workflow": blur_chain(150, 2, 512)})
            deadline = time.monotonic() + 60
            while not w.queue()["queue_pending"]:
                assert time.monotonic() < deadline, "the second job's prompt never reached ComfyUI's queue"
                time.sleep(0.05)
            queued_prompt = w.queue()["queue_pending"][0][1]
            api.stop("queued")
            api.stop("running")
            stopped = w.interrupted(timeout=30)
            assert len(stopped) == 1 and queued_prompt not in stopped
            deadline = time.monotonic() + 30
            while w.queue() != {"queue_running": [], "queue_pending": []}:
                assert time.monotonic() < deadline, w.queue()
                time.sleep(0.05)
            api.queue("next", {"workflow": small_job(7), "output": "base64"})
            result = api.wait_result("next", 120)
            assert "error" not in result, result
            assert png_size(base64.b64decode(result["output"]["outputs"][0]["data"])) == (64, 48)
            assert queued_prompt not in w.history()  # never ran
            assert "running" not in api.results and "queued" not in api.results
    finally:
        api.close()
    assert not any((tmp_path / "io" / "input" / "jobs").glob("*"))
    assert not any((tmp_path / "io" / "output").rglob("*.png"))
