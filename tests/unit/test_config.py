from pathlib import Path

import pytest

from builder.config import BuildConfig
from rp_handler.config import WorkerConfig


def test_local_defaults_follow_seed_003(tmp_path):
    cfg = BuildConfig.from_env({"HOME": str(tmp_path)}, volume_root=tmp_path / "none", container=False)
    assert cfg.cache_root == tmp_path / ".cache" / "runpod-comfy"
    assert cfg.models_dir == cfg.cache_root / "models"
    assert cfg.comfy_home_for("demo") == tmp_path / "comfy-demo"
    assert cfg.lock_path("demo") == cfg.cache_root / "resolved" / "demo.lock.json"


def test_volume_defaults(tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = BuildConfig.from_env({"HOME": str(tmp_path)}, volume_root=vol, container=True)
    assert cfg.cache_root == vol / "cache" / "runpod-comfy"
    assert str(cfg.comfy_home_for("x")).endswith("builds/comfy-x")


def test_container_without_volume_uses_runpod_volume_comfyui(tmp_path):
    cfg = BuildConfig.from_env({"HOME": str(tmp_path)}, volume_root=tmp_path / "none", container=True)
    assert cfg.comfy_home_for("x") == Path("/runpod-volume/ComfyUI")


def test_explicit_env_wins(tmp_path):
    env = {"COMFY_HOME": str(tmp_path / "h"), "MODELS_DIR": str(tmp_path / "m"),
           "COMFY_CACHE_ROOT": str(tmp_path / "c"), "COMFY_OFFLINE": "true"}
    cfg = BuildConfig.from_env(env, volume_root=tmp_path / "none", container=False)
    assert (cfg.comfy_home_for("a"), cfg.models_dir, cfg.cache_root, cfg.offline) == (
        tmp_path / "h", tmp_path / "m", tmp_path / "c", True)


def test_tokens_never_in_repr():
    cfg = WorkerConfig.from_env({"HF_TOKEN": "hf_SENTINEL", "CIVITAI_TOKEN": "civ_SENTINEL",
                                 "GOOGLE_APPLICATION_CREDENTIALS": "/secret/key.json"})
    text = repr(cfg)
    assert "SENTINEL" not in text and "/secret/key.json" not in text


def test_output_mode_default_depends_on_bucket():
    assert WorkerConfig.from_env({}).output_mode == "base64"
    assert WorkerConfig.from_env({"GCS_BUCKET": "b"}).output_mode == "gcs"


def test_bad_number_is_one_clear_line():
    with pytest.raises(ValueError, match="COMFY_PORT='abc' is not an integer"):
        WorkerConfig.from_env({"COMFY_PORT": "abc"})
