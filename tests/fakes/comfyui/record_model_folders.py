"""Record, from a real ComfyUI, which combo input of which node lists which model folder.

    COMFYUI_DIR=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/python \\
        .venv/bin/python -m tests.fakes.comfyui.record_model_folders

Boots the real ComfyUI once on CPU (``builder.extras.fetch_object_info``) with an
extra_model_paths.yaml whose every folder type holds one file named after it
(``probe-<folder>.safetensors``); a combo whose options list such a file reads that folder, and
its other options (``pixel_space``...) are kept as fixed extras. Writes ``model_folders.json`` beside
this file: ``{class_type: {input: {"folder": f, "extra": [...]}}}``. The fake ComfyUI fills those
combos from its models dirs; nothing in the fake repeats the worker's own loader table.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "model_folders.json"
PREFIX = "probe-"
SUFFIX = ".safetensors"


def probe_tree(root: Path, folders: dict[str, tuple[str, ...]]) -> Path:
    """One probe file per folder type under ``root``; returns the extra_model_paths.yaml for it."""
    from builder.extra_paths import write_extra_model_paths

    group: dict[str, object] = {"base_path": str(root)}
    for folder, subdirs in folders.items():
        (root / subdirs[0]).mkdir(parents=True, exist_ok=True)
        (root / subdirs[0] / f"{PREFIX}{folder}{SUFFIX}").write_bytes(b"probe")
        group[folder] = subdirs[0]
    return write_extra_model_paths(root / "extra_model_paths.yaml", {"probe": group}, "model folder probe")


def combo_options(spec: object) -> list[str] | None:
    if isinstance(spec, list) and spec and isinstance(spec[0], list):
        return [str(o) for o in spec[0]]
    if isinstance(spec, list) and spec and spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return [str(o) for o in spec[1].get("options") or []]
    return None


def model_folders(object_info: dict) -> dict[str, dict[str, dict]]:
    """``{class: {input: {"folder", "extra"}}}`` for every combo that lists a probe file (pure)."""
    out: dict[str, dict[str, dict]] = {}
    for class_type, info in sorted(object_info.items()):
        for group in ("required", "optional"):
            for name, spec in ((info.get("input") or {}).get(group) or {}).items():
                options = combo_options(spec) or []
                probes = [o for o in options if o.startswith(PREFIX) and o.endswith(SUFFIX)]
                if len(probes) == 1:
                    folder = probes[0][len(PREFIX):-len(SUFFIX)]
                    extra = [o for o in options if o != probes[0]]
                    out.setdefault(class_type, {})[name] = {"folder": folder, "extra": extra}
    return out


def main() -> int:
    from builder.extra_paths import COMFY_FOLDERS
    from builder.extras import fetch_object_info

    home, python = os.environ.get("COMFYUI_DIR"), os.environ.get("COMFYUI_PYTHON")
    if not home or not python:
        print("error: set COMFYUI_DIR (a ComfyUI checkout) and COMFYUI_PYTHON (its interpreter)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="model-folders-") as tmp:
        yaml_path = probe_tree(Path(tmp), COMFY_FOLDERS)
        info = fetch_object_info(Path(python), Path(home), extra_model_paths=yaml_path)
    table = model_folders(info)
    OUT.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {OUT}: {sum(len(v) for v in table.values())} model combos in {len(table)} node classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
