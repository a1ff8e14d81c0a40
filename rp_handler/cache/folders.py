"""ComfyUI's model folder types and where their files sit in a models tree.

A *folder type* is ComfyUI's name for a kind of model (``checkpoints``,
``loras``, ``text_encoders``...).  Each type reads one or more subdirectories of
a models directory; ``DEFAULT_FOLDERS`` (``builder.extra_paths.COMFY_FOLDERS``) mirrors ``folder_paths.py`` of the
ComfyUI commit this worker pins (a125cd84), including the legacy names
``clip`` → ``text_encoders`` and ``unet`` → ``diffusion_models``.  Any other
subdirectory of the volume's models dir is a folder type of its own name, which
is how custom nodes register theirs (``ipadapter``, ``sams``...).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from builder.extra_paths import COMFY_FOLDERS

# ComfyUI's supported_pt_extensions plus formats custom loaders read.
MODEL_EXTENSIONS = frozenset(
    {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft", ".gguf", ".onnx"}
)

DEFAULT_FOLDERS = COMFY_FOLDERS  # the table's owner is builder.extra_paths

LEGACY_NAMES = {"clip": "text_encoders", "unet": "diffusion_models", "t2i_adapter": "controlnet"}

# Subdirectories of a models dir that hold no model files of their own.
NOT_MODEL_DIRS = frozenset({"configs", "diffusers", "custom_nodes", ".git", ".cache"})


def canonical(folder: str) -> str:
    """The folder type ComfyUI uses for ``folder`` (maps legacy names)."""
    return LEGACY_NAMES.get(folder, folder)


def is_model_file(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in MODEL_EXTENSIONS


def safe_relative(name: str) -> str | None:
    """``name`` as a clean relative posix path, or None if it escapes its folder."""
    text = name.replace("\\", "/").strip()
    if not text or text.startswith("/") or "\x00" in text:
        return None
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return "/".join(parts)


class FolderIndex:
    """Folder types of one models tree, with lazy per-folder file listings."""

    def __init__(self, models_dir: Path):
        self.models_dir = Path(models_dir)
        self._listing: dict[str, frozenset[str]] = {}

    def folder_dirs(self) -> dict[str, tuple[str, ...]]:
        """Folder type → subdirectory names: ComfyUI's table plus extra dirs found on disk."""
        folders = {k: tuple(v) for k, v in DEFAULT_FOLDERS.items()}
        try:
            extra = sorted(e.name for e in os.scandir(self.models_dir) if e.is_dir())
        except OSError:
            extra = []
        for name in extra:
            if name in NOT_MODEL_DIRS or name.startswith("."):
                continue
            if canonical(name) not in folders and name not in folders:
                folders[name] = (name,)
        return folders

    def dirs(self, folder: str) -> tuple[str, ...]:
        folder = canonical(folder)
        return self.folder_dirs().get(folder, (folder,))

    def locate(self, folder: str, name: str) -> Path | None:
        """The file for ``name`` in ``folder`` (first dir that has it), or None."""
        rel = safe_relative(name)
        if rel is None:
            return None
        for sub in self.dirs(folder):
            path = self.models_dir / sub / rel
            if path.is_file():
                return path
        return None

    def folders_holding(self, name: str) -> list[str]:
        """Every folder type that has a file called ``name``."""
        return [f for f in self.folder_dirs() if self.locate(f, name) is not None]

    def listing(self, folder: str) -> frozenset[str]:
        """Relative names of the model files in ``folder`` (recursive, cached)."""
        folder = canonical(folder)
        if folder not in self._listing:
            names: set[str] = set()
            for sub in self.dirs(folder):
                base = self.models_dir / sub
                for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
                    dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                    rel_dir = os.path.relpath(dirpath, base)
                    for fn in filenames:
                        if is_model_file(fn):
                            rel = fn if rel_dir == "." else f"{rel_dir}/{fn}"
                            names.add(rel.replace(os.sep, "/"))
            self._listing[folder] = frozenset(names)
        return self._listing[folder]

    def best_folder_for_options(self, options: list[str]) -> list[str]:
        """Folder types whose listing shares the most names with ``options`` (ties all returned)."""
        wanted = {o.replace("\\", "/") for o in options if isinstance(o, str)}
        best: list[str] = []
        best_score = 0
        for folder in self.folder_dirs():
            score = len(wanted & self.listing(folder))
            if score > best_score:
                best, best_score = [folder], score
            elif score and score == best_score:
                best.append(folder)
        return best

    def refresh(self) -> None:
        self._listing.clear()
