"""The recorded /object_info with model and input combos refreshed from disk."""

from __future__ import annotations

import copy
import gzip
import json
import os
from pathlib import Path
from typing import Any

try:
    from .folders import ModelPaths, list_input_images
except ImportError:  # run as a script from a ComfyUI-like checkout
    from folders import ModelPaths, list_input_images

HERE = Path(__file__).resolve().parent

# (class, input) → model folder whose files fill the combo.
MODEL_COMBOS: dict[tuple[str, str], str] = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("CheckpointLoader", "ckpt_name"): "checkpoints",
    ("unCLIPCheckpointLoader", "ckpt_name"): "checkpoints",
    ("ImageOnlyCheckpointLoader", "ckpt_name"): "checkpoints",
    ("CreateHookModelAsLora", "ckpt_name"): "checkpoints",
    ("CreateHookModelAsLoraModelOnly", "ckpt_name"): "checkpoints",
    ("VAELoader", "vae_name"): "vae",
    ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("CreateHookLora", "lora_name"): "loras",
    ("CreateHookLoraModelOnly", "lora_name"): "loras",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name1"): "text_encoders",
    ("TripleCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name3"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name1"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name2"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name3"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name4"): "text_encoders",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("DiffControlNetLoader", "control_net_name"): "controlnet",
    ("StyleModelLoader", "style_model_name"): "style_models",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("GLIGENLoader", "gligen_name"): "gligen",
    ("HypernetworkLoader", "hypernetwork_name"): "hypernetworks",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
    ("PhotoMakerLoader", "photomaker_model_name"): "photomaker",
    ("ModelPatchLoader", "name"): "model_patches",
}
INPUT_COMBOS = {("LoadImage", "image"), ("LoadImageMask", "image")}


def _find_data(name: str) -> Path:
    candidates = [HERE / name]
    if os.environ.get("FAKE_COMFY_PROTOCOL_DIR"):
        candidates.append(Path(os.environ["FAKE_COMFY_PROTOCOL_DIR"]) / name)
    candidates.append(HERE.parent.parent / "data" / "protocol" / name)
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"{name} not found in {', '.join(map(str, candidates))}; "
                            "set FAKE_COMFY_PROTOCOL_DIR to tests/data/protocol")


def load_recorded() -> dict[str, Any]:
    with gzip.open(_find_data("object_info.json.gz"), "rt", encoding="utf-8") as f:
        return json.load(f)


class ObjectInfo:
    """Recorded node definitions; combos of model loaders and LoadImage refreshed per call."""

    def __init__(self, paths: ModelPaths, input_dir: Path):
        self.recorded = load_recorded()
        self.paths = paths
        self.input_dir = input_dir
        self._dynamic = {cls for cls, _ in MODEL_COMBOS} | {cls for cls, _ in INPUT_COMBOS}

    def __contains__(self, class_type: object) -> bool:
        return isinstance(class_type, str) and class_type in self.recorded

    def get(self, class_type: str) -> dict[str, Any]:
        info = self.recorded[class_type]
        if class_type not in self._dynamic:
            return info
        info = copy.deepcopy(info)
        for cat in ("required", "optional"):
            for name, spec in (info["input"].get(cat) or {}).items():
                key = (class_type, name)
                if key in MODEL_COMBOS:
                    files = self.paths.list(MODEL_COMBOS[key])
                    if class_type == "VAELoader":
                        files = files + ["pixel_space"]
                    _set_options(spec, files)
                elif key in INPUT_COMBOS:
                    _set_options(spec, list_input_images(self.input_dir))
        return info

    def all(self) -> dict[str, Any]:
        out = dict(self.recorded)
        for cls in self._dynamic:
            if cls in out:
                out[cls] = self.get(cls)
        return out


def _set_options(spec: list, files: list[str]) -> None:
    if spec and spec[0] == "COMBO":
        spec[1]["options"] = files
    elif spec and isinstance(spec[0], list):
        spec[0] = files
