"""Opt-in: realize's object_info snapshot step against a real ComfyUI on CPU (COMFYUI_DIR, COMFYUI_PYTHON).

The checkout is booted in place; every folder it writes (input/output/temp/user, its database) is a
temp dir of the snapshot step, so nothing is written into COMFYUI_DIR but bytecode.
"""

from __future__ import annotations

from pathlib import Path

from builder.extras import fetch_object_info, write_snapshot
from rp_handler.cache.refs import load_object_info, scan_workflow, snapshot_path
from tests.helpers import COMFYUI_DIR, COMFYUI_PYTHON, REAL_COMFY_MARKS

pytestmark = REAL_COMFY_MARKS


def test_snapshot_of_a_real_comfyui_drives_the_model_scan(tmp_path):
    home = Path(COMFYUI_DIR)
    user_before = {p.name: p.stat().st_mtime_ns for p in (home / "user").glob("*")}
    info = fetch_object_info(Path(COMFYUI_PYTHON), home, timeout_s=240)
    assert len(info) > 400
    assert info["UpscaleModelLoader"]["input"]["required"]["model_name"][0] == "COMBO"  # a V3 combo
    assert {p.name: p.stat().st_mtime_ns for p in (home / "user").glob("*")} == user_before  # its db untouched

    fake_home = tmp_path / "ComfyUI"
    write_snapshot(snapshot_path(fake_home), info)
    loaded = load_object_info(snapshot_path(fake_home))
    assert loaded == info
    models = tmp_path / "models"
    (models / "upscale_models").mkdir(parents=True)
    (models / "upscale_models" / "tiny_compact_2x.safetensors").write_bytes(b"\0" * 64)
    workflow = {"2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "tiny_compact_2x.safetensors"}},
                "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}
    (ref,) = scan_workflow(workflow, loaded, models)
    assert (ref.folder, ref.name, ref.node_id) == ("upscale_models", "tiny_compact_2x.safetensors", "2")
