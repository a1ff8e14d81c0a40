"""The NVMe cache inside the worker: WorkerContext + Supervisor over the fake ComfyUI (spawned from a copy),
a "volume" models dir and an "nvme" cache dir under tmp_path, wired as ``rp_handler.main`` wires them."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest

from rp_handler.cache.actions import parse_warm
from rp_handler.cache.worker import combo_names, open_cache
from rp_handler.config import WorkerConfig
from rp_handler.version_files import lock_checksums, version_lock, version_spec
from rp_handler.errors import InputError
from rp_handler.context import WorkerContext
from rp_handler.handler import handle
from rp_handler.main import attach_cache, client_factory, start_comfy
from rp_handler.process import ComfyDirs
from tests.worker.conftest import copy_fake, make_cfg

pytestmark = pytest.mark.slow  # a supervised worker with the fake ComfyUI process

MiB = 1 << 20


def upscale_model(volume: Path, name: str, size: int = MiB) -> Path:
    """A file the fake's UpscaleModelLoader accepts ("body.0.weight" near the start), ``size`` bytes."""
    path = volume / "upscale_models" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    head = b"body.0.weight"
    path.write_bytes(head + os.urandom(size - len(head)))
    return path


def checkpoint(volume: Path, name: str, size: int) -> Path:
    path = volume / "checkpoints" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def upscale_workflow(model: str) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 255}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model}},
        "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "up"}},
    }


class CacheWorker:
    """What ``rp_handler.main`` builds (cache opened before ComfyUI spawns), minus runpod."""

    def __init__(self, root: Path, *, nvme: Path | None = None, throttle_bps: float | None = None, **env: str):
        self.root = root
        self.volume = root / "volume" / "models"
        self.volume.mkdir(parents=True, exist_ok=True)
        self.nvme = nvme or root / "nvme" / "cache"
        home = copy_fake(root / "ComfyUI")
        base = {"COMFY_HOME": str(home), "COMFY_IO_DIR": str(root / "io"), "MODELS_DIR": str(self.volume),
                "NVME_CACHE_DIR": str(self.nvme), "CACHE_MIN_SIZE_MB": "0.5", "CACHE_VERBOSE": "true"}
        self.cfg = make_cfg(root, **{**base, **env})
        self.cache = open_cache(self.cfg, home, read_throttle_bps=throttle_bps, spool_poll_s=0.05)
        self.sup = start_comfy(self.cfg, io_dir=root / "io", cache=self.cache)
        self.cache.start()
        self.ctx = WorkerContext(cfg=self.cfg, dirs=self.sup.proc.dirs, client_factory=client_factory(self.sup),
                                 supervisor=self.sup, version_id=self.cfg.version_id)
        attach_cache(self.ctx, self.cache, self.sup)
        self.sup.ensure_ready(self.cfg.boot_timeout_s)

    def run(self, job_input: dict, job_id: str) -> dict:
        return handle({"id": job_id, "input": job_input}, self.ctx)

    def close(self) -> None:
        self.ctx.close()
        self.sup.stop(timeout=5)
        self.cache.close()


