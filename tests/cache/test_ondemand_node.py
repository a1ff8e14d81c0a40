"""The OnDemand node outside ComfyUI: a stand-in ``folder_paths`` module, a real ModelCache."""

from __future__ import annotations

import importlib
import json
import os
import time
import types
from pathlib import Path

import yaml

from rp_handler.cache import spool
from tests.cache.conftest import MiB, put_model


def standin_folder_paths(extra_model_paths: Path, comfy_models: Path) -> types.ModuleType:
    """A module with folder_paths' lookup rules, fed from an extra_model_paths.yaml like ComfyUI's."""
    mod = types.ModuleType("folder_paths")
    mod.folder_names_and_paths = {
        "checkpoints": [str(comfy_models / "checkpoints")],
        "text_encoders": [str(comfy_models / "text_encoders"), str(comfy_models / "clip")],
        "loras": [str(comfy_models / "loras")],
    }
    legacy = {"clip": "text_encoders", "unet": "diffusion_models"}
    for group in yaml.safe_load(extra_model_paths.read_text()).values():
        base = group.pop("base_path")
        first = group.pop("is_default", False)
        for folder, dirs in group.items():
            paths = mod.folder_names_and_paths.setdefault(legacy.get(folder, folder), [])
            for d in dirs.split("\n"):
                full = os.path.join(base, d)
                paths.insert(0, full) if first else paths.append(full)

    def get_full_path(folder_name, filename):
        for base in mod.folder_names_and_paths.get(legacy.get(folder_name, folder_name), []):
            path = os.path.join(base, filename)
            if os.path.isfile(path):
                return path
        return None

    mod.get_full_path = get_full_path
    return mod


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def load_node():
    return importlib.import_module("comfy_nodes.nvme_cache")


def test_node_imports_without_comfyui():
    node = load_node()
    assert node.NODE_CLASS_MAPPINGS == {}
    assert node.settings_from_env({}) is None
    assert node.settings_from_env({"NVME_CACHE_DIR": "/nvme", "CACHE_MIN_SIZE_MB": "2",
                                   "CACHE_CATEGORIES": "loras, vae"}) == {
        "cache_root": "/nvme", "min_size_bytes": 2 * MiB, "categories": ("loras", "vae")}


def test_miss_schedules_a_copy_then_the_cached_copy_is_returned(make_cache, volume, nvme, tmp_path):
    node = load_node()
    src = put_model(volume, "clip/t5xxl.safetensors", 2 * MiB)
    cache = make_cache()
    emp = cache.write_extra_model_paths(tmp_path / "extra_model_paths.yaml")
    fp = standin_folder_paths(emp, tmp_path / "ComfyUI" / "models")
    hook = node.install(fp, nvme, min_size_bytes=MiB)
    assert node.install(fp, nvme, min_size_bytes=MiB).original is hook.original  # idempotent

    # a model the workflow scan never saw: resolved from the volume, a copy is requested
    assert fp.get_full_path("clip", "t5xxl.safetensors") == str(src)
    assert [p.suffix for p in (nvme / ".requests").iterdir()] in ([".json"], [])  # [] if already drained
    cache.process_requests()  # the copier thread also does this when idle
    cached = nvme / "text_encoders" / "t5xxl.safetensors"
    wait_for(cached.exists)
    assert cached.read_bytes() == src.read_bytes()

    # now ComfyUI's order (cache first) and the hook both give the NVMe copy, and the hit is recorded
    assert fp.get_full_path("text_encoders", "t5xxl.safetensors") == str(cached)
    cache.process_requests()
    wait_for(lambda: cache.status()["entries"][0]["hits"] == 1)


def test_hook_returns_cache_copy_even_without_extra_paths(make_cache, volume, nvme, tmp_path):
    node = load_node()
    put_model(volume, "loras/l.safetensors", 2 * MiB)
    cache = make_cache()
    fp = types.ModuleType("folder_paths")
    fp.get_full_path = lambda folder, name: str(volume / folder / name) if (volume / folder / name).is_file() else None
    node.install(fp, nvme)
    assert fp.get_full_path("loras", "l.safetensors") == str(volume / "loras" / "l.safetensors")
    cache.process_requests()
    wait_for((nvme / "loras" / "l.safetensors").exists)
    assert fp.get_full_path("loras", "l.safetensors") == str(nvme / "loras" / "l.safetensors")
    assert fp.get_full_path("loras", "missing.safetensors") is None
    assert fp.get_full_path("loras", "../../etc/passwd") is None


