"""The fake's model combos come from a recording of the real ComfyUI, not from the worker's table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.extras import fetch_object_info
from tests.fakes.comfyui import record_model_folders as rec
from tests.fakes.comfyui.objectinfo import input_image_combos, load_model_combos, load_recorded
from tests.helpers import COMFYUI_DIR, COMFYUI_PYTHON, needs_real_comfy


def test_probe_files_name_the_folder_each_combo_lists():
    info = {"A": {"input": {"required": {"m": [["probe-loras.safetensors"], {}], "n": ["INT", {}]}}},
            "B": {"input": {"optional": {"v": ["COMBO", {"options": ["probe-vae.safetensors", "pixel_space"]}]}}},
            "C": {"input": {"required": {"x": [["a.png"], {"image_upload": True}]}}}}
    assert rec.model_folders(info) == {"A": {"m": {"folder": "loras", "extra": []}},
                                       "B": {"v": {"folder": "vae", "extra": ["pixel_space"]}}}


def test_the_recording_covers_the_core_loaders_and_image_inputs():
    combos = load_model_combos()
    assert combos[("CheckpointLoaderSimple", "ckpt_name")] == ("checkpoints", [])
    assert combos[("VAELoader", "vae_name")] == ("vae", ["pixel_space"])
    assert input_image_combos(load_recorded()) == {("LoadImage", "image"), ("LoadImageMask", "image")}


@pytest.mark.real_comfy
@pytest.mark.slow
@needs_real_comfy
def test_recording_is_current_with_the_real_comfyui(tmp_path):
    from builder.extra_paths import COMFY_FOLDERS

    yaml_path = rec.probe_tree(tmp_path, COMFY_FOLDERS)
    info = fetch_object_info(Path(COMFYUI_PYTHON), Path(COMFYUI_DIR), extra_model_paths=yaml_path)
    assert rec.model_folders(info) == json.loads(rec.OUT.read_text()), \
        "the real ComfyUI lists other folders: rerun python -m tests.fakes.comfyui.record_model_folders"