@pytest.fixture
def worker_factory(tmp_path):
    made: list[CacheWorker] = []

    def make(**kw) -> CacheWorker:
        w = CacheWorker(tmp_path, **kw)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def test_miss_then_hit_and_comfyui_reads_the_cached_copy(worker_factory, tmp_path):
    w = worker_factory(CACHE_WAIT_S="30")  # the first job waits for its copy: its timings show it
    upscale_model(w.volume, "up2x.safetensors")
    cmd = w.sup.proc.command()
    yaml_path = Path(cmd[cmd.index("--extra-model-paths-config") + 1])
    assert yaml_path.read_text().index(str(w.nvme)) < yaml_path.read_text().index(str(w.volume))
    assert cmd[cmd.index("--database-url") + 1] == f"sqlite:///{tmp_path / 'io' / 'user'}/comfyui.db"

    first = w.run({"workflow": upscale_workflow("up2x.safetensors")}, "job-1")
    assert "error" not in first, first
    rep = first["cache"]
    assert (rep["hits"], rep["misses"], rep["bytes_copied"]) == (0, 1, MiB)
    [model] = rep["models"]
    assert (model["folder"], model["name"], model["status"]) == ("upscale_models", "up2x.safetensors", "cached")
    assert (w.nvme / "upscale_models" / "up2x.safetensors").read_bytes() == \
        (w.volume / "upscale_models" / "up2x.safetensors").read_bytes()
    [local] = first["timings"]["models_local"]
    assert local["model"] == "upscale_models/up2x.safetensors" and local["bytes"] == MiB and local["gb_per_s"] > 0
    key = "model_local:upscale_models/up2x.safetensors"
    assert first["timings"]["phases"][key] == first["timings"]["cold_start"][key] == local["at"]
    assert w.cache.cache.status()["entries"][0]["in_use_by"] == []  # released after the job

    second = w.run({"workflow": upscale_workflow("up2x.safetensors")}, "job-2")
    assert "error" not in second, second
    assert (second["cache"]["hits"], second["cache"]["misses"]) == (1, 0)
    assert second["cache"]["models"][0]["read_from"] == "cache"
    assert "models_local" not in second["timings"] and "cold_start" not in second["timings"]

    # Only the cached copy is left: ComfyUI (search order from the yaml) must load it.
    (w.volume / "upscale_models" / "up2x.safetensors").unlink()
    third = w.run({"workflow": upscale_workflow("up2x.safetensors")}, "job-3")
    assert "error" not in third, third
    assert third["cache"]["hits"] == 1 and len(third["outputs"]) == 1


def test_jobs_do_not_wait_for_copies_by_default(worker_factory):
    # 4 MiB through a 2 MiB/s "volume": the copy outlives the job, which reads the volume meanwhile.
    w = worker_factory(throttle_bps=2 * MiB)
    upscale_model(w.volume, "slow.safetensors", 4 * MiB)
    res = w.run({"workflow": upscale_workflow("slow.safetensors")}, "job-1")
    assert "error" not in res, res
    [model] = res["cache"]["models"]
    assert (model["status"], model["read_from"]) == ("scheduled", "volume")
    assert res["cache"]["misses"] == 1
    assert w.cache.cache.wait("job-1", 30)
    again = w.run({"workflow": upscale_workflow("slow.safetensors")}, "job-2")
    assert again["cache"]["hits"] == 1


def test_status_and_warm_actions_with_a_warm_set(worker_factory, tmp_path):
    versions = tmp_path / "versions"
    versions.mkdir()
    (versions / "v1.json").write_text(json.dumps(spec_with("v1", {"warm_models": ["checkpoints/base.safetensors"]})))
    volume = tmp_path / "volume" / "models"
    checkpoint(volume, "base.safetensors", MiB)
    checkpoint(volume, "a.safetensors", 3 * MiB)
    checkpoint(volume, "b.safetensors", 3 * MiB)
    w = worker_factory(throttle_bps=4 * MiB, COMFY_VERSION_ID="v1", VERSIONS_DIR=str(versions))

    deadline = time.monotonic() + 30
    while not (w.nvme / "checkpoints" / "base.safetensors").exists():  # the warm set copies at start
        assert time.monotonic() < deadline, "warm set was not copied"
        time.sleep(0.05)

    started = w.run({"action": "warm", "models": ["checkpoints/a.safetensors"]}, "warm-1")
    assert started["ok"] and not started["joined"] and not started["done"]
    joined = w.run({"action": "warm", "models": ["checkpoints/b.safetensors"], "wait": True}, "warm-2")
    assert joined["ok"] and joined["joined"] and joined["done"]
    assert joined["warm_id"] == started["warm_id"]
    assert {m["name"]: m["status"] for m in joined["models"]} == {"a.safetensors": "cached", "b.safetensors": "cached"}

    status = w.run({"action": "status"}, "status-1")
    cache = status["cache"]
    assert cache["enabled"] and cache["in_flight"] == []
    assert {e["key"] for e in cache["entries"]} == {"checkpoints/base.safetensors", "checkpoints/a.safetensors",
                                                  "checkpoints/b.safetensors"}
    assert cache["warm_models"] == ["checkpoints/base.safetensors"]
    assert status["comfy"]["ready"] is True
    deadline = time.monotonic() + 30  # no realize snapshot here: ComfyUI's live object_info once it is ready
    while w.run({"action": "status"}, "status-2")["cache"]["object_info"] != "live":
        assert time.monotonic() < deadline, "the live object_info was never loaded"
        time.sleep(0.1)

    bad = w.run({"action": "warm", "models": "checkpoints/a.safetensors"}, "warm-3")
    assert "models" in bad["error"] and bad["details"]["field"] == "models"
    empty = w.run({"action": "warm"}, "warm-4")
    assert "'models'" in empty["error"] and "'workflow'" in empty["error"]


