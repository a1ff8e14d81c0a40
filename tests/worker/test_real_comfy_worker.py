"""Opt-in: the worker drives a real ComfyUI on CPU (set COMFYUI_DIR and COMFYUI_PYTHON).

COMFY_HOME is the real checkout itself (nothing is copied); ComfyUI's input/output/temp/user
folders and its database go under ``tmp_path`` (COMFY_IO_DIR, ``--database-url``), and models come
from a MODELS_DIR outside the checkout (the worker writes an extra_model_paths.yaml for it).

* ``python -m rp_handler`` runs ``test_input.json`` the way the runpod SDK runs it locally.
* A supervised worker (``start_comfy`` + ``WorkerContext``, what ``main`` builds minus runpod) runs the
  tiny upscale model recipe of the protocol README, failing workflows (unknown class, missing
  checkpoint, a bad model file), then a good job again.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import COMFYUI_DIR, COMFYUI_PYTHON, REAL_COMFY_MARKS, TINY_MODEL
from tests.worker.conftest import make_cfg

REPO = Path(__file__).resolve().parents[2]

pytestmark = REAL_COMFY_MARKS

# The tiny model of the protocol README at argv[1], and at argv[2] a valid safetensors file with unrelated
# keys (transcript 09).
TINY_MODELS = TINY_MODEL + """save_file({"foo": torch.zeros(2, 2)}, sys.argv[2])
"""


def upscale_workflow(model_name: str) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 8421504}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model_name}},
        "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "real_upscale"}},
    }


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def comfy_env(root: Path) -> dict[str, str]:
    """What both ways of running the worker share: the real checkout, everything written under ``root``."""
    return {"COMFY_HOME": COMFYUI_DIR, "COMFY_PYTHON": COMFYUI_PYTHON, "COMFY_PORT": "0", "COMFY_FORCE_CPU": "true",
            "COMFY_IO_DIR": str(root / "io"), "MODELS_DIR": str(root / "models"),
            "COMFY_BOOT_TIMEOUT_S": "240",
            # ComfyUI's default database lives in the checkout's user/ folder: keep it under root too.
            "COMFY_EXTRA_ARGS": f"--database-url sqlite:///{root / 'io' / 'user' / 'comfyui.db'}"}


def test_test_input_json_under_the_runpod_sdk(tmp_path):
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "test_input.json").write_text((REPO / "test_input.json").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")} | {"RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true"}
    env.update(comfy_env(tmp_path), PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1",
               COMFY_CACHE_ROOT=str(tmp_path / "cache"))
    (tmp_path / "models").mkdir()
    proc = subprocess.run([sys.executable, "-m", "rp_handler"], cwd=work, env=env, capture_output=True, text=True,
                          timeout=280)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if "Job result: " in ln)
    result = ast.literal_eval(line.split("Job result: ", 1)[1])["output"]
    assert "error" not in result, result
    assert len(result["outputs"]) == 1, result["outputs"]
    assert png_size(base64.b64decode(result["outputs"][0]["data"])) == (64, 64)
    json.dumps(result)  # JSON-serialisable as RunPod needs
    cold = result["timings"]["cold_start"]
    assert cold["comfy_spawned"] <= cold["comfy_ready"] <= cold["submitted"] <= cold["result_returned"]
    assert f"starting ComfyUI: {COMFYUI_PYTHON}" in proc.stdout
    assert not any((tmp_path / "io" / "output").rglob("*.png"))  # the job's outputs were removed
    assert (tmp_path / "io" / "user" / "comfyui.db").exists()  # nothing written to the checkout's database


class RealWorker:
    """A supervised real ComfyUI plus the WorkerContext ``main`` would build (no runpod loop)."""

    def __init__(self, root: Path):
        from rp_handler.context import WorkerContext
        from rp_handler.main import client_factory, start_comfy

        self.root = root
        self.models = root / "models" / "upscale_models"
        self.models.mkdir(parents=True)
        subprocess.run([COMFYUI_PYTHON, "-c", TINY_MODELS, str(self.models / "tiny_compact_2x.safetensors"),
                        str(self.models / "bad_keys.safetensors")], check=True, timeout=120)
        self.cfg = make_cfg(root, **comfy_env(root))
        self.sup = start_comfy(self.cfg, io_dir=root / "io")
        self.ctx = WorkerContext(cfg=self.cfg, dirs=self.sup.proc.dirs, client_factory=client_factory(self.sup),
                                 supervisor=self.sup, version_id="real")
        self.sup.ensure_ready(240)

    def run(self, job_input: dict, job_id: str) -> dict:
        from rp_handler.handler import handle

        result = handle({"id": job_id, "input": job_input}, self.ctx)
        json.dumps(result)
        return result

    def close(self) -> None:
        self.ctx.close()
        self.sup.stop(timeout=20)


@pytest.fixture(scope="module")
def real_worker(tmp_path_factory):
    w = RealWorker(tmp_path_factory.mktemp("real-worker"))
    yield w
    w.close()


def test_tiny_upscale_model_from_models_dir(real_worker):
    result = real_worker.run({"workflow": upscale_workflow("tiny_compact_2x.safetensors"),
                              "output": {"mode": "base64"}}, "tiny-1")
    assert "error" not in result, result
    (out,) = result["outputs"]
    assert out["node"] == "4"
    assert png_size(base64.b64decode(out["data"])) == (64, 64)  # 32x32 upscaled 2x by the model
    extra = (real_worker.root / "io" / "extra_model_paths.yaml").read_text()
    assert str(real_worker.root / "models") in extra
    assert not (Path(COMFYUI_DIR) / "models" / "upscale_models" / "tiny_compact_2x.safetensors").exists()


def test_failures_are_structured_and_the_worker_stays_healthy(real_worker):
    unknown = real_worker.run({"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}},
                                            "2": {"class_type": "SaveImage",
                                                  "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}},
                              "bad-class")
    assert "NoSuchNode" in unknown["error"] and "\n" not in unknown["error"], unknown
    assert unknown["details"]["error"]["type"] == "invalid_prompt", unknown["details"]

    missing = real_worker.run({"workflow": {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "missing_model.safetensors"}},
        "2": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["1", 2]}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}}}, "bad-ckpt")
    assert "missing_model.safetensors" in missing["error"], missing
    node_error = missing["details"]["node_errors"]["1"]
    assert node_error["class_type"] == "CheckpointLoaderSimple"
    assert node_error["errors"][0]["type"] == "value_not_in_list"

    bad_file = real_worker.run({"workflow": upscale_workflow("bad_keys.safetensors")}, "bad-file")
    details = bad_file["details"]
    assert details["node_id"] == "2" and details["node_type"] == "UpscaleModelLoader", bad_file
    assert "UnsupportedModel" in details["exception_type"], details
    assert "UpscaleModelLoader" in bad_file["error"], bad_file

    absent = real_worker.run({"workflow": upscale_workflow("not_there.safetensors")}, "absent-file")
    assert absent["details"]["node_type"] == "UpscaleModelLoader", absent
    assert "FileNotFoundError" in absent["details"]["exception_type"], absent

    good = real_worker.run(json.loads((REPO / "test_input.json").read_text())["input"], "good-after")
    assert "error" not in good, good
    assert png_size(base64.b64decode(good["outputs"][0]["data"])) == (64, 64)
    assert real_worker.sup.restarts == 0 and real_worker.sup.proc.alive
