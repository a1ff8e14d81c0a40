"""extra_model_paths.yaml has one writer (builder.extra_paths): every path survives as YAML, ': #' included."""

from __future__ import annotations

from pathlib import Path

import yaml

from builder.extra_paths import COMFY_FOLDERS, MODEL_SUBDIRS
from builder.realize import extra_model_paths_yaml
from rp_handler.cache.extra_paths import write_extra_model_paths
from rp_handler.main import write_models_yaml

ODD = "models: #1 'x' \"y\""


def test_the_worker_file_keeps_a_path_with_colon_and_hash(tmp_path):
    models = tmp_path / ODD
    doc = yaml.safe_load(write_models_yaml(models, tmp_path / "a" / "extra.yaml").read_text())
    assert doc["rp_handler_models"]["base_path"] == str(models)
    assert {k for k in doc["rp_handler_models"] if k != "base_path"} == set(MODEL_SUBDIRS)


def test_realize_file_keeps_a_path_with_colon_and_hash(tmp_path):
    models = tmp_path / ODD
    lock = {"models": [{"target": "ipadapter/x.bin"}, {"target": "$COMFY_HOME/custom_nodes/n/m.pt"}]}
    text = extra_model_paths_yaml(models, lock).decode()
    assert text.startswith("# Written by version.py realize")
    group = yaml.safe_load(text)["runpod_comfy_models"]
    assert group["base_path"] == str(models) and group["is_default"] is True
    assert group["ipadapter"] == "ipadapter" and group["checkpoints"] == "checkpoints"


def test_cache_file_keeps_paths_with_colon_and_hash(tmp_path):
    cache, volume = tmp_path / f"nvme {ODD}", tmp_path / f"vol {ODD}"
    folders = {"checkpoints": ("checkpoints",), "text_encoders": ("text_encoders", "clip")}
    doc = yaml.safe_load(write_extra_model_paths(tmp_path / "e.yaml", cache, volume, folders).read_text())
    assert doc["nvme_cache"]["base_path"] == str(cache) and doc["nvme_cache"]["is_default"] is True
    assert doc["network_volume"]["base_path"] == str(volume)
    assert doc["network_volume"]["text_encoders"].split() == ["text_encoders", "clip"]


def test_every_folder_subdir_is_written():
    assert {d for dirs in COMFY_FOLDERS.values() for d in dirs} <= set(MODEL_SUBDIRS)
