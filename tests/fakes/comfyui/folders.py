"""Model search paths like ComfyUI's folder_paths, incl. extra_model_paths.yaml."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml

log = logging.getLogger("comfyui.folders")

# GET /models order, as recorded in transcript 13.
FOLDER_NAMES = [
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
    "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models",
    "custom_nodes", "hypernetworks", "photomaker", "classifiers", "model_patches", "audio_encoders",
]
LEGACY = {"unet": "diffusion_models", "clip": "text_encoders"}
MODEL_EXTS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


class ModelPaths:
    """Folder name → ordered list of directories (default models dir first, then the yaml)."""

    def __init__(self, models_dir: Path):
        self.models_dir = Path(models_dir)
        self.paths: dict[str, list[str]] = {
            name: [str(self.models_dir / name)] for name in FOLDER_NAMES
        }

    def add(self, folder: str, path: str, is_default: bool = False) -> None:
        folder = LEGACY.get(folder, folder)
        entries = self.paths.setdefault(folder, [])
        if path in entries:
            entries.remove(path)
        if is_default:
            entries.insert(0, path)
        else:
            entries.append(path)

    def load_yaml(self, yaml_path: Path) -> None:
        """Add the search paths of an extra_model_paths.yaml, in file order."""
        config = yaml.safe_load(Path(yaml_path).read_text(encoding="utf-8")) or {}
        yaml_dir = os.path.dirname(os.path.abspath(yaml_path))
        for conf in config.values():
            if not conf:
                continue
            conf = dict(conf)
            base_path = conf.pop("base_path", None)
            if base_path:
                base_path = os.path.expandvars(os.path.expanduser(str(base_path)))
                if not os.path.isabs(base_path):
                    base_path = os.path.abspath(os.path.join(yaml_dir, base_path))
            is_default = bool(conf.pop("is_default", False))
            for folder, value in conf.items():
                for line in str(value).split("\n"):
                    line = line.strip()
                    if not line:
                        continue
                    full = os.path.join(base_path, line) if base_path else (
                        line if os.path.isabs(line) else os.path.abspath(os.path.join(yaml_dir, line)))
                    full = os.path.normpath(full)
                    log.info("Adding extra search path %s %s", folder, full)
                    self.add(folder, full, is_default)

    def list(self, folder: str) -> list[str]:
        """Sorted relative names of model files in every search path of ``folder``."""
        names: set[str] = set()
        for base in self.paths.get(folder, []):
            if not os.path.isdir(base):
                continue
            for root, dirs, files in os.walk(base, followlinks=True):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                for f in files:
                    if os.path.splitext(f)[1].lower() in MODEL_EXTS or folder == "configs":
                        rel = os.path.relpath(os.path.join(root, f), base)
                        names.add(rel.replace(os.sep, "/"))
        return sorted(names)

    def resolve(self, folder: str, name: str) -> str | None:
        """First existing file named ``name`` in the search paths (search order wins)."""
        for base in self.paths.get(folder, []):
            full = os.path.join(base, name)
            if os.path.isfile(full):
                return full
        return None


def list_input_images(input_dir: Path) -> list[str]:
    """LoadImage's combo: image files at the top of the input directory, sorted."""
    if not input_dir.is_dir():
        return []
    return sorted(
        p.name for p in input_dir.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS
    )
