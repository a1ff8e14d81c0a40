"""Model references in an API-format workflow, found through ComfyUI's node definitions.

Which inputs name a model file is read from ``/object_info`` for every node class
(custom nodes included), never from a list of input names: an input is a *model
combo* when it is a combo (legacy ``[[options...], {...}]`` or V3
``["COMBO", {"options": [...]}]``) that is not an upload widget and whose options
are model files, or is empty (a snapshot taken while the folder had no files),
or is one of ComfyUI's core loaders.  A value of such an input is a reference
when it looks like a model file (extension) or is a file in one of the volume's
folders.  A value with a model extension in any other combo counts too (the
snapshot predates the file).

The folder type of each reference is derived in this order:

1. **Option list vs folder listings**: the folder type whose files on the volume
   share the most names with the input's options (what ComfyUI itself listed).
2. **Known loaders**: for ComfyUI's core loaders with empty options, the folder
   their code passes to ``folder_paths`` (``CORE_LOADER_FOLDERS``), plus a few
   input names custom nodes reuse with the same meaning (``ckpt_name``...).
3. **Where the file is**: the one folder type on the volume that has the file.

Node classes missing from object_info (a custom node not in the snapshot) are
scanned for string values with a model extension; their folder comes from 2-3.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from rp_handler.cache.folders import FolderIndex, canonical, is_model_file, safe_relative

# Combo widgets that pick user files (images, videos, uploads), not models.
UPLOAD_FLAGS = frozenset({"image_upload", "video_upload", "audio_upload", "file_upload", "image_folder", "remote"})

# ComfyUI core loaders whose combos are empty when no model is installed:
# (class_type, input) → the folder its code reads (nodes.py / comfy_extras at the pinned commit).
CORE_LOADER_FOLDERS: dict[tuple[str, str], str] = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("CheckpointLoader", "ckpt_name"): "checkpoints",
    ("unCLIPCheckpointLoader", "ckpt_name"): "checkpoints",
    ("ImageOnlyCheckpointLoader", "ckpt_name"): "checkpoints",
    ("CreateHookModelAsLora", "ckpt_name"): "checkpoints",
    ("CreateHookModelAsLoraModelOnly", "ckpt_name"): "checkpoints",
    ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("CreateHookLora", "lora_name"): "loras",
    ("CreateHookLoraModelOnly", "lora_name"): "loras",
    ("VAELoader", "vae_name"): "vae",
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
    ("UpscaleModelLoader", "model_name"): "upscale_models",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("DiffControlNetLoader", "control_net_name"): "controlnet",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("StyleModelLoader", "style_model_name"): "style_models",
    ("GLIGENLoader", "gligen_name"): "gligen",
    ("HypernetworkLoader", "hypernetwork_name"): "hypernetworks",
    ("PhotoMakerLoader", "photomaker_model_name"): "photomaker",
    ("ModelPatchLoader", "name"): "model_patches",
}
# Input names that custom nodes reuse with ComfyUI's meaning.
INPUT_NAME_FOLDERS: dict[str, str] = {
    "ckpt_name": "checkpoints",
    "lora_name": "loras",
    "vae_name": "vae",
    "unet_name": "diffusion_models",
    "control_net_name": "controlnet",
}


@dataclass(frozen=True)
class ModelRef:
    """One model file a workflow names: ``folder`` is None when it could not be derived."""

    name: str
    folder: str | None
    node_id: str = ""
    class_type: str = ""
    input_name: str = ""

    @property
    def key(self) -> str:
        return f"{self.folder or '?'}/{self.name}"


@dataclass(frozen=True)
class ComboInput:
    class_type: str
    input_name: str
    options: tuple[str, ...]


def snapshot_path(comfy_home: Path) -> Path:
    """The object_info snapshot realize writes for ``comfy_home`` (``version.py realize --snapshot-object-info``).

    Load it with :func:`load_object_info` before ComfyUI is up; it may be absent (no snapshot taken).
    """
    from builder.extras import snapshot_path as realized_snapshot  # the builder owns the layout

    return realized_snapshot(comfy_home)


def load_object_info(path: Path) -> dict:
    """Read an object_info snapshot (``.json`` or ``.json.gz``)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FileNotFoundError(f"object_info snapshot {path} cannot be read ({exc.strerror}); "
                                "take one with save_object_info_snapshot") from None
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"object_info snapshot {path} is not JSON ({exc}); delete it and take a new one") from None
    if not isinstance(data, dict):
        raise ValueError(f"object_info snapshot {path} is not a JSON object of node classes")
    return data


