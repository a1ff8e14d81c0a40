"""The recorded /object_info with model and input combos refreshed from disk.

Which combos list which model folder comes from ``model_folders.json``, recorded from a real
ComfyUI by ``record_model_folders.py`` (with the fixed extras such as VAELoader's ``pixel_space``);
which combos list input images comes from the recording's ``image_upload`` flags. Nothing here
repeats the worker's own table (``rp_handler/cache/refs.py``), so the two can disagree.
"""

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


def load_model_combos() -> dict[tuple[str, str], tuple[str, list[str]]]:
    """(class, input) → (model folder, fixed extra options), as the real ComfyUI listed them."""
    with open(HERE / "model_folders.json", encoding="utf-8") as f:
        table = json.load(f)
    return {(cls, name): (v["folder"], list(v["extra"])) for cls, inputs in table.items() for name, v in inputs.items()}


def input_image_combos(recorded: dict[str, Any]) -> set[tuple[str, str]]:
    """Combos of the input folder's images: ``image_upload`` widgets that read no other folder."""
    out = set()
    for cls, info in recorded.items():
        for cat in ("required", "optional"):
            for name, spec in ((info.get("input") or {}).get(cat) or {}).items():
                flags = spec[1] if isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], dict) else {}
                if flags.get("image_upload") and "image_folder" not in flags and isinstance(spec[0], list):
                    out.add((cls, name))
    return out


class ObjectInfo:
    """Recorded node definitions; combos of model loaders and LoadImage refreshed per call."""

    def __init__(self, paths: ModelPaths, input_dir: Path):
        self.recorded = load_recorded()
        self.model_combos = load_model_combos()
        self.input_combos = input_image_combos(self.recorded)
        self.paths = paths
        self.input_dir = input_dir
        self._dynamic = {cls for cls, _ in self.model_combos} | {cls for cls, _ in self.input_combos}

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
                if key in self.model_combos:
                    folder, extra = self.model_combos[key]
                    _set_options(spec, self.paths.list(folder) + extra)
                elif key in self.input_combos:
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
