"""A frozen ComfyUI (alive, silent: SIGSTOP from outside) is replaced, and kills on purpose are not crashes.

The fake ComfyUI runs as the supervised child process, so it freezes the way a real one does: its
socket still accepts connections, nothing answers.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request

from tests.worker.conftest import LiveWorker
from tests.worker.test_handler import TEST_INPUT


def _requests(url: str) -> list[tuple[str, str]]:
    with urllib.request.urlopen(f"{url}/__fake__/requests", timeout=10) as resp:
        return [tuple(x) for x in json.load(resp)]


def _running(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/queue", timeout=10) as resp:
        return bool(json.load(resp)["queue_running"])


def _run_and_freeze_mid_job(w: LiveWorker, job: dict, job_id: str) -> dict:
    """Run ``job``; SIGSTOP ComfyUI from outside once its prompt is running."""
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(w.run(job, job_id)))
    runner.start()
    end = time.monotonic() + 30
    while not _running(w.url):
        assert time.monotonic() < end and runner.is_alive(), "the prompt never started running"
        time.sleep(0.02)
    os.kill(w.sup.proc.pid, signal.SIGSTOP)
    runner.join(60)
    assert not runner.is_alive(), "the job never returned"
    return result


def test_comfy_frozen_mid_job_is_killed_and_restarted_at_the_deadline(tmp_path):
    w = LiveWorker(tmp_path, COMFY_INTERRUPT_GRACE_S="0.5", COMFY_MAX_RESTARTS="0")
    try:
        old_pid = w.sup.proc.pid
        w.faults({"node_delay_s": 30})
        res = _run_and_freeze_mid_job(w, {**TEST_INPUT, "timeout_s": 1}, "frozen")
        assert res["details"]["code"] == "timeout", res
        err = res["error"]
        assert "\n" not in err and "timed out after 1 s" in err and "unresponsive" in err and "restarted" in err, err
        assert res["details"]["comfy_restarted"] is True and "retried" not in res["details"], res
        assert "refresh_worker" not in res, res
        w.sup.ensure_ready(30)
        assert w.sup.proc.pid != old_pid
        assert ("POST", "/prompt") not in _requests(w.url), "a timed-out job was retried on the restarted ComfyUI"
        nxt = w.run(TEST_INPUT, "after-frozen")
        assert "error" not in nxt, nxt
        assert len(w.sup.crashes) == 0 and not w.sup.gave_up  # a kill on purpose is not a crash
    finally:
        w.close()


def test_comfy_frozen_while_idle_is_replaced_before_the_next_job(tmp_path):
    w = LiveWorker(tmp_path, COMFY_PROBE_TIMEOUT_S="0.5", COMFY_MAX_RESTARTS="0")
    try:
        for i in range(2):  # twice: kills on purpose never use up COMFY_MAX_RESTARTS
            assert "error" not in w.run(TEST_INPUT, f"before-{i}")
            old_pid = w.sup.proc.pid
            os.kill(old_pid, signal.SIGSTOP)
            res = w.run(TEST_INPUT, f"after-{i}")
            assert "error" not in res and "retried" not in res, res
            assert w.sup.proc.pid != old_pid
        assert w.sup.restarts == 2 and len(w.sup.crashes) == 0 and not w.sup.gave_up
        assert all("liveness probe" in why for why in w.sup.kills.values()), w.sup.kills
    finally:
        w.close()


def test_prompt_that_stops_on_the_interrupt_keeps_comfy(tmp_path):
    w = LiveWorker(tmp_path, COMFY_INTERRUPT_GRACE_S="5")
    try:
        pid = w.sup.proc.pid
        w.faults({"node_delay_s": 0.5})
        res = w.run({**TEST_INPUT, "timeout_s": 0.2}, "slow")
        assert res["details"]["code"] == "timeout" and "interrupted" in res["error"], res
        assert "restarted" not in res["error"] and w.sup.proc.pid == pid, res
    finally:
        w.close()