def save_object_info_snapshot(object_info: dict, path: Path) -> Path:
    """Write ``object_info`` atomically (gzip when ``path`` ends in .gz)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(object_info, separators=(",", ":"), sort_keys=True).encode()
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=6, mtime=0)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".incomplete", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _combo_options(spec: Any) -> tuple[str, ...] | None:
    """Options of a combo input spec, or None when the input is not a file-picking combo."""
    if not isinstance(spec, list) or not spec:
        return None
    kind = spec[0]
    extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if UPLOAD_FLAGS & extra.keys():
        return None
    if isinstance(kind, list):
        options = kind
    elif kind == "COMBO":
        options = extra.get("options") or []
    else:
        return None
    return tuple(o for o in options if isinstance(o, str))


def combo_inputs(object_info: dict) -> dict[str, dict[str, ComboInput]]:
    """class_type → input name → every combo input that is not an upload widget."""
    found: dict[str, dict[str, ComboInput]] = {}
    for class_type, info in (object_info or {}).items():
        inputs = (info or {}).get("input") or {}
        for section in ("required", "optional"):
            for name, spec in (inputs.get(section) or {}).items():
                options = _combo_options(spec)
                if options is not None:
                    found.setdefault(class_type, {})[name] = ComboInput(class_type, name, options)
    return found


def lists_models(combo: ComboInput) -> bool:
    """True when the combo picks model files: empty, has a model file option, or is a known loader."""
    return (not combo.options or any(is_model_file(o) for o in combo.options)
            or (combo.class_type, combo.input_name) in CORE_LOADER_FOLDERS)


def model_combos(object_info: dict) -> dict[str, dict[str, ComboInput]]:
    """class_type → input name → combo inputs that name model files."""
    out: dict[str, dict[str, ComboInput]] = {}
    for class_type, inputs in combo_inputs(object_info).items():
        picked = {name: c for name, c in inputs.items() if lists_models(c)}
        if picked:
            out[class_type] = picked
    return out


def workflow_nodes(workflow: dict) -> Iterator[tuple[str, str, dict]]:
    """(node_id, class_type, inputs) of an API-format workflow; raises ValueError when it is not one."""
    if not isinstance(workflow, dict):
        raise ValueError("workflow must be a JSON object of nodes in ComfyUI's API format")
    for node_id, node in workflow.items():
        if not isinstance(node, dict) or "class_type" not in node:
            raise ValueError(f"workflow node {node_id!r} has no class_type: export the workflow with "
                             "'Save (API)' in ComfyUI")
        yield str(node_id), str(node["class_type"]), node.get("inputs") or {}


class RefScanner:
    """Finds model references in workflows for one object_info and one volume."""

    def __init__(self, object_info: dict | None, index: FolderIndex):
        self.index = index
        self.combos = combo_inputs(object_info or {})
        self.classes = frozenset((object_info or {}).keys())
        self._option_folder: dict[tuple[str, str], str | None] = {}

    def _folder_for(self, combo: ComboInput | None, class_type: str, input_name: str, value: str) -> str | None:
        if combo is not None and combo.options:
            key = (class_type, input_name)
            if key not in self._option_folder:
                best = self.index.best_folder_for_options(list(combo.options))
                hint = self._hint(class_type, input_name)
                self._option_folder[key] = (hint if hint in best else best[0]) if best else None
            if self._option_folder[key]:
                return self._option_folder[key]
        hint = self._hint(class_type, input_name)
        if hint:
            return hint
        holding = self.index.folders_holding(value)
        return holding[0] if holding else None

    @staticmethod
    def _hint(class_type: str, input_name: str) -> str | None:
        return CORE_LOADER_FOLDERS.get((class_type, input_name)) or INPUT_NAME_FOLDERS.get(input_name)

    def scan(self, workflow: dict) -> list[ModelRef]:
        """Unique model references of ``workflow``, in node order."""
        refs: dict[tuple[str | None, str], ModelRef] = {}
        for node_id, class_type, inputs in workflow_nodes(workflow):
            known = class_type in self.classes
            for input_name, value in inputs.items():
                if not isinstance(value, str) or not value:
                    continue
                combo = self.combos.get(class_type, {}).get(input_name)
                if known and combo is None:
                    continue  # not a combo: free text, numbers
                if combo is None or not lists_models(combo):
                    # unknown node class, or an enum-like combo from a snapshot taken before the
                    # files existed: only a value that looks like a model file counts
                    if not is_model_file(value) or (combo is not None and value in combo.options):
                        continue
                folder = self._folder_for(combo, class_type, input_name, value)
                if not is_model_file(value) and (folder is None or self.index.locate(folder, value) is None):
                    continue  # an enum choice such as "pixel_space", not a file
                name = safe_relative(value) or value
                folder = canonical(folder) if folder else None
                refs.setdefault((folder, name), ModelRef(name, folder, node_id, class_type, input_name))
        return list(refs.values())


def scan_workflow(workflow: dict, object_info: dict | None, models_dir: Path) -> list[ModelRef]:
    """Model references of ``workflow`` resolved against the models tree at ``models_dir``."""
    return RefScanner(object_info, FolderIndex(models_dir)).scan(workflow)


def refs_from_names(models: Iterable[Any], index: FolderIndex) -> list[ModelRef]:
    """References from a warm list: ``"folder/name"`` strings or ``{"folder", "name"}`` dicts."""
    out: list[ModelRef] = []
    for item in models:
        if isinstance(item, dict):
            folder, name = item.get("folder"), item.get("name")
        elif isinstance(item, str) and "/" in item.replace("\\", "/"):
            folder, _, name = item.replace("\\", "/").partition("/")
        elif isinstance(item, str):
            holding = index.folders_holding(item)
            folder, name = (holding[0] if holding else None), item
        else:
            folder, name = None, None
        if not isinstance(name, str) or not name:
            raise ValueError(f"warm model entry {item!r} is not 'folder/name' or {{'folder': ..., 'name': ...}}")
        out.append(ModelRef(safe_relative(name) or name, canonical(folder) if folder else None))
    return out
