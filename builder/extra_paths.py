"""ComfyUI's ``extra_model_paths.yaml``, the one writer, and the model folder table it is built from.

Every writer of the file (realize for a MODELS_DIR outside COMFY_HOME, the worker for its
MODELS_DIR, the worker's NVMe cache) builds a plain dict and renders it here with PyYAML, so a path
holding ``:``, ``#`` or quotes stays one YAML string. Written through :func:`builder.atomic.write_atomic`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import yaml

from .atomic import write_atomic

# Folder type → its subdirectories of a models dir, as ``folder_paths.py`` of the ComfyUI commit
# this project pins (a125cd84) has them, with the legacy names clip, unet and t2i_adapter.
COMFY_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",),
    "loras": ("loras",),
    "vae": ("vae",),
    "text_encoders": ("text_encoders", "clip"),
    "diffusion_models": ("unet", "diffusion_models"),
    "clip_vision": ("clip_vision",),
    "style_models": ("style_models",),
    "embeddings": ("embeddings",),
    "vae_approx": ("vae_approx",),
    "controlnet": ("controlnet", "t2i_adapter"),
    "gligen": ("gligen",),
    "upscale_models": ("upscale_models",),
    "latent_upscale_models": ("latent_upscale_models",),
    "hypernetworks": ("hypernetworks",),
    "photomaker": ("photomaker",),
    "classifiers": ("classifiers",),
    "model_patches": ("model_patches",),
    "audio_encoders": ("audio_encoders",),
}

# Every subdirectory name ComfyUI reads models (or their configs) from.
MODEL_SUBDIRS: tuple[str, ...] = tuple(sorted({d for dirs in COMFY_FOLDERS.values() for d in dirs}
                                              | {"configs", "diffusers"}))


class _Dumper(yaml.SafeDumper):
    """Multi-line values (several dirs for one folder type) as ``|`` blocks, as ComfyUI's example does."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def models_dir_group(models_dir: Path, subdirs: Iterable[str] = MODEL_SUBDIRS, *, is_default: bool) -> dict:
    """One group pointing each of ``subdirs`` at ``models_dir/<subdir>`` (pure).

    ``is_default``: ComfyUI puts the group in front of its own ``models/`` dirs instead of after them.
    """
    group: dict[str, object] = {"base_path": str(models_dir)}
    if is_default:
        group["is_default"] = True
    for name in sorted(set(subdirs)):
        group[name] = name
    return group


def render(doc: dict[str, dict], header: str) -> bytes:
    """The yaml text of ``doc`` (groups in order), after a ``# header`` comment line."""
    text = f"# {header}\n" + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                                       allow_unicode=True)
    return text.encode()


def write_extra_model_paths(path: Path, doc: dict[str, dict], header: str) -> Path:
    """Render ``doc`` to ``path`` atomically; returns ``path``."""
    path = Path(path)
    write_atomic(path, render(doc, header))
    return path