def test_missing_model_is_named_in_the_job_error(worker_factory):
    w = worker_factory()
    res = w.run({"workflow": upscale_workflow("nowhere_4x.pth")}, "job-1")
    assert "nowhere_4x.pth" in res["error"] and "not on the volume" in res["error"]
    assert res["details"]["missing_models"] == ["upscale_models/nowhere_4x.pth"]
    assert res["details"]["cache"]["models"][0]["status"] == "not_found"
    # a model in ComfyUI's own models/ is not missing, even though the volume lacks it
    own = upscale_model(Path(w.cfg.comfy_home) / "models", "own.safetensors")
    ok = w.run({"workflow": upscale_workflow(own.name)}, "job-2")
    assert "error" not in ok, ok
    assert ok["cache"]["models"][0]["status"] == "skipped_exists"


def test_unwritable_cache_dir_runs_jobs_from_the_volume(worker_factory, tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache dir's parent should be")
    caplog.set_level(logging.WARNING, logger="rp_handler.cache")
    w = worker_factory(nvme=blocker / "cache")
    upscale_model(w.volume, "vol.safetensors")
    res = w.run({"workflow": upscale_workflow("vol.safetensors")}, "job-1")
    assert "error" not in res, res
    assert res["cache"]["disabled"] and res["cache"]["misses"] == 0
    assert res["cache"]["models"][0]["read_from"] == "volume"
    assert any("NVMe cache disabled" in r.getMessage() for r in caplog.records)
    assert w.run({"action": "status"}, "s")["cache"]["enabled"] is False


# --- pure pieces -------------------------------------------------------------------------------------------
def test_parse_warm():
    req = parse_warm({"action": "warm", "models": ["checkpoints/x.safetensors", {"folder": "loras", "name": "l"}],
                      "wait": True}, max_timeout_s=100)
    assert req.wait and req.timeout_s == 100 and len(req.models) == 2 and req.workflow is None
    assert parse_warm({"workflow": '{"1": {"class_type": "X"}}'}, max_timeout_s=9).workflow == {"1": {"class_type": "X"}}
    for raw, field in [({"models": [3]}, "models[0]"), ({"models": ["a"], "wait": "yes"}, "wait"),
                       ({"models": ["a"], "timeout_s": 0}, "timeout_s"), ({"models": ["a"], "timeout_s": 500}, "timeout_s"),
                       ({"workflow": []}, "workflow"), ({"models": ["a"], "force": 1}, "force"), ([], "input")]:
        with pytest.raises(InputError) as info:
            parse_warm(raw, max_timeout_s=100)
        assert info.value.details["field"] == field, raw


def spec_with(version_id: str, options: dict) -> dict:
    return {"schema_version": 2, "version_id": version_id, "options": options,
            "comfy": {"repo": "https://github.com/comfyanonymous/ComfyUI", "commit": "a" * 40}}


def test_warm_set_checksums_and_combo_names(tmp_path, caplog):
    cfg = WorkerConfig.from_env({"HOME": str(tmp_path), "VERSIONS_DIR": str(tmp_path / "versions"),
                                 "COMFY_CACHE_ROOT": str(tmp_path / "cache"), "COMFY_VERSION_ID": "v"},
                                container=False, volume_root=tmp_path / "no-volume")
    assert version_spec(cfg) is None and version_lock(cfg) is None  # absent: the environment's settings
    spec = cfg.build.spec_path("v")
    spec.parent.mkdir(parents=True)
    spec.write_text(json.dumps(spec_with("v", {"warm_models": ["checkpoints/a.safetensors"]})))
    assert version_spec(cfg).options.warm_models == ("checkpoints/a.safetensors",)
    spec.write_text(json.dumps(spec_with("v", {"warm_models": ["checkpoints/a.safetensors", 3]})))
    assert version_spec(cfg) is None and "options.warm_models" in caplog.text  # broken: warned, ignored
    lock = cfg.build.lock_path("v")
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"lock_version": 1, "spec_digest": "sha256:x", "comfy": {"commit": "a" * 40},
                                "custom_nodes": [], "pip": {"installed": None},
                                "models": [{"target": "checkpoints/a.safetensors", "sha256": "ab" * 32},
                                           {"target": "loras/b.safetensors", "sha256": None}]}))
    assert lock_checksums(version_lock(cfg)) == {"checkpoints/a.safetensors": "ab" * 32}
    lock.write_text("{}")
    assert version_lock(cfg) is None and "is corrupt" in caplog.text
    info = {"A": {"input": {"required": {"m": [["x.safetensors", "y.pt"], {}], "n": ["INT", {}]},
                            "optional": {"v3": ["COMBO", {"options": ["z.gguf"]}]}}}}
    assert combo_names(info) == {"x.safetensors", "y.pt", "z.gguf"}