def test_small_files_and_other_categories_are_not_requested(nvme, volume):  # no worker running here
    node = load_node()
    put_model(volume, "loras/small.safetensors", 1000)
    put_model(volume, "vae/v.safetensors", 2 * MiB)
    fp = types.ModuleType("folder_paths")
    fp.get_full_path = lambda folder, name: str(volume / folder / name)
    node.install(fp, nvme, min_size_bytes=MiB, categories=("loras",))
    fp.get_full_path("loras", "small.safetensors")
    fp.get_full_path("vae", "v.safetensors")
    assert spool.drain(nvme) == []


def test_spool_format_agrees_between_node_and_worker(nvme, volume):
    node = load_node()
    put_model(volume, "checkpoints/sub/m.safetensors", 2 * MiB)
    fp = types.ModuleType("folder_paths")
    fp.get_full_path = lambda folder, name: str(volume / folder / name)
    node.install(fp, nvme)
    fp.get_full_path("checkpoints", "sub\\m.safetensors")
    fp.get_full_path("checkpoints", "sub/m.safetensors")  # repeated request within a minute: dropped
    files = list((nvme / ".requests").iterdir())
    assert len(files) == 1 and files[0].suffix == ".json"
    assert json.loads(files[0].read_text()) == {"kind": "copy", "folder": "checkpoints", "name": "sub/m.safetensors"}
    [req] = spool.drain(nvme)
    assert (req.kind, req.folder, req.name) == ("copy", "checkpoints", "sub/m.safetensors")
    assert list((nvme / ".requests").iterdir()) == []


def test_copier_thread_drains_requests_when_idle(make_cache, volume, nvme):
    node = load_node()
    put_model(volume, "checkpoints/bg.safetensors", 2 * MiB)
    cache = make_cache()  # spool_poll_s=0.05
    fp = types.ModuleType("folder_paths")
    fp.get_full_path = lambda folder, name: str(volume / folder / name)
    node.install(fp, nvme)
    fp.get_full_path("checkpoints", "bg.safetensors")
    wait_for((nvme / "checkpoints" / "bg.safetensors").exists)


def _cached_through_the_hook(node, make_cache, volume, nvme, tmp_path, **cache_kw):
    """A volume model copied to NVMe on the hook's request; ComfyUI's paths list the cache first."""
    src = put_model(volume, "loras/l.safetensors", 2 * MiB)
    cache = make_cache(**cache_kw)
    emp = cache.write_extra_model_paths(tmp_path / "extra_model_paths.yaml")
    fp = standin_folder_paths(emp, tmp_path / "ComfyUI" / "models")
    node.install(fp, nvme)
    assert fp.get_full_path("loras", "l.safetensors") == str(src)
    cache.process_requests()
    cached = nvme / "loras" / "l.safetensors"
    wait_for(lambda: any(e["key"] == "loras/l.safetensors" for e in cache.status()["entries"]))
    return cache, fp, src, cached


def test_hook_never_serves_a_copy_of_a_volume_file_that_changed(make_cache, volume, nvme, tmp_path):
    node = load_node()
    cache, fp, src, cached = _cached_through_the_hook(node, make_cache, volume, nvme, tmp_path)
    assert fp.get_full_path("loras", "l.safetensors") == str(cached)
    put_model(volume, "loras/l.safetensors", 2 * MiB, seed=7)  # same size, new bytes and mtime
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert fp.get_full_path("loras", "l.safetensors") == str(src)
    src.write_bytes(b"smaller")
    assert fp.get_full_path("loras", "l.safetensors") == str(src)


def test_a_copy_the_hook_served_is_not_evicted_under_comfyui(make_cache, volume, nvme, tmp_path):
    """An unpinned entry the hook just handed to ComfyUI survives a job's copy that needs its room."""
    from rp_handler.cache import ModelRef

    node = load_node()
    cache, fp, src, cached = _cached_through_the_hook(node, make_cache, volume, nvme, tmp_path,
                                                      budget_bytes=3 * MiB)
    served = fp.get_full_path("loras", "l.safetensors")
    assert served == str(cached)
    put_model(volume, "checkpoints/big.safetensors", 2 * MiB)
    [st] = cache.preload([ModelRef("big.safetensors", "checkpoints")], job_id="job-2")
    assert cache.wait("job-2", timeout=20)
    assert Path(served).is_file()  # ComfyUI may open it only now
    assert st.status == "skipped_budget" and "in use" in st.error
