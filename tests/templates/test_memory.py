"""GPU memory policy: when to POST /free, and what counts as out of memory."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from rp_handler.config import WorkerConfig
from rp_handler.memory import MIB, is_oom, min_free_vram, should_free
from tests.conftest import PROTOCOL_DIR


@dataclass
class Cfg:
    free_vram_below_mb: int = 0
    free_every_n_jobs: int = 0


def gpu_stats(*free_mib):
    return {"system": {}, "devices": [
        {"name": f"cuda:{i} NVIDIA H100", "type": "cuda", "index": i, "vram_total": 80 * 1024 * MIB,
         "vram_free": f * MIB, "torch_vram_total": 0, "torch_vram_free": 0}
        for i, f in enumerate(free_mib)]}


def recorded_cpu_stats():
    data = json.loads((PROTOCOL_DIR / "00_startup_system_stats.json").read_text())
    return next(e for e in data["events"] if e["kind"] == "http")["response"]["body_json"]


def test_defaults_keep_models_warm():
    cfg = WorkerConfig.from_env({})
    assert not should_free(gpu_stats(1), 1000, cfg)


def test_threshold_on_smallest_gpu():
    cfg = Cfg(free_vram_below_mb=4096)
    assert not should_free(gpu_stats(5000, 4096), 1, cfg)
    assert should_free(gpu_stats(5000, 4095), 1, cfg)
    assert min_free_vram(gpu_stats(5000, 4095)) == 4095 * MIB


def test_cpu_device_from_real_system_stats_is_ignored():
    stats = recorded_cpu_stats()
    assert stats["devices"][0]["type"] == "cpu"
    assert min_free_vram(stats) is None
    assert not should_free(stats, 1, Cfg(free_vram_below_mb=10**9))
    assert not should_free({}, 1, Cfg(free_vram_below_mb=10))


def test_every_n_jobs():
    cfg = WorkerConfig.from_env({"FREE_EVERY_N_JOBS": "3"})
    assert [should_free(gpu_stats(60000), n, cfg) for n in range(5)] == [False, False, False, True, True]


@pytest.mark.parametrize(
    "details, expected",
    [
        ({"exception_type": "torch.OutOfMemoryError", "exception_message": "CUDA out of memory. Tried to allocate 2.00 GiB"}, True),
        ({"exception_type": "torch.cuda.OutOfMemoryError", "exception_message": ""}, True),
        ({"exception_type": "RuntimeError", "exception_message": "Allocation on device 0 would exceed allowed memory. (out of memory)"}, True),
        ({"exception_type": "RuntimeError", "exception_message": "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"}, True),
        ({"exception_type": "MemoryError", "exception_message": ""}, True),
        ({"exception_type": "RuntimeError", "exception_message": "MPS backend out of memory"}, True),
        # the recorded real execution errors are not OOMs
        ({"exception_type": "PIL.UnidentifiedImageError", "exception_message": "cannot identify image file"}, False),
        ({"exception_type": "spandrel.UnsupportedModelError", "exception_message": ""}, False),
        ({"exception_type": "FileNotFoundError", "exception_message": "memory.safetensors not found"}, False),
        ({}, False),
        (None, False),
    ],
)
def test_is_oom(details, expected):
    assert is_oom(details) is expected


def test_is_oom_on_recorded_execution_errors():
    for name in ("08_runtime_error_loadimage_not_an_image.json", "09_runtime_error_bad_model_file.json"):
        data = json.loads((PROTOCOL_DIR / name).read_text())
        errors = [e["data"]["data"] for e in data["events"]
                  if e["kind"] == "ws_recv" and e.get("frame") == "text" and e["data"].get("type") == "execution_error"]
        assert errors, name
        assert not any(is_oom(d) for d in errors)
        oom = {**errors[0], "exception_type": "torch.OutOfMemoryError", "exception_message": "Allocation on device"}
        assert is_oom(oom)
