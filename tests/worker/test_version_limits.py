"""options.limits of a version spec: validated by the builder, applied by the worker (stricter wins)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from builder.errors import SpecError
from builder.spec import LIMIT_KEYS, load_spec
from rp_handler.config import Limits, WorkerConfig
from rp_handler.errors import InputError
from rp_handler.job import parse_job
from rp_handler.main import apply_version_limits

SPEC = {"schema_version": 2, "version_id": "lim", "comfy": {"repo": "https://github.com/comfyanonymous/ComfyUI",
                                                            "commit": "a" * 40}}


def write_spec(tmp_path: Path, options: dict) -> Path:
    path = tmp_path / "versions" / "lim.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**SPEC, "options": options}))
    return path


def cfg_for(tmp_path: Path, **env: str) -> WorkerConfig:
    base = {"HOME": str(tmp_path), "VERSIONS_DIR": str(tmp_path / "versions"), "COMFY_VERSION_ID": "lim"}
    return WorkerConfig.from_env({**base, **env}, container=False, volume_root=tmp_path / "no-volume")


def test_builder_knows_every_worker_limit():
    assert set(LIMIT_KEYS) == {f.name for f in dataclasses.fields(Limits)}


def test_spec_limits_are_validated_with_paths(tmp_path):
    path = write_spec(tmp_path, {"limits": {"max_steps": -1, "max_pixel": 5, "max_batch": True}})
    with pytest.raises(SpecError) as err:
        load_spec(path)
    text = str(err.value)
    assert "options.limits.max_steps" in text and "options.limits.max_pixel: unknown limit" in text
    assert "options.limits.max_batch" in text


def test_version_limits_tighten_env_limits_and_refuse_jobs(tmp_path):
    write_spec(tmp_path, {"limits": {"max_steps": 20, "max_batch": 99}})
    cfg = apply_version_limits(cfg_for(tmp_path, LIMIT_MAX_BATCH="4"))
    assert cfg.limits.max_steps == 20  # the version is stricter than the default 150
    assert cfg.limits.max_batch == 4   # the env is stricter than the version
    wf = {"1": {"class_type": "KSampler", "inputs": {"steps": 30}}}
    with pytest.raises(InputError, match="steps=30 exceeds the limit 20"):
        parse_job("j", {"workflow": wf}, cfg)
    wf["1"]["inputs"]["steps"] = 20
    assert parse_job("j", {"workflow": wf}, cfg).workflow == wf


def test_no_spec_means_env_limits(tmp_path):
    cfg = cfg_for(tmp_path)
    assert apply_version_limits(cfg) is cfg
