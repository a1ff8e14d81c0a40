"""Fixtures for the NVMe cache: a "volume" and an "nvme" dir under tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rp_handler.cache import ModelCache, load_object_info
from rp_handler.config import WorkerConfig
from tests.conftest import PROTOCOL_DIR

MiB = 1 << 20


@pytest.fixture(scope="session")
def object_info() -> dict:
    return load_object_info(PROTOCOL_DIR / "object_info.json.gz")


@pytest.fixture
def volume(tmp_path) -> Path:
    path = tmp_path / "volume" / "models"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def nvme(tmp_path) -> Path:
    return tmp_path / "nvme" / "cache"


def put_model(volume: Path, rel: str, size: int, *, seed: int = 0) -> Path:
    """A model-like file of ``size`` random-ish bytes at ``volume/rel``."""
    path = volume / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(min(size, MiB)) if seed == 0 else bytes([seed % 256]) * min(size, MiB)
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            fh.write(block[: min(left, len(block))])
            left -= len(block)
    return path


def cache_config(nvme: Path, *, budget_bytes: int = 0, min_size_mb: float = 0.5, categories: str = ""):
    env = {"NVME_CACHE_DIR": str(nvme), "CACHE_MIN_SIZE_MB": str(min_size_mb),
           "CACHE_BUDGET_GB": str(budget_bytes / (1 << 30)), "CACHE_CATEGORIES": categories,
           "CACHE_VERBOSE": "true"}
    return WorkerConfig.from_env(env).cache


@pytest.fixture
def make_cache(nvme, volume, object_info):
    made: list[ModelCache] = []

    def make(*, budget_bytes: int = 0, min_size_mb: float = 0.5, categories: str = "", root: Path | None = None,
             **kwargs) -> ModelCache:
        cfg = cache_config(root or nvme, budget_bytes=budget_bytes, min_size_mb=min_size_mb, categories=categories)
        kwargs.setdefault("spool_poll_s", 0.05)
        cache = ModelCache(cfg, volume, kwargs.pop("object_info", object_info), **kwargs)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


def checkpoint_workflow(ckpt: str, *, lora: str | None = None) -> dict:
    wf = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "cfg": 7.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["6", 0],
                                                   "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ComfyUI"}},
    }
    if lora:
        wf["10"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": lora,
                                                           "strength_model": 1.0, "strength_clip": 1.0}}
        wf["3"]["inputs"]["model"] = ["10", 0]
    return wf
