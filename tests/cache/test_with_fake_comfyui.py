"""The cache against the fake ComfyUI (tests/fakes/comfyui)."""

from __future__ import annotations

import requests

from tests.cache.conftest import MiB, checkpoint_workflow, put_model
from tests.fakes.comfyui import folders as folders_mod
from tests.fakes.comfyui import server as server_mod


def test_search_order_reads_the_volume_then_the_cache(make_cache, volume, nvme, tmp_path):
    src = put_model(volume, "checkpoints/sdxl.safetensors", 2 * MiB)
    cache = make_cache()
    emp = cache.write_extra_model_paths(tmp_path / "extra_model_paths.yaml")
    paths = folders_mod.ModelPaths(tmp_path / "ComfyUI" / "models")
    paths.load_yaml(emp)
    assert paths.resolve("checkpoints", "sdxl.safetensors") == str(src)
    cache.preload_workflow(checkpoint_workflow("sdxl.safetensors"), job_id="j")
    assert cache.wait("j", 30)
    assert paths.resolve("checkpoints", "sdxl.safetensors") == str(nvme / "checkpoints" / "sdxl.safetensors")


def test_live_object_info_lists_volume_and_cache_and_drives_the_scan(make_cache, volume, nvme, tmp_path):
    put_model(volume, "checkpoints/on_volume.safetensors", 2 * MiB)
    put_model(volume, "ipadapter/custom.safetensors", 2 * MiB)
    cache = make_cache()
    cache.preload_workflow(checkpoint_workflow("on_volume.safetensors"), job_id="j")
    cache.wait("j", 30)
    emp = cache.write_extra_model_paths(tmp_path / "extra_model_paths.yaml")
    with server_mod.FakeComfyServer(tmp_path / "ComfyUI", extra_model_paths=[emp]) as comfy:
        live = requests.get(f"{comfy.url}/object_info", timeout=30).json()
    options = live["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert "on_volume.safetensors" in options
    cache.set_object_info(live)
    [st] = cache.preload_workflow(checkpoint_workflow("on_volume.safetensors"), job_id="k")
    assert (st.folder, st.status, st.read_from) == ("checkpoints", "cached", "cache")
