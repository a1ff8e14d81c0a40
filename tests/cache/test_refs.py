"""Model references found through the real object_info snapshot of ComfyUI a125cd84."""

from __future__ import annotations

import copy
import gzip
import json

import pytest

from rp_handler.cache.folders import FolderIndex
from rp_handler.cache.refs import (RefScanner, load_object_info, model_combos, refs_from_names,
                                   save_object_info_snapshot, scan_workflow)
from tests.cache.conftest import checkpoint_workflow, put_model
from tests.conftest import PROTOCOL_DIR


def flux_like_workflow() -> dict:
    return {
        "f1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux/flux1-dev.safetensors",
                                                     "weight_dtype": "fp8_e4m3fn"}},
        "f2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "t5xxl_fp16.safetensors", "type": "flux",
                                                     "device": "default"}},
        "f3": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "f4": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x_ultra.pth"}},
        "f5": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "f6": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}},
        "f7": {"class_type": "CLIPTextEncode", "inputs": {"text": "model.safetensors", "clip": ["f2", 0]}},
    }


def test_combos_found_for_every_node_class_legacy_and_v3(object_info):
    combos = model_combos(object_info)
    assert combos["CheckpointLoaderSimple"]["ckpt_name"].options == ()  # legacy [[...]] combo, empty
    assert combos["UpscaleModelLoader"]["model_name"].options == (
        "broken_not_a_model.safetensors", "tiny_compact_2x.safetensors")  # V3 ["COMBO", {"options"}]
    assert set(combos["DualCLIPLoader"]) == {"clip_name1", "clip_name2"}
    assert "LoadImage" not in combos  # image_upload combos pick user files, not models
    assert "sampler_name" not in combos.get("KSampler", {})  # enum combos without model files
    assert "weight_dtype" not in combos["UNETLoader"]


def test_real_loaders_map_to_folders_and_volume_files(object_info, volume):
    put_model(volume, "checkpoints/sd15.safetensors", 10)
    put_model(volume, "loras/detail.safetensors", 10)
    put_model(volume, "unet/flux/flux1-dev.safetensors", 10)  # legacy dir name of diffusion_models
    put_model(volume, "clip/t5xxl_fp16.safetensors", 10)  # legacy dir name of text_encoders
    put_model(volume, "vae/ae.safetensors", 10)
    put_model(volume, "upscale_models/4x_ultra.pth", 10)

    wf = checkpoint_workflow("sd15.safetensors", lora="detail.safetensors") | flux_like_workflow()
    refs = scan_workflow(wf, object_info, volume)
    found = {(r.folder, r.name, r.class_type) for r in refs}
    assert found == {
        ("checkpoints", "sd15.safetensors", "CheckpointLoaderSimple"),
        ("loras", "detail.safetensors", "LoraLoader"),
        ("diffusion_models", "flux/flux1-dev.safetensors", "UNETLoader"),
        ("text_encoders", "t5xxl_fp16.safetensors", "CLIPLoader"),
        ("vae", "ae.safetensors", "VAELoader"),
        ("upscale_models", "4x_ultra.pth", "UpscaleModelLoader"),
    }
    index = FolderIndex(volume)
    for ref in refs:
        assert index.locate(ref.folder, ref.name) is not None, ref


