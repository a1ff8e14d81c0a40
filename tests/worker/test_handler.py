"""The handler against a supervised fake ComfyUI process: results, errors, cleanup, crashes."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from rp_handler.handler import handle
from rp_handler.version_files import lock_digest
from tests.fakes.comfyui.pngfile import Image, decode_png, encode_png
from tests.worker.conftest import LiveWorker, make_cfg

REPO = Path(__file__).resolve().parents[2]
TEST_INPUT = json.loads((REPO / "test_input.json").read_text())["input"]


def _png_pixel(data: bytes) -> tuple:
    return tuple(decode_png(data).data[:3])


def _jobs_dirs_empty(w: LiveWorker) -> bool:
    return all(not any((d / "jobs").glob("*")) if (d / "jobs").exists() else True
               for d in (w.ctx.dirs.input, w.ctx.dirs.output))


def test_test_input_json_runs_and_result_is_json(live_worker):
    res = live_worker.run(TEST_INPUT)
    assert "error" not in res, res
    assert json.loads(json.dumps(res)) == res
    [out] = res["outputs"]
    data = base64.b64decode(out["data"])
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and out["node"] == "3" and out["type"] == "output"
    assert _png_pixel(data) == (255, 255, 255)  # black EmptyImage, inverted
    assert res["prompt_id"] and res["version"] == "v1"
    assert set(res["timings"]) >= {"queued", "executing", "uploading", "total", "phases"}
    assert _jobs_dirs_empty(live_worker)


def test_cold_start_only_in_first_result(tmp_path):
    w = LiveWorker(tmp_path)
    try:
        first, second = w.run(TEST_INPUT, "a"), w.run(TEST_INPUT, "b")
    finally:
        w.close()
    cold = first["timings"]["cold_start"]
    assert cold["comfy_spawned"] <= cold["comfy_ready"] <= cold["result_returned"]
    assert cold["job_received"] <= cold["first_node_executing"] <= cold["result_returned"]
    assert "cold_start" not in second["timings"]


def test_image_input_staged_per_job_and_removed(live_worker):
    png = encode_png(Image(8, 8, bytes([10, 20, 30]) * 64))
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "mine.png"}},
          "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
          "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}}}
    res = live_worker.run({"workflow": wf, "images": [{"name": "mine.png",
                                                       "image": base64.b64encode(png).decode()}]})
    assert "error" not in res, res
    assert _png_pixel(base64.b64decode(res["outputs"][0]["data"])) == (245, 235, 225)
    assert _jobs_dirs_empty(live_worker)


def test_temp_and_output_kinds_and_temp_cleanup(live_worker):
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 2, "color": 77}},
          "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
          "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "both"}}}
    res = live_worker.run({"workflow": wf})
    assert "error" not in res, res
    kinds = sorted((o["node"], o["type"], o["index"]) for o in res["outputs"])
    assert kinds == [("2", "temp", 0), ("2", "temp", 1), ("3", "output", 0), ("3", "output", 1)]
    assert not [p for p in live_worker.ctx.dirs.temp.rglob("*") if p.is_file()]


def test_outputs_ship_while_the_job_still_runs(live_worker):
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 5}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "early"}},
          "3": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
          "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "late"}}}
    live_worker.faults({"class_delay_s": {"ImageBlur": 0.8}})
    try:
        res = live_worker.run({"workflow": wf})
    finally:
        live_worker.faults({})
    assert "error" not in res, res
    phases = res["timings"]["phases"]
    assert phases["first_output_uploaded"] < phases["execution_done"]
    assert [o["node"] for o in res["outputs"]] == ["2", "4"]


@pytest.mark.parametrize("wf, code, words", [
    ({"1": {"class_type": "NoSuchNode", "inputs": {}}}, "prompt_validation", "NoSuchNode"),
    ({"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "missing.safetensors"}},
      "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
      "4": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
      "3": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "x"}}},
     "prompt_validation", "ckpt_name"),
    ({"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
      "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bogus", "width": 8,
                                                   "height": 8, "crop": "disabled"}},
      "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}},
     "prompt_validation", "upscale_method"),
    ({"1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0}},
      "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "nope.safetensors"}},
      "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
      "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}}},
     "execution_error", "UpscaleModelLoader"),
])
def test_comfy_errors_are_structured_and_worker_stays_healthy(live_worker, wf, code, words):
    res = live_worker.run({"workflow": wf})
    assert res["details"]["code"] == code and words in res["error"] and "\n" not in res["error"]
    assert json.loads(json.dumps(res)) == res
    if code == "execution_error":
        assert res["details"]["node_id"] == "2" and res["details"]["node_type"] == "UpscaleModelLoader"
    else:
        assert "node_errors" in res["details"]
    assert "error" not in live_worker.run(TEST_INPUT)


@pytest.mark.parametrize("bad", [
    [1], {}, {"workflow": {"nodes": [], "links": []}}, {"workflow": TEST_INPUT["workflow"], "output": "s3"},
    {"workflow": TEST_INPUT["workflow"], "timeout_s": -5},
    {"workflow": TEST_INPUT["workflow"], "images": [{"name": "../../x.png", "image": "AAAA"}]},
    {"workflow": TEST_INPUT["workflow"], "images": [{"name": "x.png", "image": "https://169.254.169.254/x"}]},
    {"workflow": TEST_INPUT["workflow"], "output": "gcs"},
])
def test_bad_input_is_one_line_error(live_worker, bad):
    res = live_worker.run(bad)
    assert res["details"]["code"] == "invalid_input" and "\n" not in res["error"]


def test_timeout_interrupts_and_next_job_runs(live_worker):
    live_worker.faults({"node_delay_s": 1.0})
    try:
        res = live_worker.run({**TEST_INPUT, "timeout_s": 0.3})
    finally:
        live_worker.faults({})
    assert res["details"]["code"] == "timeout" and res["details"]["prompt_id"]
    assert "error" not in live_worker.run(TEST_INPUT)


def test_status_action(live_worker):
    res = live_worker.run({"action": "status"})
    assert res["status"] == "ready" and res["comfy"]["running"] and res["comfy"]["system_stats"]["system"]
    assert res["version"] == "v1" and "cold_start" in res


def test_progress_updates_in_order(live_worker):
    got = []
    live_worker.ctx.progress_sender = lambda job, payload: got.append((job["id"], payload))
    old = live_worker.ctx.cfg
    live_worker.ctx.cfg = dataclasses.replace(old, progress_interval_s=0.0)
    wf = json.loads(json.dumps(TEST_INPUT["workflow"]))
    wf["1"]["inputs"]["color"] = 4242  # nothing cached: all three nodes run
    live_worker.faults({"node_delay_s": 0.1})
    try:
        res = live_worker.run({"workflow": wf}, "prog-1")
    finally:
        live_worker.faults({})
        live_worker.ctx.progress_sender = None
        live_worker.ctx.cfg = old
    assert "error" not in res
    seqs = [p["seq"] for _, p in got]
    assert got and all(j == "prog-1" for j, _ in got) and seqs == sorted(seqs)
    indices = [p["node_index"] for _, p in got if p.get("stage") == "executing"]
    assert indices == sorted(indices) and max(indices) == 3


def test_comfy_death_fails_job_with_log_tail_then_restarts(live_worker):
    live_worker.faults({"die_during_prompt": 1})
    old = live_worker.ctx.cfg
    live_worker.ctx.cfg = dataclasses.replace(old, job_retries=0)
    try:
        res = live_worker.run(TEST_INPUT, "dies")
    finally:
        live_worker.ctx.cfg = old
    assert res["details"]["code"] == "comfy_died", res
    assert any("die_during_prompt" in line for line in res["details"]["log_tail"])
    assert "refresh_worker" not in res
    again = live_worker.run(TEST_INPUT, "after")
    assert "error" not in again, again
    assert live_worker.sup.restarts == 1


def live_worker_requests(worker) -> list[tuple[str, str]]:
    with urllib.request.urlopen(f"{worker.url}/__fake__/requests", timeout=10) as resp:
        return [tuple(x) for x in json.load(resp)]


def test_comfy_death_mid_job_is_retried_once_on_the_restarted_comfy(live_worker):
    restarts = live_worker.sup.restarts
    live_worker.faults({"die_during_prompt": 1})
    res = live_worker.run(TEST_INPUT, "dies-then-retried")
    assert "error" not in res, res
    assert len(res["outputs"]) == 1 and res["outputs"][0]["data"]
    (first,) = res["retried"]
    assert first["details"]["code"] == "comfy_died"
    assert any("die_during_prompt" in line for line in first["details"]["log_tail"])
    assert live_worker.sup.restarts == restarts + 1


def test_out_of_memory_frees_and_retries_once_then_reports(live_worker):
    seen = len(live_worker_requests(live_worker))
    live_worker.faults({"oom_on_node": "ImageInvert"})
    job = json.loads(json.dumps(TEST_INPUT))
    job["workflow"]["1"]["inputs"]["color"] = 0x123456  # nothing of it is in ComfyUI's cache
    try:
        res = live_worker.run(job, "oom")
    finally:
        live_worker.faults({})
    assert res.get("details", {}).get("code") == "out_of_memory", {k: v for k, v in res.items() if k != "outputs"}
    assert res["details"]["retried"][0]["details"]["code"] == "out_of_memory"
    posts = [p for m, p in live_worker_requests(live_worker)[seen:] if m == "POST"]
    assert posts.count("/prompt") == 2 and "/free" in posts, posts
    assert "error" not in live_worker.run(TEST_INPUT, "after-oom")


def test_validation_errors_are_never_retried(live_worker):
    seen = len(live_worker_requests(live_worker))
    res = live_worker.run({"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}, "bad")
    assert res["details"]["code"] == "prompt_validation"
    posts = [p for m, p in live_worker_requests(live_worker)[seen:] if m == "POST"]
    assert posts.count("/prompt") == 1, posts


def test_refresh_worker_after_max_restarts(tmp_path):
    w = LiveWorker(tmp_path, COMFY_MAX_RESTARTS="0")
    try:
        w.faults({"die_during_prompt": 1})
        res = w.run(TEST_INPUT)
        assert res["details"]["code"] == "comfy_died" and res.get("refresh_worker") is True
        nxt = w.run(TEST_INPUT)
        assert nxt.get("refresh_worker") is True and "replacing" in nxt["error"]
    finally:
        w.close()


def test_gcs_output_end_to_end(tmp_path, gcs_bucket, gcs_emulator):
    client, bucket = gcs_bucket
    w = LiveWorker(tmp_path, STORAGE_EMULATOR_HOST=gcs_emulator, GCS_BUCKET=bucket, GCS_PREFIX="runs")
    try:
        res = w.run({**TEST_INPUT, "output": {"mode": "gcs"}}, "gcs-job")
    finally:
        w.close()
    assert "error" not in res, res
    [out] = res["outputs"]
    assert out["object"] == "runs/gcs-job/3_0_" + out["filename"]
    assert client.bucket(bucket).blob(out["object"]).download_as_bytes()[:4] == b"\x89PNG"


def test_lock_digest():
    assert lock_digest(None) is None
    assert lock_digest({"spec_digest": "sha256:abc"}) == "sha256:abc"


def test_identical_resubmission_same_job_id_still_returns_files(live_worker):
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 9}},
          "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
          "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "same"}}}
    first = live_worker.run({"workflow": wf}, "retry-me")
    second = live_worker.run({"workflow": wf}, "retry-me")  # RunPod retries keep the job id
    assert "error" not in first and "error" not in second, second
    assert len(second["outputs"]) == len(first["outputs"]) == 2
    pixels = {_png_pixel(base64.b64decode(o["data"])) for o in first["outputs"] + second["outputs"]}
    assert pixels == {(9, 9, 9)} or len(pixels) == 1


def test_in_process_fake_without_supervisor_posts_to_prompt_only(tmp_path):
    """Regression (seed 001): workflows go to /prompt, never to /api/queue or /queue."""
    from rp_handler.context import WorkerContext
    from rp_handler.main import client_factory
    from rp_handler.process import ComfyDirs
    from tests.fakes.comfyui.server import FakeComfyServer

    with FakeComfyServer(tmp_path / "fake") as server:
        ctx = WorkerContext(cfg=make_cfg(tmp_path), client_factory=client_factory(None), base_url=server.url,
                            dirs=ComfyDirs(server.input_dir, server.output_dir, server.temp_dir))
        try:
            res = handle({"id": "p1", "input": TEST_INPUT}, ctx)
        finally:
            ctx.close()
        posts = [path for method, path in server.requests if method == "POST"]
    assert "error" not in res, res
    assert posts == ["/prompt"]
    assert not any("queue" in path for _, path in server.requests)


def test_timeout_with_ignored_interrupt_restarts_comfyui(tmp_path):
    w = LiveWorker(tmp_path)
    try:
        pid = w.sup.proc.pid
        w.faults({"node_delay_s": 30, "ignore_interrupt": True})
        res = w.run({**TEST_INPUT, "timeout_s": 0.3})
        assert res["details"]["code"] == "timeout"
        again = w.run(TEST_INPUT, "next")  # the stuck ComfyUI was replaced, not queued behind
        assert "error" not in again, again
        assert w.sup.proc.pid != pid and w.sup.restarts == 1
    finally:
        w.close()


def test_free_every_n_jobs(tmp_path):
    from tests.fakes.comfyui.server import FakeComfyServer
    from rp_handler.context import WorkerContext
    from rp_handler.main import client_factory
    from rp_handler.process import ComfyDirs

    with FakeComfyServer(tmp_path / "fake") as server:
        ctx = WorkerContext(cfg=make_cfg(tmp_path, FREE_EVERY_N_JOBS="2"), client_factory=client_factory(None),
                            base_url=server.url, dirs=ComfyDirs(server.input_dir, server.output_dir, server.temp_dir))
        try:
            for i in range(4):
                assert "error" not in handle({"id": f"f{i}", "input": TEST_INPUT}, ctx)
        finally:
            ctx.close()
        frees = [p for m, p in server.requests if m == "POST" and p == "/free"]
    assert len(frees) == 2


def test_comfy_killed_between_jobs_next_job_runs_on_the_restart(tmp_path):
    w = LiveWorker(tmp_path)
    try:
        assert "error" not in w.run(TEST_INPUT, "before")
        os.kill(w.sup.proc.pid, signal.SIGKILL)  # dies while idle; the next job may still hold the old client
        res = w.run(TEST_INPUT, "after")
        assert "error" not in res, res
        assert w.sup.restarts == 1
    finally:
        w.close()
