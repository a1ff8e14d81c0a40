from pathlib import Path

import pytest

from builder.config import BuildConfig, is_mount_point
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
    cfg = BuildConfig.from_env({"HOME": str(tmp_path), "NETWORK_VOLUME": "true"}, volume_root=vol, container=True)
    assert cfg.cache_root == vol / "cache" / "runpod-comfy"
    assert str(cfg.comfy_home_for("x")).endswith("builds/comfy-x")
    assert cfg.describe().startswith("paths: network volume at /runpod-volume; cache ")


def test_a_folder_is_not_a_volume_a_mount_point_is(tmp_path):
    """Realize creates /runpod-volume/cache/... in a container; that folder must not turn into a volume."""
    vol = tmp_path / "vol"
    (vol / "cache" / "runpod-comfy").mkdir(parents=True)
    cfg = BuildConfig.from_env({"HOME": str(tmp_path)}, volume_root=vol, container=True)
    assert not cfg.volume_mounted and cfg.comfy_home_for("x") == Path("/runpod-volume/ComfyUI")
    assert cfg.describe() == f"paths: container without a network volume; cache {cfg.cache_root}; models {cfg.models_dir}"
    mounted = BuildConfig.from_env({"HOME": str(tmp_path)}, volume_root=Path("/proc"), container=True)
    assert mounted.volume_mounted and mounted.cache_root == Path("/proc/cache/runpod-comfy")
    off = BuildConfig.from_env({"HOME": str(tmp_path), "NETWORK_VOLUME": "false"}, volume_root=Path("/proc"),
                               container=False)
    assert not off.volume_mounted and off.describe().startswith("paths: plain machine (no container); ")
    with pytest.raises(ValueError, match="NETWORK_VOLUME='maybe': use auto, true or false"):
        BuildConfig.from_env({"NETWORK_VOLUME": "maybe"}, volume_root=vol, container=False)


def test_mountinfo_finds_a_bind_mount_of_the_same_filesystem(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text("36 35 98:0 /mnt1 /runpod\\040volume rw,noatime master:1 - ext3 /dev/root rw\n"
                    "37 35 98:0 / /data rw - ext4 /dev/sda1 rw\n")
    assert is_mount_point(Path("/runpod volume"), info) and is_mount_point(Path("/data"), info)
    assert not is_mount_point(tmp_path / "x", info)


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


@pytest.mark.parametrize("raw, want", [("3", 3.0), ("0", 0.0), ("-1", 0.0), ("0.01", 0.1)])
def test_probe_timeout_zero_turns_the_liveness_probe_off(raw, want):
    assert WorkerConfig.from_env({"COMFY_PROBE_TIMEOUT_S": raw}).probe_timeout_s == want