def test_folder_from_option_list_for_a_custom_node(object_info, volume):
    """A custom loader with an input name we know nothing about: its options match the ipadapter folder."""
    put_model(volume, "ipadapter/ip-adapter_sd15.safetensors", 10)
    put_model(volume, "ipadapter/ip-adapter_sdxl.safetensors", 10)
    put_model(volume, "loras/ip-adapter_sd15.safetensors", 10)  # same name elsewhere: options decide
    info = copy.deepcopy(object_info)
    info["IPAdapterModelLoader"] = {"input": {"required": {"ipadapter_file": [
        ["ip-adapter_sd15.safetensors", "ip-adapter_sdxl.safetensors"]]}}}
    info["V3CustomLoader"] = {"input": {"required": {"weights": ["COMBO", {"options": [
        "ip-adapter_sdxl.safetensors"]}]}}}
    wf = {"1": {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": "ip-adapter_sd15.safetensors"}},
          "2": {"class_type": "V3CustomLoader", "inputs": {"weights": "ip-adapter_sdxl.safetensors"}}}
    refs = scan_workflow(wf, info, volume)
    assert [(r.folder, r.name) for r in refs] == [("ipadapter", "ip-adapter_sd15.safetensors"),
                                                  ("ipadapter", "ip-adapter_sdxl.safetensors")]


def test_node_missing_from_snapshot_uses_model_extension_and_location(object_info, volume):
    put_model(volume, "sams/sam_vit_b.pth", 10)
    wf = {"1": {"class_type": "SAMLoaderNotInSnapshot", "inputs": {"model_name": "sam_vit_b.pth", "device": "cuda"}},
          "2": {"class_type": "OtherUnknown", "inputs": {"ckpt_name": "nowhere.safetensors"}}}
    refs = scan_workflow(wf, object_info, volume)
    assert [(r.folder, r.name) for r in refs] == [("sams", "sam_vit_b.pth"), ("checkpoints", "nowhere.safetensors")]


def test_missing_models_keep_their_folder_from_the_known_loaders(object_info, volume):
    refs = scan_workflow(flux_like_workflow(), object_info, volume)
    assert {(r.folder, r.name) for r in refs} == {
        ("diffusion_models", "flux/flux1-dev.safetensors"), ("text_encoders", "t5xxl_fp16.safetensors"),
        ("vae", "ae.safetensors"), ("upscale_models", "4x_ultra.pth")}


def test_duplicates_collapse_and_links_are_ignored(object_info, volume):
    put_model(volume, "checkpoints/a.safetensors", 10)
    wf = checkpoint_workflow("a.safetensors")
    wf["20"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}}
    assert len(scan_workflow(wf, object_info, volume)) == 1


def test_path_traversal_is_not_a_reference_to_outside(object_info, volume):
    wf = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "../../etc/passwd.safetensors"}}}
    refs = scan_workflow(wf, object_info, volume)
    assert FolderIndex(volume).locate(refs[0].folder, refs[0].name) is None


def test_not_an_api_workflow_is_a_clear_error(object_info, volume):
    with pytest.raises(ValueError, match="class_type.*Save \\(API\\)"):
        scan_workflow({"nodes": [], "links": []}, object_info, volume)


def test_snapshot_round_trip(tmp_path, object_info):
    path = save_object_info_snapshot(object_info, tmp_path / "snap" / "object_info.json.gz")
    assert load_object_info(path) == object_info
    assert not list(path.parent.glob("*.incomplete"))
    plain = save_object_info_snapshot({"A": {"input": {}}}, tmp_path / "oi.json")
    assert json.loads(plain.read_text()) == {"A": {"input": {}}}
    assert load_object_info(PROTOCOL_DIR / "object_info.json.gz") == json.load(
        gzip.open(PROTOCOL_DIR / "object_info.json.gz"))


def test_bad_snapshot_names_the_file(tmp_path):
    bad = tmp_path / "oi.json"
    bad.write_text("{nope")
    with pytest.raises(ValueError, match=str(bad)):
        load_object_info(bad)
    with pytest.raises(FileNotFoundError, match="save_object_info_snapshot"):
        load_object_info(tmp_path / "missing.json")


def test_warm_names(volume):
    put_model(volume, "loras/x.safetensors", 10)
    index = FolderIndex(volume)
    refs = refs_from_names(["checkpoints/a.safetensors", {"folder": "clip", "name": "t5.safetensors"},
                            "x.safetensors"], index)
    assert [(r.folder, r.name) for r in refs] == [("checkpoints", "a.safetensors"),
                                                  ("text_encoders", "t5.safetensors"), ("loras", "x.safetensors")]
    with pytest.raises(ValueError, match="folder/name"):
        refs_from_names([42], index)


def test_scanner_accepts_live_object_info_with_filled_options(object_info, volume):
    """Once ComfyUI is up its combos list the files: the listing then decides the folder."""
    put_model(volume, "checkpoints/sdxl.safetensors", 10)
    info = copy.deepcopy(object_info)
    info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] = ["sdxl.safetensors"]
    refs = RefScanner(info, FolderIndex(volume)).scan(checkpoint_workflow("sdxl.safetensors"))
    assert [(r.folder, r.name) for r in refs] == [("checkpoints", "sdxl.safetensors")]