def test_user_dir_gets_its_own_database(tmp_path):
    args = ComfyDirs.under(tmp_path).args()
    assert args[args.index("--database-url") + 1] == f"sqlite:///{tmp_path}/user/comfyui.db"
    assert "--database-url" not in ComfyDirs.defaults(tmp_path).args()


def test_spec_warm_models_option_is_validated():
    from builder.errors import SpecError
    from builder.spec import validate

    base = {"schema_version": 2, "version_id": "v", "comfy": {"repo": "https://github.com/comfyanonymous/ComfyUI",
                                                            "commit": "a125cd84"}}
    validate(dict(base, options={"warm_models": ["checkpoints/a.safetensors"]}))
    with pytest.raises(SpecError, match="warm_models"):
        validate(dict(base, options={"warm_models": "checkpoints/a.safetensors"}))


def test_run_handler_uses_the_cache(tmp_path):
    from rp_handler.localrun import run_handler

    volume = tmp_path / "volume" / "models"
    upscale_model(volume, "cli.safetensors")
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(upscale_workflow("cli.safetensors")))
    env = {"HOME": str(tmp_path / "home"), "COMFY_HOME": str(copy_fake(tmp_path / "ComfyUI")), "COMFY_PORT": "0",
           "COMFY_FORCE_CPU": "true", "COMFY_CACHE_ROOT": str(tmp_path / "cache"), "COMFY_IO_DIR": str(tmp_path / "io"),
           "NVME_CACHE_DIR": str(tmp_path / "nvme"), "CACHE_MIN_SIZE_MB": "0.5", "CACHE_WAIT_S": "30"}
    out = tmp_path / "result.json"
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:  # run-handler points the root logger at this test's (captured) stderr: put it back afterwards
        rc = run_handler(["v1", "--workflow", str(wf), "--models-dir", str(volume), "--out-file", str(out)], env=env)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["cache"]["misses"] == 1 and result["cache"]["models"][0]["status"] == "cached"
    assert (tmp_path / "nvme" / "upscale_models" / "cli.safetensors").is_file()
