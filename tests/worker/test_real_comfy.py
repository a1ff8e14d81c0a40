"""Opt-in: the worker drives a real ComfyUI on CPU (set COMFYUI_DIR and COMFYUI_PYTHON)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.fakes.comfyui.pngfile import decode_png
from tests.worker.conftest import LiveWorker

COMFYUI_DIR = os.environ.get("COMFYUI_DIR", "")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON", "")
REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.real_comfy, pytest.mark.slow,
    pytest.mark.skipif(not (COMFYUI_DIR and COMFYUI_PYTHON), reason="needs COMFYUI_DIR and COMFYUI_PYTHON"),
]

TINY_MODEL = """
import sys, torch
from safetensors.torch import save_file
g = torch.Generator().manual_seed(0)
sd = {}
def conv(i, cin, cout):
    sd[f"body.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.1
    sd[f"body.{i}.bias"] = torch.zeros(cout)
def prelu(i, n):
    sd[f"body.{i}.weight"] = torch.full((n,), 0.25)
conv(0, 3, 4); prelu(1, 4); conv(2, 4, 4); prelu(3, 4); conv(4, 4, 3 * 2 * 2)
save_file({k: v.contiguous() for k, v in sd.items()}, sys.argv[1])
"""


@pytest.fixture(scope="module")
def real_worker(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    models = root / "models" / "upscale_models"
    models.mkdir(parents=True)
    subprocess.run([COMFYUI_PYTHON, "-c", TINY_MODEL, str(models / "tiny_compact_2x.safetensors")], check=True,
                   timeout=300)
    w = LiveWorker(root, home=Path(COMFYUI_DIR), COMFY_PYTHON=COMFYUI_PYTHON, MODELS_DIR=str(root / "models"),
                   COMFY_BOOT_TIMEOUT_S="300")
    yield w
    w.close()


def test_test_input_json(real_worker):
    res = real_worker.run(json.loads((REPO / "test_input.json").read_text())["input"])
    assert "error" not in res, res
    img = decode_png(base64.b64decode(res["outputs"][0]["data"]))
    assert (img.width, img.height) == (64, 64) and img.data[:3] == b"\xff\xff\xff"


def test_tiny_model_through_extra_model_paths(real_worker):
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0}},
          "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "tiny_compact_2x.safetensors"}},
          "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
          "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "up"}}}
    res = real_worker.run({"workflow": wf})
    assert "error" not in res, res
    img = decode_png(base64.b64decode(res["outputs"][0]["data"]))
    assert (img.width, img.height) == (64, 64)


def test_failing_workflows(real_worker):
    missing = {"1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0}},
               "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "nope.safetensors"}},
               "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
               "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}}}
    res = real_worker.run({"workflow": missing})
    assert res["details"]["code"] == "execution_error" and res["details"]["node_id"] == "2"
    bad = real_worker.run({"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}})
    assert bad["details"]["code"] == "prompt_validation"
    assert "error" not in real_worker.run(json.loads((REPO / "test_input.json").read_text())["input"])
