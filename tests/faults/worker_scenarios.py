"""Faults of ComfyUI seen by the worker: one supervised fake ComfyUI reused across trials.

Every trial: set the fault on the fake, run a job (it must end with the right outputs or a clear
one-line error), clear the fault, run the next job (it must succeed), then check that no output
was lost or duplicated (result vs. the fake's /history) and that nothing half-written is left.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.fakes.comfyui.pngfile import decode_png
from tests.faults.harness import assert_one_line_error, half_written
from tests.worker.conftest import LiveWorker

BATCH = 2


def workflow(color: int, *, batch: int = BATCH, blur: bool = False) -> dict:
    wf: dict[str, Any] = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": batch, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "fault"}},
    }
    if blur:  # EmptyImage → ImageBlur (slow with class_delay_s) → SaveImage: an interrupt lands mid-prompt
        wf["3"] = {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}}
        wf["2"]["inputs"]["images"] = ["3", 0]
    return wf


def history(url: str, prompt_id: str) -> dict:
    with urllib.request.urlopen(f"{url}/history/{prompt_id}", timeout=10) as resp:
        return json.loads(resp.read()).get(prompt_id, {})


def check_outputs(w: LiveWorker, res: dict, color: int, *, batch: int = BATCH) -> None:
    """Right result: every image the fake wrote is in the result exactly once, with its pixels."""
    assert "error" not in res, f"job failed: {res.get('error')}"
    hist = history(w.url, res["prompt_id"])
    wrote = sorted((node, img["filename"]) for node, out in (hist.get("outputs") or {}).items()
                   for img in out.get("images", []) if img.get("type") == "output")
    got = sorted((o["node"], o["filename"]) for o in res["outputs"] if o.get("type") == "output")
    assert len(wrote) == batch, f"the fake wrote {wrote}"
    assert got == wrote, f"outputs lost or duplicated: result {got}, ComfyUI wrote {wrote}"
    want = bytes(((color >> 16) & 255, (color >> 8) & 255, color & 255))
    for out in res["outputs"]:
        img = decode_png(base64.b64decode(out["data"]))
        assert bytes(img.data[:3]) == want, f"{out['filename']}: pixel {bytes(img.data[:3])!r}, expected {want!r}"


def check_clean(w: LiveWorker) -> None:
    dirs = w.ctx.dirs
    left = half_written(dirs.input, dirs.output, dirs.temp, w.sup.proc.comfy_home)
    assert not left, f"half-written files left: {left[:5]}"
    for d in (dirs.input, dirs.output):
        jobs = d / "jobs"
        stale = [p for p in jobs.rglob("*")] if jobs.exists() else []
        assert not stale, f"job files left in {jobs}: {stale[:5]}"
    temps = [p for p in dirs.temp.rglob("*") if p.is_file()] if dirs.temp.exists() else []
    assert not temps, f"temp files left: {temps[:5]}"


class ComfyFault:
    """One fault of the fake ComfyUI (``faults``), one expectation for the faulty job."""

    bound_s = 20.0

    def __init__(self, name: str, faults: dict, *, expect: str, codes: tuple[str, ...] = (),
                 timeout_s: float | None = None, blur: bool = False, error_words: tuple[str, ...] = (),
                 restarts: bool | None = None, grace_s: float = 0.3, env: dict[str, str] | None = None,
                 retried: tuple[str, ...] = (), freeze: str = ""):
        self.name, self.faults, self.expect, self.codes = name, faults, expect, codes
        self.timeout_s, self.blur, self.error_words = timeout_s, blur, error_words
        self.restarts, self.grace_s = restarts, grace_s  # restarts: must ComfyUI be restarted (None: either)
        self.env, self.retried = dict(env or {}), retried  # retried: codes the first attempt must report
        self.freeze = freeze  # "mid-job" / "idle": SIGSTOP the fake ComfyUI process from outside
        self.ci_trials = 5 if freeze else 20
        self.w: LiveWorker | None = None

    def setup(self, root: Path) -> None:
        import rp_handler.handler as handler_module

        # The worker deletes its history entries in batches; keep them for check_outputs to read.
        self._batch, handler_module.HISTORY_DELETE_BATCH = handler_module.HISTORY_DELETE_BATCH, 10**9
        env = {"COMFY_MAX_RESTARTS": "1000", "COMFY_INTERRUPT_GRACE_S": str(self.grace_s), **self.env}
        self.w = LiveWorker(root, **env)  # COMFY_MAX_RESTARTS=0 in env: kills on purpose must not count

    def teardown(self) -> None:
        import rp_handler.handler as handler_module

        handler_module.HISTORY_DELETE_BATCH = getattr(self, "_batch", handler_module.HISTORY_DELETE_BATCH)
        if self.w is not None:
            self.w.close()

    def _run_faulty(self, w: LiveWorker, job: dict, job_id: str) -> dict:
        if self.freeze == "idle":
            os.kill(w.sup.proc.pid, signal.SIGSTOP)
        if self.freeze != "mid-job":
            return w.run(job, job_id)
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(w.run(job, job_id)), daemon=True)
        runner.start()
        end = time.monotonic() + 10
        while not json.loads(urllib.request.urlopen(f"{w.url}/queue", timeout=5).read())["queue_running"]:
            assert time.monotonic() < end and runner.is_alive(), "the prompt never started running"
            time.sleep(0.01)
        os.kill(w.sup.proc.pid, signal.SIGSTOP)
        runner.join(self.bound_s)
        assert not runner.is_alive(), "the job never returned"
        return result

    def trial(self, i: int) -> None:
        w = self.w
        assert w is not None
        w.sup.ensure_ready(30)
        color = 0x102030 + i * 0x010101
        w.faults(self.faults)
        pid = w.sup.proc.pid
        job: dict[str, Any] = {"workflow": workflow(color, blur=self.blur)}
        if self.timeout_s is not None:
            job["timeout_s"] = self.timeout_s
        try:
            res = self._run_faulty(w, job, f"{self.name}-{i}")
        finally:
            w.sup.ensure_ready(30)  # a restarted ComfyUI starts without faults
            w.faults({})
        if self.expect == "ok":
            check_outputs(w, res, color)
            got = tuple(r["details"]["code"] for r in res.get("retried", ()))
            assert got == self.retried, f"first attempts reported {got}, expected {self.retried}"
        else:
            assert_one_line_error(res, self.codes)
            for word in self.error_words:
                assert word in res["error"], f"{word!r} not in {res['error']!r}"
        if self.restarts is not None:
            assert (w.sup.proc.pid != pid) == self.restarts, \
                f"ComfyUI {'was not' if self.restarts else 'was'} restarted (pid {pid} → {w.sup.proc.pid})"
        check_clean(w)
        color2 = color ^ 0xFFFFFF
        nxt = w.run({"workflow": workflow(color2)}, f"{self.name}-{i}-next")
        check_outputs(w, nxt, color2)
        check_clean(w)


def comfy_scenarios() -> list:
    return [
        ComfyFault("comfy killed mid-job (retried once)", {"die_during_prompt": 1}, expect="ok",
                   retried=("comfy_died",), restarts=True),
        ComfyFault("comfy killed mid-job (JOB_RETRIES=0)", {"die_during_prompt": 1}, expect="error",
                   codes=("comfy_died",), error_words=("ComfyUI exited",), restarts=True,
                   env={"JOB_RETRIES": "0"}),
        ComfyFault("comfy hangs (alive, silent)", {"hang": True}, expect="error", codes=("timeout",),
                   timeout_s=0.3, error_words=("restarted",), restarts=True),
        ComfyFault("ws dropped before completion", {"drop_ws_before_completion": True}, expect="ok", restarts=False),
        ComfyFault("ws dropped after completion", {"drop_ws_after_completion": True}, expect="ok", restarts=False),
        ComfyFault("history late after completion", {"history_delay_s": 0.3}, expect="ok", restarts=False),
        ComfyFault("job deadline passed", {"class_delay_s": {"ImageBlur": 0.5}}, expect="error", codes=("timeout",),
                   timeout_s=0.15, blur=True, error_words=("deadline", "interrupted"), restarts=False, grace_s=3.0),
        ComfyFault("comfy frozen mid-job (SIGSTOP)", {"node_delay_s": 30}, expect="error", codes=("timeout",),
                   timeout_s=0.5, error_words=("unresponsive", "restarted"), restarts=True, freeze="mid-job",
                   env={"COMFY_MAX_RESTARTS": "0"}),
        ComfyFault("comfy frozen while idle (SIGSTOP)", {}, expect="ok", restarts=True, freeze="idle",
                   env={"COMFY_MAX_RESTARTS": "0", "COMFY_PROBE_TIMEOUT_S": "0.3"}),
        ComfyFault("interrupt ignored", {"ignore_interrupt": True, "node_delay_s": 30}, expect="error",
                   codes=("timeout",), timeout_s=0.3, error_words=("ignored the interrupt",), restarts=True),
    ]
