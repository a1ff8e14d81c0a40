"""Faults of a real ComfyUI, injected from outside the worker (signals, ``ss -K``, a tmpfs, HTTP).

One supervised real ComfyUI (COMFYUI_DIR/COMFYUI_PYTHON, on CPU) serves every scenario. A trial:
start a job, inject the fault once ComfyUI runs the prompt (or before the job, for the idle ones),
then check the faulty job's answer (the right image, or a one-line error with the expected code),
its time (``result_bound_s``: deadline + grace + restart), that the next job succeeds, that no
output was lost or duplicated (result vs. ComfyUI's /history) and that nothing is left behind
(job folders, temp files, half-written files, the killed ComfyUI process).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import struct
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from tests.faults.harness import assert_one_line_error
from tests.faults.worker_scenarios import check_clean
from tests.helpers import COMFYUI_PYTHON, TINY_MODEL
from tests.worker.conftest import make_cfg

SIZE = 512  # EmptyImage → ImageBlur (radius 31) takes a few seconds on CPU: faults land mid-prompt
BOOT_S = 90.0  # a restart of the real ComfyUI on a busy 2-core box, with margin
TIMEOUT_S = 6  # the frozen-ComfyUI job of issue 12
GRACE_S = 5.0


def slow_workflow(color: int) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1, "color": color}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 31, "sigma": 10.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "fault"}},
    }


def missing_model_workflow() -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "not_there.safetensors"}},
        "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "fault"}},
    }


def _get(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", data[:16]
    return struct.unpack(">II", data[16:24])


class RealFaultWorker:
    """A supervised real ComfyUI plus the WorkerContext ``main`` builds (no runpod loop)."""

    def __init__(self, root: Path):
        from rp_handler.context import WorkerContext
        from rp_handler.main import client_factory, start_comfy
        from tests.worker.test_real_comfy_worker import comfy_env

        self.root = root
        models = root / "models" / "upscale_models"
        models.mkdir(parents=True)
        subprocess.run([COMFYUI_PYTHON, "-c", TINY_MODEL, str(models / "tiny_compact_2x.safetensors")],
                       check=True, timeout=120)
        env = {**comfy_env(root), "COMFY_MAX_RESTARTS": "1000", "COMFY_INTERRUPT_GRACE_S": str(GRACE_S),
               "COMFY_BOOT_TIMEOUT_S": str(BOOT_S)}
        self.cfg = make_cfg(root, **env)
        self.sup = start_comfy(self.cfg, io_dir=root / "io")
        self.ctx = WorkerContext(cfg=self.cfg, dirs=self.sup.proc.dirs, client_factory=client_factory(self.sup),
                                 supervisor=self.sup, version_id="real-faults")
        self.sup.ensure_ready(240)

    @property
    def url(self) -> str:
        return self.sup.proc.url

    def run(self, job_input: dict, job_id: str) -> dict:
        from rp_handler.handler import handle

        result = handle({"id": job_id, "input": job_input}, self.ctx)
        json.dumps(result)
        return result

    def wait_running(self, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while not _get(f"{self.url}/queue")["queue_running"]:
            assert time.monotonic() < end, "the prompt never started running"
            time.sleep(0.05)

    def close(self) -> None:
        self.ctx.close()
        self.sup.stop(timeout=20)


def check_image(w: RealFaultWorker, res: dict) -> None:
    """The right result: ComfyUI's one image, in the result exactly once, SIZE x SIZE."""
    assert "error" not in res, f"job failed: {res.get('error')}"
    hist = _get(f"{w.url}/history/{res['prompt_id']}").get(res["prompt_id"], {})
    wrote = sorted((node, img["filename"]) for node, out in (hist.get("outputs") or {}).items()
                   for img in out.get("images", []) if img.get("type") == "output")
    got = sorted((o["node"], o["filename"]) for o in res["outputs"] if o.get("type") == "output")
    assert len(wrote) == 1 and got == wrote, f"outputs lost or duplicated: result {got}, ComfyUI wrote {wrote}"
    assert png_size(base64.b64decode(res["outputs"][0]["data"])) == (SIZE, SIZE)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


