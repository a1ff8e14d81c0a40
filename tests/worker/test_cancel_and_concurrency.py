"""RunPod's stop channel and JOB_CONCURRENCY, through runpod's own job loop (``python -m rp_handler``
against the stand-in job API), on the fake ComfyUI."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import pytest

from tests.worker.conftest import copy_fake
from tests.worker.fake_runpod_api import FakeRunPodApi
from tests.worker.loop import interrupted_prompts, png_size, worker_loop

pytestmark = pytest.mark.slow


def chain(prefix: str, links: int, *, width: int = 64, color: int = 0, name: str = "") -> dict:
    """EmptyImage → ``links`` × ImageInvert → SaveImage, node ids ``<prefix>0..``: a job's own nodes."""
    wf = {f"{prefix}0": {"class_type": "EmptyImage",
                         "inputs": {"width": width, "height": 32, "batch_size": 1, "color": color}}}
    for i in range(1, links + 1):
        wf[f"{prefix}{i}"] = {"class_type": "ImageInvert", "inputs": {"image": [f"{prefix}{i - 1}", 0]}}
    wf[f"{prefix}{links + 1}"] = {"class_type": "SaveImage",
                                  "inputs": {"images": [f"{prefix}{links}", 0], "filename_prefix": name or prefix}}
    return wf


def env_for(tmp_path: Path, api: FakeRunPodApi, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[2]), COMFY_HOME=str(copy_fake(tmp_path / "ComfyUI")),
               COMFY_FORCE_CPU="true", COMFY_CACHE_ROOT=str(tmp_path / "cache"), COMFY_IO_DIR=str(tmp_path / "io"),
               PROGRESS_INTERVAL_S="0", **api.env())
    env.update(extra)
    return env


def executing(n: int):
    return lambda updates: sum(1 for u in updates if u.get("stage") == "executing") >= n


def job_files(tmp_path: Path) -> list[Path]:
    return [p for sub in ("input", "output") for p in (tmp_path / "io" / sub / "jobs").glob("*")]


