"""Opt-in: the OnDemand hook inside a real ComfyUI on CPU (set COMFYUI_DIR and COMFYUI_PYTHON).

The tiny upscale model (recipe in tests/data/protocol/README.md) sits only on the "volume". ComfyUI
loads the hook from a custom_nodes dir added through a second extra_model_paths file (nothing is
written into COMFYUI_DIR) and runs with --cache-none so the loader resolves the model on every prompt.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from builder.extras import NVME_NODE_SOURCE, install_tree
from rp_handler.process import free_port
from tests.conftest import REPO_ROOT
from tests.helpers import (COMFYUI_DIR, COMFYUI_PYTHON, TINY_MODEL, needs_real_comfy, stop_process,
                           wait_until_answers)

pytestmark = [pytest.mark.real_comfy]
needs_comfy_dir = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR (a ComfyUI checkout)")

# ComfyUI's own folder_paths + extra_config (stdlib and PyYAML only), with the hook installed.
RESOLVE = """
import json, sys
comfy, repo, emp, nvme, name = sys.argv[1:6]
sys.path[:0] = [comfy, repo]
sys.argv = ["main.py"]
import folder_paths
from utils.extra_config import load_extra_path_config
load_extra_path_config(emp)
import comfy_nodes.nvme_cache as node
node.install(folder_paths, nvme)
print(json.dumps({"path": folder_paths.get_full_path_or_raise("upscale_models", name),
                  "search": folder_paths.get_folder_paths("upscale_models"),
                  "listed": folder_paths.get_filename_list("upscale_models")}))
"""


@needs_comfy_dir
def test_real_folder_paths_reads_the_cache_first(make_cache, volume, nvme, tmp_path):
    import sys

    from tests.cache.conftest import MiB, put_model

    src = put_model(volume, "upscale_models/x4.safetensors", 2 * MiB)
    cache = make_cache(spool_poll_s=3600)
    emp = cache.write_extra_model_paths(tmp_path / "extra_model_paths.yaml")

    def resolve() -> dict:
        out = subprocess.run([sys.executable, "-c", RESOLVE, COMFYUI_DIR, str(REPO_ROOT), str(emp), str(nvme),
                              "x4.safetensors"], check=True, capture_output=True, text=True, cwd=tmp_path)
        return json.loads(out.stdout.strip().splitlines()[-1])

    first = resolve()
    assert first["path"] == str(src)
    assert first["search"][0] == str(nvme / "upscale_models")  # is_default: in front of ComfyUI's models/
    assert first["search"][-1] == str(volume / "upscale_models")
    cache.process_requests()  # the hook asked for a copy
    _wait_for((nvme / "upscale_models" / "x4.safetensors").exists)
    (nvme / "upscale_models" / "y.safetensors.ab12.incomplete").write_bytes(b"partial")
    second = resolve()
    assert second["path"] == str(nvme / "upscale_models" / "x4.safetensors")
    assert second["listed"] == ["x4.safetensors"]  # one entry; the .incomplete temp is never listed


WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 8421504}},
    "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "tiny_compact_2x.safetensors"}},
    "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "nvme_cache"}},
}


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=30).read() or b"{}")


def _run_prompt(url: str) -> dict:
    prompt_id = _post(url + "/prompt", {"prompt": WORKFLOW})["prompt_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        history = json.loads(urllib.request.urlopen(f"{url}/history/{prompt_id}", timeout=10).read())
        if history.get(prompt_id, {}).get("status", {}).get("completed") is not None:
            return history[prompt_id]
        time.sleep(0.2)
    pytest.fail("the prompt did not finish within 120 s")


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@needs_real_comfy
@pytest.mark.slow
def test_ondemand_hook_in_real_comfyui(make_cache, volume, nvme, tmp_path):
    model = volume / "upscale_models" / "tiny_compact_2x.safetensors"
    model.parent.mkdir(parents=True)
    subprocess.run([COMFYUI_PYTHON, "-c", TINY_MODEL, str(model)], check=True)
    cache = make_cache(min_size_mb=0)
    emp = cache.write_extra_model_paths(tmp_path / "extra_model_paths.yaml")
    install_tree(NVME_NODE_SOURCE, tmp_path / "nodes" / "custom_nodes" / "nvme_cache")  # as realize installs it
    nodes_yaml = tmp_path / "nodes.yaml"
    nodes_yaml.write_text(f"worker_nodes:\n  base_path: {tmp_path / 'nodes'}\n  custom_nodes: custom_nodes\n")
    run = tmp_path / "run"
    (run / "user").mkdir(parents=True)
    port = free_port()
    env = dict(os.environ, NVME_CACHE_DIR=str(nvme), CACHE_MIN_SIZE_MB="0")
    cmd = [COMFYUI_PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--disable-auto-launch", "--cache-none", "--input-directory", str(run / "input"),
           "--output-directory", str(run / "output"), "--temp-directory", str(run / "temp"),
           "--user-directory", str(run / "user"), "--database-url", f"sqlite:///{run / 'user' / 'comfyui.db'}",
           "--extra-model-paths-config", str(emp), str(nodes_yaml)]
    log_path = tmp_path / "comfyui.log"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=COMFYUI_DIR, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until_answers(url + "/system_stats", timeout=300, proc=proc, log=log_path, poll=0.5,
                               request_timeout=2)

            first = _run_prompt(url)
            assert first["status"]["status_str"] == "success", first["status"]
            cached = nvme / "upscale_models" / "tiny_compact_2x.safetensors"
            _wait_for(lambda: (cache.process_requests() or True) and cached.exists())
            assert cached.read_bytes() == model.read_bytes()

            second = _run_prompt(url)  # resolves the cache copy now; the hook records the hit
            assert second["status"]["status_str"] == "success", second["status"]
            _wait_for(lambda: (cache.process_requests() or True) and
                      any(e["hits"] >= 1 for e in cache.status()["entries"]))
        finally:
            stop_process(proc, 30)
