"""Write ComfyUI's extra_model_paths.yaml: the NVMe cache first, the volume second.

ComfyUI's ``add_model_folder_path`` puts a group marked ``is_default: true`` in
front of its own ``models/`` dirs, and appends the others in file order, so
``get_full_path`` returns the cache copy once it is complete (it only appears by
``os.replace``) and the volume file before that.
"""

from __future__ import annotations

from pathlib import Path

from builder import extra_paths

CACHE_GROUP = "nvme_cache"
VOLUME_GROUP = "network_volume"


def extra_model_paths(cache_root: Path | None, volume_models_dir: Path,
                      folders: dict[str, tuple[str, ...]]) -> dict:
    """The yaml document as a dict (pure)."""
    doc: dict[str, dict] = {}
    if cache_root is not None:
        group: dict[str, object] = {"base_path": str(cache_root), "is_default": True}
        for folder in folders:
            group[folder] = folder
        doc[CACHE_GROUP] = group
    volume: dict[str, object] = {"base_path": str(volume_models_dir)}
    for folder, dirs in folders.items():
        volume[folder] = "\n".join(dirs)
    doc[VOLUME_GROUP] = volume
    return doc


def write_extra_model_paths(path: Path, cache_root: Path | None, volume_models_dir: Path,
                            folders: dict[str, tuple[str, ...]]) -> Path:
    doc = extra_model_paths(cache_root, volume_models_dir, folders)
    return extra_paths.write_extra_model_paths(path, doc, "Written by rp_handler.cache: NVMe cache first, "
                                               "network volume second.")