def test_a_stopped_job_interrupts_its_prompt_and_the_next_job_is_unaffected(tmp_path):
    api = FakeRunPodApi()
    faults = {"class_delay_s": {"ImageInvert": 0.3}}
    env = env_for(tmp_path, api, FAKE_COMFY_FAULTS=json.dumps(faults))
    try:
        with worker_loop(env, tmp_path / "worker.log") as w:
            api.queue("long", {"workflow": chain("n", 30)})
            api.wait_progress("long", executing(3), 60)
            api.stop("long")
            found = w.interrupted(timeout=10)
            assert len(found) == 1, w.history()
            deadline = time.monotonic() + 10
            while w.queue()["queue_running"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert w.queue() == {"queue_running": [], "queue_pending": []}
            api.queue("next", {"workflow": chain("m", 2, width=48, color=255)})
            result = api.wait_result("next", 60)
            assert "error" not in result, result
            out = result["output"]["outputs"]
            assert len(out) == 1 and png_size(base64.b64decode(out[0]["data"])) == (48, 32)
            assert "long" not in api.results  # runpod sends no result for a stopped job
            assert job_files(tmp_path) == []  # the stopped job's folders were removed
    finally:
        api.close()
    text = (tmp_path / "worker.log").read_text()
    assert "RunPod stopped job long" in text and "job long failed: the job was stopped" in text, text[-3000:]


def test_stopping_a_queued_job_removes_its_prompt_and_spares_the_running_one(tmp_path):
    """JOB_CONCURRENCY=2: job b's prompt waits behind a's in ComfyUI's queue; stopping b never touches a."""
    api = FakeRunPodApi()
    env = env_for(tmp_path, api, JOB_CONCURRENCY="2", FAKE_COMFY_FAULTS=json.dumps({"class_delay_s": {"ImageInvert": 0.2}}))
    try:
        with worker_loop(env, tmp_path / "worker.log") as w:
            api.queue("a", {"workflow": chain("a", 8)})
            api.wait_progress("a", executing(2), 60)
            api.queue("b", {"workflow": chain("b", 8)})
            deadline = time.monotonic() + 30
            while not w.queue()["queue_pending"]:
                assert time.monotonic() < deadline, "job b's prompt never reached ComfyUI's queue"
                time.sleep(0.05)
            b_prompt = w.queue()["queue_pending"][0][1]
            api.stop("b")
            a = api.wait_result("a", 60)
            assert "error" not in a, a
            assert png_size(base64.b64decode(a["output"]["outputs"][0]["data"])) == (64, 32)
            history = w.history()
            assert a["output"]["prompt_id"] in history and b_prompt not in history  # b never ran
            assert interrupted_prompts(history) == {}
            assert "b" not in api.results
    finally:
        api.close()


def test_two_jobs_in_flight_never_mix_outputs_progress_or_errors(tmp_path):
    """Five jobs, two at a time: each result holds only its own image, progress names only its own
    nodes, and the one failing job fails alone."""
    api = FakeRunPodApi()
    faults = {"node_delay_s": 0.05, "error_on_node": "ImageBlur"}
    env = env_for(tmp_path, api, JOB_CONCURRENCY="2", FAKE_COMFY_FAULTS=json.dumps(faults))
    widths = {"j0": 40, "j1": 48, "j2": 56, "j3": 72}
    try:
        with worker_loop(env, tmp_path / "worker.log") as w:
            for job_id, width in widths.items():
                api.queue(job_id, {"workflow": chain(job_id, 4, width=width), "timeout_s": 60})
            bad = chain("bad", 1)
            bad["bad1"] = {"class_type": "ImageBlur", "inputs": {"image": ["bad0", 0], "blur_radius": 1, "sigma": 1.0}}
            api.queue("bad", {"workflow": bad})
            results = {job_id: api.wait_result(job_id, 90) for job_id in [*widths, "bad"]}
            prompts = [results[j]["output"]["prompt_id"] for j in widths]
            history = w.history()
    finally:
        api.close()
    assert "fake failure in ImageBlur" in results["bad"]["error"]
    for job_id, width in widths.items():
        out = results[job_id]["output"]
        assert "error" not in results[job_id], results[job_id]
        assert [o["node"] for o in out["outputs"]] == [f"{job_id}5"]
        assert png_size(base64.b64decode(out["outputs"][0]["data"])) == (width, 32)
        nodes = {u["node"] for u in api.progress[job_id] if u.get("stage") == "executing"}
        assert nodes and all(n.startswith(job_id) for n in nodes), (job_id, nodes)
        seqs = [u["seq"] for u in api.progress[job_id]]
        assert seqs == sorted(seqs)
    assert len(set(prompts)) == len(prompts) and all(p in history for p in prompts)
    assert job_files(tmp_path) == []


def test_a_comfyui_restart_retries_only_the_job_it_touched(tmp_path):
    """Two jobs in flight (as runpod's loop runs them with JOB_CONCURRENCY=2): ComfyUI dies when the
    second job's prompt starts; that job is retried on the restarted ComfyUI, the first is untouched."""
    import threading
    import urllib.request

    from tests.worker.conftest import LiveWorker

    w = LiveWorker(tmp_path)
    results: dict[str, dict] = {}

    def run(job_id: str, wf: dict) -> None:
        results[job_id] = w.run({"workflow": wf, "timeout_s": 60}, job_id)

    def wait_queue(key: str) -> None:
        deadline = time.monotonic() + 30
        while not json.loads(urllib.request.urlopen(w.url + "/queue", timeout=5).read())[key]:
            assert time.monotonic() < deadline, f"nothing in {key}"
            time.sleep(0.02)

    try:
        w.faults({"class_delay_s": {"ImageInvert": 0.3}})
        a = threading.Thread(target=run, args=("a", chain("a", 4)))
        a.start()
        wait_queue("queue_running")
        b = threading.Thread(target=run, args=("b", chain("b", 2, width=40)))
        b.start()
        wait_queue("queue_pending")
        w.faults({"class_delay_s": {"ImageInvert": 0.3}, "die_during_prompt": 1})  # counts prompts from now: b's
        a.join(60)
        b.join(60)
    finally:
        w.close()
    assert "error" not in results["a"] and "retried" not in results["a"], results["a"]
    assert "error" not in results["b"], results["b"]
    assert [r["details"]["code"] for r in results["b"]["retried"]] == ["comfy_died"]
    assert png_size(base64.b64decode(results["b"]["outputs"][0]["data"])) == (40, 32)
    assert w.sup.restarts == 1


def test_a_stop_during_uploads_drops_the_rest_and_cleans_up(tmp_path, gcs_bucket, gcs_emulator):
    """The job's 6 images upload through a slow GCS (0.5 s each, 2 at a time); a stop after the first
    upload leaves the others unsent, ends the job as cancelled and removes its files."""
    import threading

    from rp_handler.cancel import JobControl
    from rp_handler.handler import handle
    from tests.faults.gcs_proxy import GcsFaultProxy
    from tests.worker.conftest import LiveWorker

    client, bucket = gcs_bucket
    proxy = GcsFaultProxy(gcs_emulator).start()
    proxy.set(delay_s=0.5)
    w = LiveWorker(tmp_path, STORAGE_EMULATOR_HOST=proxy.url, GCS_BUCKET=bucket, GCS_PREFIX="stop",
                   PROGRESS_INTERVAL_S="0")
    control = JobControl()
    uploading = threading.Event()
    w.ctx.progress_sender = lambda job, p: uploading.set() if p.get("stage") == "uploading" else None
    wf = chain("u", 1)
    wf["u0"]["inputs"]["batch_size"] = 6
    result: dict = {}
    try:
        t = threading.Thread(target=lambda: result.update(
            handle({"id": "up", "input": {"workflow": wf, "output": "gcs"}}, w.ctx, control)))
        t.start()
        assert uploading.wait(30)
        control.stop()
        t.join(30)
    finally:
        w.close()
        proxy.stop()
    assert result["details"]["code"] == "cancelled", result
    stored = list(client.list_blobs(bucket, prefix="stop/"))
    assert 1 <= len(stored) < 6
    assert job_files(tmp_path) == []


def test_a_queued_job_that_times_out_never_restarts_comfyui_under_the_running_one(tmp_path):
    """Job b (timeout_s=1) waits behind job a's prompt and passes its deadline: b's prompt is removed
    from the queue, b fails with `timeout`, a finishes normally and ComfyUI is not restarted."""
    import threading
    import urllib.request

    from tests.worker.conftest import LiveWorker

    w = LiveWorker(tmp_path, COMFY_INTERRUPT_GRACE_S="1")
    results: dict[str, dict] = {}

    def run(job_id: str, job_input: dict) -> None:
        results[job_id] = w.run(job_input, job_id)

    try:
        w.faults({"class_delay_s": {"ImageInvert": 0.5}})
        a = threading.Thread(target=run, args=("a", {"workflow": chain("a", 8), "timeout_s": 60}))
        a.start()
        deadline = time.monotonic() + 30
        while not json.loads(urllib.request.urlopen(w.url + "/queue", timeout=5).read())["queue_running"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        b = threading.Thread(target=run, args=("b", {"workflow": chain("b", 1), "timeout_s": 1}))
        b.start()
        a.join(60)
        b.join(60)
        history = json.loads(urllib.request.urlopen(w.url + "/history", timeout=5).read())
    finally:
        w.close()
    assert results["b"]["details"]["code"] == "timeout", results["b"]
    assert "comfy_restarted" not in results["b"]["details"]
    assert "error" not in results["a"] and "retried" not in results["a"], results["a"]
    assert w.sup.restarts == 0
    assert list(history) == [results["a"]["prompt_id"]]  # b's prompt never ran