@contextlib.contextmanager
def full_disk(folder: Path, size: str = "256k"):
    """A small tmpfs over ``folder``, filled up, for the duration."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True,
                   capture_output=True)
    try:
        with open(folder / "filler", "wb", buffering=0) as fh, contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 4096)
        yield
    finally:
        (folder / "filler").unlink(missing_ok=True)
        left = [p for p in folder.rglob("*") if p.is_file()]
        subprocess.run(["umount", str(folder)], check=True, capture_output=True)
        assert not left, f"files left on the full disk: {left[:5]}"


class RealFault:
    """One fault of the real ComfyUI; ``inject(w)`` runs once the prompt runs (``idle``: before the job)."""

    def __init__(self, name: str, inject: Callable[[RealFaultWorker], Any], *, expect: str,
                 codes: tuple[str, ...] = (), words: tuple[str, ...] = (), timeout_s: float = 300,
                 restarts: bool = False, idle: bool = False, retried: tuple[str, ...] = (),
                 workflow: Callable[[int], dict] = slow_workflow, during: Callable | None = None,
                 result_bound_s: float = 60.0):
        self.name, self.inject, self.expect, self.codes, self.words = name, inject, expect, codes, words
        self.timeout_s, self.restarts, self.idle, self.retried = timeout_s, restarts, idle, retried
        self.workflow, self.during, self.result_bound_s = workflow, during, result_bound_s
        self.bound_s = result_bound_s + BOOT_S + 60  # the whole trial, next job included
        self.worker: RealFaultWorker | None = None  # shared; set by the caller, else owned
        self._owned = False
        self.last_result_s = 0.0
        self.last_next_ok = False
        self.last_answer = ""  # the faulty job's error line, or "ok"

    def setup(self, root: Path) -> None:
        import rp_handler.handler as handler_module

        # The worker deletes its history entries in batches; keep them for check_image to read.
        self._batch, handler_module.HISTORY_DELETE_BATCH = handler_module.HISTORY_DELETE_BATCH, 10**9
        if self.worker is None:
            self.worker, self._owned = RealFaultWorker(root), True

    def teardown(self) -> None:
        import rp_handler.handler as handler_module

        handler_module.HISTORY_DELETE_BATCH = getattr(self, "_batch", handler_module.HISTORY_DELETE_BATCH)
        if self._owned and self.worker is not None:
            self.worker.close()
            self.worker = None

    def _faulty_job(self, w: RealFaultWorker, job: dict, job_id: str) -> dict:
        if self.idle:
            self.inject(w)
            return w.run(job, job_id)
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(w.run(job, job_id)), daemon=True)
        runner.start()
        w.wait_running()
        self.inject(w)
        runner.join(self.result_bound_s + BOOT_S)
        assert not runner.is_alive(), "the faulty job never returned"
        return result

    def trial(self, i: int) -> None:
        w = self.worker
        assert w is not None
        self.last_result_s, self.last_next_ok = 0.0, False
        w.sup.ensure_ready(BOOT_S)
        pid = w.sup.proc.pid
        color = 0x203040 + i * 0x010101
        job = {"workflow": self.workflow(color), "timeout_s": self.timeout_s}
        started = time.monotonic()
        with (self.during(w) if self.during is not None else contextlib.nullcontext()):
            res = self._faulty_job(w, job, f"real-{i}")
            self.last_result_s = time.monotonic() - started
            self.last_answer = res.get("error") or "ok"
            check_clean(w)
        if self.expect == "ok":
            check_image(w, res)
            got = tuple(r["details"]["code"] for r in res.get("retried", ()))
            assert got == self.retried, f"first attempts reported {got}, expected {self.retried}: {res.get('retried')}"
        else:
            assert_one_line_error(res, self.codes)
            assert "retried" not in res["details"], res["details"]["retried"]
            for word in self.words:
                assert word in res["error"], f"{word!r} not in {res['error']!r}"
        assert "refresh_worker" not in res, res
        assert self.last_result_s <= self.result_bound_s, \
            f"the faulty job answered after {self.last_result_s:.1f} s, over {self.result_bound_s:.0f} s"
        w.sup.ensure_ready(BOOT_S)
        assert (w.sup.proc.pid != pid) == self.restarts, f"restarted: pid {pid} → {w.sup.proc.pid}"
        if self.restarts:
            assert _gone(pid), f"the old ComfyUI (pid {pid}) is still there"
        nxt = w.run({"workflow": slow_workflow(color ^ 0xFFFFFF)}, f"real-{i}-next")
        check_image(w, nxt)
        check_clean(w)
        self.last_next_ok = True


def _signal(sig: int) -> Callable[[RealFaultWorker], None]:
    return lambda w: os.kill(w.sup.proc.pid, sig)


def _drop_tcp(w: RealFaultWorker) -> None:
    subprocess.run(["ss", "-K", "dst", "127.0.0.1", "dport", "=", str(w.sup.proc.port)], check=True,
                   capture_output=True)


def _foreign_interrupt(w: RealFaultWorker) -> None:
    req = urllib.request.Request(f"{w.url}/interrupt", data=b"{}", headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()


def real_scenarios() -> list[RealFault]:
    bound = TIMEOUT_S + GRACE_S + 5  # timeout_s + grace + a few seconds: the job does not wait for the boot
    return [
        RealFault("real: SIGKILL mid-job (retried)", _signal(signal.SIGKILL), expect="ok", restarts=True,
                  retried=("comfy_died",), result_bound_s=BOOT_S + 60),
        RealFault("real: SIGSTOP mid-job (frozen)", _signal(signal.SIGSTOP), expect="error", codes=("timeout",),
                  words=(f"timed out after {TIMEOUT_S} s", "unresponsive", "restarted"), timeout_s=TIMEOUT_S,
                  restarts=True, result_bound_s=bound),
        RealFault("real: SIGSTOP while idle", _signal(signal.SIGSTOP), expect="ok", idle=True, restarts=True,
                  result_bound_s=BOOT_S + 60),
        RealFault("real: TCP to ComfyUI dropped mid-job (ss -K)", _drop_tcp, expect="ok"),
        RealFault("real: foreign /interrupt", _foreign_interrupt, expect="error", codes=("interrupted",),
                  words=("interrupted at node",)),
        RealFault("real: missing model", lambda w: None, expect="error", idle=True,
                  codes=("execution_error", "prompt_validation"), words=("not_there.safetensors",),
                  workflow=lambda color: missing_model_workflow()),
        RealFault("real: output disk full", lambda w: None, expect="error", codes=("execution_error",),
                  words=("No space left",), idle=True, during=lambda w: full_disk(w.ctx.dirs.output)),
    ]
